/**
 * bench/io-afpacket: what the AF_PACKET port adds to a round trip, and what
 * it carries, against a kernel bridge on the same topology. A report, not a
 * test; needs root. Run: `npx tsc -p tsconfig.json && node dist/bench/io-afpacket.js`
 * (`--quick` for fewer pings, `--no-iperf` to skip throughput).
 *
 *   ns A (10.99.0.1) eth0 ──veth── hostA ─┬─ kernel bridge ─┬─ hostB ──veth── eth0 ns B (10.99.0.2)
 *                                         └─ JS forwarder ──┘
 *
 * The forwarder is a separate Node process (this file with `--forward`): two
 * AfPacketPorts, each batch sent to the other port and flushed. Variants:
 * vnetHdr (offloads on in the namespaces) or not (offloads off: tx, tso, gso),
 * PACKET_QDISC_BYPASS, busy polling after each breath, SO_BUSY_POLL, CPU
 * pinning. Ping: idle (one every 100 ms: the forwarder sleeps between
 * frames) and back to back (one every 2 ms). Medians; the machine is shared
 * and noisy, so compare within one run.
 */
import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { AfPacketFrame, AfPacketPort, AfPacketPortOptions } from '../lib/io/afpacket-port';
import { PacketPort, ReceivedFrame } from '../lib/io/port';

// ---------------------------------------------------------------- forwarder (child)

interface ForwarderSpec extends AfPacketPortOptions {
  port?: 'afpacket' | 'cap';
}

async function forwarder(ifA: string, ifB: string, spec: ForwarderSpec): Promise<void> {
  let a: PacketPort;
  let b: PacketPort;
  if (spec.port === 'cap') {
    const { CapPort } = require('../lib/io/cap-port') as typeof import('../lib/io/cap-port');
    a = new CapPort(ifA);
    b = new CapPort(ifB);
  } else {
    a = new AfPacketPort(ifA, spec);
    b = new AfPacketPort(ifB, spec);
  }
  const wire = (from: PacketPort, to: PacketPort): void => {
    from.onBatch((frames: readonly ReceivedFrame[]) => {
      for (const f of frames as readonly AfPacketFrame[]) (to as AfPacketPort).send(f.frame, f.vnet);
      to.flush();
    });
  };
  wire(a, b);
  wire(b, a);
  process.on('SIGTERM', () => {
    process.stdout.write(`${JSON.stringify({ a: a.stats(), b: b.stats() })}\n`);
    void Promise.all([a.close(), b.close()]).then(() => process.exit(0));
  });
  process.stdout.write('ready\n');
}

// ---------------------------------------------------------------- topology

const id = process.pid.toString(36);
const NS_A = `svmb${id}A`;
const NS_B = `svmb${id}B`;
const HOST_A = `svmb${id}a`;
const HOST_B = `svmb${id}b`;
const BRIDGE = `svmb${id}br`;
const IP_A = '10.99.0.1';
const IP_B = '10.99.0.2';
const MAC_A = '02:99:00:00:00:01';
const MAC_B = '02:99:00:00:00:02';

function sh(cmd: string, args: string[], quiet = false): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    if (quiet) return '';
    throw new Error(`${cmd} ${args.join(' ')}: ${(err as { stderr?: string }).stderr ?? (err as Error).message}`);
  }
}
const inNs = (ns: string, cmd: string, args: string[], quiet = false): string => sh('ip', ['netns', 'exec', ns, cmd, ...args], quiet);

function buildTopology(): void {
  for (const [ns, host, ip, mac, peerIp, peerMac] of [
    [NS_A, HOST_A, IP_A, MAC_A, IP_B, MAC_B],
    [NS_B, HOST_B, IP_B, MAC_B, IP_A, MAC_A],
  ]) {
    sh('ip', ['netns', 'add', ns]);
    sh('ip', ['link', 'add', host, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
    sh('sysctl', ['-q', '-w', `net.ipv6.conf.${host}.disable_ipv6=1`]);
    sh('ip', ['link', 'set', 'dev', host, 'up']);
    inNs(ns, 'sysctl', ['-q', '-w', 'net.ipv6.conf.all.disable_ipv6=1']);
    inNs(ns, 'ip', ['link', 'set', 'dev', 'eth0', 'address', mac]);
    inNs(ns, 'ip', ['addr', 'add', `${ip}/24`, 'dev', 'eth0']);
    inNs(ns, 'ip', ['link', 'set', 'dev', 'eth0', 'up']);
    inNs(ns, 'ip', ['link', 'set', 'dev', 'lo', 'up']);
    // Static neighbours: no ARP inside a measurement.
    inNs(ns, 'ip', ['neigh', 'replace', peerIp, 'lladdr', peerMac, 'dev', 'eth0', 'nud', 'permanent']);
  }
}

function teardown(): void {
  sh('ip', ['link', 'del', BRIDGE], true);
  sh('ip', ['link', 'del', HOST_A], true);
  sh('ip', ['link', 'del', HOST_B], true);
  sh('ip', ['netns', 'del', NS_A], true);
  sh('ip', ['netns', 'del', NS_B], true);
}

/** Offloads on or off at the senders (namespace ends); GRO off on the host ends either way. */
function offloads(on: boolean): void {
  const state = on ? 'on' : 'off';
  for (const ns of [NS_A, NS_B]) inNs(ns, 'ethtool', ['-K', 'eth0', 'tx', state, 'tso', state, 'gso', state], true);
  for (const host of [HOST_A, HOST_B]) sh('ethtool', ['-K', host, 'gro', 'off'], true);
}

function bridgeUp(): void {
  sh('ip', ['link', 'add', BRIDGE, 'type', 'bridge', 'stp_state', '0', 'forward_delay', '0']);
  sh('sysctl', ['-q', '-w', `net.ipv6.conf.${BRIDGE}.disable_ipv6=1`], true);
  sh('ip', ['link', 'set', 'dev', HOST_A, 'master', BRIDGE]);
  sh('ip', ['link', 'set', 'dev', HOST_B, 'master', BRIDGE]);
  sh('ip', ['link', 'set', 'dev', BRIDGE, 'up']);
}

function bridgeDown(): void {
  sh('ip', ['link', 'del', BRIDGE]);
}

// ---------------------------------------------------------------- measurements

interface Rtt { median: number; p90: number; n: number; lost: number }

function spawnCollect(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
    child.on('close', (code) => (code === 0 || out ? resolve(out) : reject(new Error(`${cmd} ${args.join(' ')}: exit ${code}: ${err}`))));
  });
}

async function ping(count: number, interval: number, cpu?: number): Promise<Rtt> {
  const pingArgs = ['netns', 'exec', NS_A, 'ping', '-n', '-q', '-c', '3', '-i', '0.01', IP_B];
  await spawnCollect('ip', pingArgs); // warm-up
  const args = ['netns', 'exec', NS_A, 'ping', '-n', '-c', String(count), '-i', String(interval), '-W', '1', IP_B];
  const out = await spawnCollect(cpu === undefined ? 'ip' : 'taskset', cpu === undefined ? args : ['-c', String(cpu), 'ip', ...args]);
  const times = [...out.matchAll(/time=([\d.]+) ms/g)].map((m) => Number(m[1]) * 1000).sort((x, y) => x - y);
  const q = (f: number): number => times[Math.min(times.length - 1, Math.floor(f * times.length))] ?? NaN;
  return { median: q(0.5), p90: q(0.9), n: times.length, lost: count - times.length };
}

async function iperf(seconds: number): Promise<number> {
  const server = spawn('ip', ['netns', 'exec', NS_B, 'iperf3', '-s', '-1'], { stdio: 'ignore' });
  await new Promise((resolve) => setTimeout(resolve, 300));
  try {
    const out = await spawnCollect('ip', ['netns', 'exec', NS_A, 'iperf3', '-c', IP_B, '-t', String(seconds), '-J']);
    const result = JSON.parse(out) as { end?: { sum_received?: { bits_per_second?: number } } };
    return (result.end?.sum_received?.bits_per_second ?? NaN) / 1e9;
  } finally {
    server.kill('SIGTERM');
  }
}

interface Running { child: ChildProcess; stats: () => Promise<unknown> }

async function startForwarder(spec: ForwarderSpec, cpu?: number): Promise<Running> {
  const script = [__filename, '--forward', HOST_A, HOST_B, JSON.stringify(spec)];
  const child = cpu === undefined
    ? spawn(process.execPath, script, { stdio: ['ignore', 'pipe', 'inherit'] })
    : spawn('taskset', ['-c', String(cpu), process.execPath, ...script], { stdio: ['ignore', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout! });
  const queue: string[] = [];
  const waiters: ((line: string) => void)[] = [];
  lines.on('line', (line) => { const w = waiters.shift(); if (w) w(line); else queue.push(line); });
  const next = (): Promise<string> => new Promise((resolve, reject) => {
    const line = queue.shift();
    if (line !== undefined) resolve(line);
    else {
      waiters.push(resolve);
      child.once('exit', (code) => reject(new Error(`forwarder exited (${code})`)));
    }
  });
  const ready = await next();
  if (ready !== 'ready') throw new Error(`forwarder said ${ready}`);
  return {
    child,
    stats: async () => {
      child.kill('SIGTERM');
      const line = await next();
      await new Promise((resolve) => child.once('exit', resolve));
      return JSON.parse(line);
    },
  };
}

// ---------------------------------------------------------------- report

interface Row { name: string; idle: Rtt; busy: Rtt; gbps?: number; note?: string }

function fmt(r: Rtt): string {
  return `${r.median.toFixed(0).padStart(5)} ${r.p90.toFixed(0).padStart(5)}${r.lost ? ` (${r.lost} lost)` : ''}`;
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('bench/io-afpacket needs root (namespaces, veth pairs, packet sockets)');
  const quick = process.argv.includes('--quick');
  const withIperf = !process.argv.includes('--no-iperf');
  const idleCount = quick ? 20 : 60;
  const busyCount = quick ? 200 : 1000;
  const iperfSeconds = quick ? 2 : 4;
  const rows: Row[] = [];
  const measure = async (name: string, gbps: boolean, pingCpu?: number, note?: string): Promise<Row> => {
    const idle = await ping(idleCount, 0.1, pingCpu);
    const busy = await ping(busyCount, 0.002, pingCpu);
    const row: Row = { name, idle, busy, note };
    if (gbps && withIperf) row.gbps = await iperf(iperfSeconds);
    rows.push(row);
    process.stderr.write(`${name}: idle ${fmt(idle)} busy ${fmt(busy)}${row.gbps !== undefined ? ` ${row.gbps.toFixed(2)} Gbit/s` : ''}\n`);
    return row;
  };

  teardown();
  buildTopology();
  const extra: string[] = [];
  try {
    offloads(true);
    bridgeUp();
    await measure('kernel bridge (offloads on)', true);
    offloads(false);
    await measure('kernel bridge (offloads off)', true);
    bridgeDown();

    const variants: { name: string; spec: ForwarderSpec; offloads: boolean; gbps: boolean; cpu?: number; pingCpu?: number }[] = [
      { name: 'afpacket', spec: {}, offloads: false, gbps: true },
      { name: 'afpacket vnetHdr (offloads on)', spec: { vnetHdr: true }, offloads: true, gbps: true },
      { name: 'afpacket + qdiscBypass', spec: { qdiscBypass: true }, offloads: false, gbps: false },
      { name: 'afpacket + SO_BUSY_POLL 50us', spec: { socketBusyPollUs: 50 }, offloads: false, gbps: false },
      { name: 'afpacket + busyPollUs 50', spec: { busyPollUs: 50 }, offloads: false, gbps: true },
      { name: 'afpacket + busyPollUs 1000', spec: { busyPollUs: 1000 }, offloads: false, gbps: false },
      { name: 'afpacket + busyPollUs 200000 (never sleeps)', spec: { busyPollUs: 200_000 }, offloads: false, gbps: false },
      { name: 'afpacket, forwarder and ping on cpu 0', spec: {}, offloads: false, gbps: false, cpu: 0, pingCpu: 0 },
      { name: 'afpacket, forwarder cpu 1, ping cpu 0', spec: {}, offloads: false, gbps: false, cpu: 1, pingCpu: 0 },
      { name: 'cap (libpcap)', spec: { port: 'cap' }, offloads: false, gbps: true },
    ];
    for (const v of variants) {
      offloads(v.offloads);
      let fwd: Running;
      try {
        fwd = await startForwarder(v.spec, v.cpu);
      } catch (err) {
        process.stderr.write(`${v.name}: skipped: ${(err as Error).message}\n`);
        continue;
      }
      try {
        await measure(v.name, v.gbps, v.pingCpu);
      } finally {
        const stats = (await fwd.stats()) as { a: Record<string, number>; b: Record<string, number> };
        const s = stats.a;
        if (s.breaths !== undefined) {
          extra.push(`${v.name}: ${HOST_A} rx ${s.rxFrames} frames in ${s.breaths} breaths (${s.spinBreaths} by spinning), rxDrops ${s.rxDrops}, txErrors ${stats.b.txErrors}`);
        }
      }
    }
  } finally {
    teardown();
  }

  const base = rows[0];
  const lines = [
    `bench/io-afpacket  ${new Date().toISOString()}  node ${process.version}  ${sh('uname', ['-r']).trim()}  ${sh('nproc', []).trim()} cpus`,
    'ping ns A → ns B, µs: median and p90; "added" = idle median minus the kernel bridge (offloads on)',
    '',
    `${'path'.padEnd(46)} ${'idle (100 ms apart)'.padEnd(20)} ${'added'.padStart(6)}  ${'busy (2 ms apart)'.padEnd(18)} ${'iperf3'.padStart(12)}`,
    ...rows.map((r) => `${r.name.padEnd(46)} ${fmt(r.idle).padEnd(20)} ${(r.idle.median - base.idle.median).toFixed(0).padStart(6)}  ${fmt(r.busy).padEnd(18)} ${r.gbps !== undefined ? `${r.gbps.toFixed(2)} Gbit/s` : ''}`.trimEnd()),
    '',
    ...extra,
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
  const outDir = join(__dirname, '..', '..', 'bench', 'results');
  mkdirSync(outDir, { recursive: true });
  const file = join(outDir, `io-afpacket-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  writeFileSync(file, JSON.stringify({ node: process.version, rows, forwarder: extra }, null, 2));
  process.stdout.write(`written: ${file}\n`);
}

if (process.argv[2] === '--forward') {
  void forwarder(process.argv[3], process.argv[4], JSON.parse(process.argv[5] ?? '{}') as ForwarderSpec);
} else {
  main().catch((err) => {
    teardown();
    process.stderr.write(`${(err as Error).stack ?? err}\n`);
    process.exit(1);
  });
}
