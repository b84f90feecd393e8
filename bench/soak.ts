/**
 * bench/soak: issue 7's whole attack set, one attack after another, against
 * a live netns-lab bridge while downloads run the whole time. A report, not
 * a test; needs root.
 * Run: `npx tsc -p tsconfig.json && node dist/bench/soak.js` (`--prefix hs`, `--cpu-prof`).
 *
 *   client ns ── <p>c ── `shadowvm run` (its own process) ─┬─ <p>p ── primary ns (nginx, UDP echo)
 *   curl ×3 (looping, sha256)                               └─ <p>b ── backup ns  (nginx, UDP echo)
 *   UDP probe every 1 ms          `shadowvm agent lab` (its own process)
 *
 * The bridge runs as a child process, so its RSS (VmRSS, VmHWM) is its own
 * and nothing the bench does can stall it except through the machine.
 *
 * Per attack: the worst data-path stall (a UDP echo probe from the client
 * namespace to the service address every 1 ms, each datagram carrying its
 * send time, echoed by a server in both replicas and so compared by the
 * bridge: the largest round-trip time and the largest gap between two
 * replies), probes lost, the bridge's RSS at its peak (sampled every 50 ms)
 * and at the end, the checkpoints asked for during the attack, the state
 * afterwards, and whether the control socket still answered. The
 * downloads' sha256 are checked throughout.
 *
 * Results: a table on stdout, bench/results/soak-<timestamp>.json. The lab
 * and the children are always removed.
 */
import { createHash } from 'node:crypto';
import { connect, Socket } from 'node:net';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { queryControlSocket } from '../lib/control/control-socket';
import type { BridgeSnapshot } from '../lib/control/snapshot';
import { formatScheduling } from '../lib/dataplane/scheduling';
import { fixedSeedBytes } from '../lib/lab/content';
import { run, runInAsync, runQuietly } from '../lib/lab/exec';
import { Child, JsonLineChild, inNs, injectIn, memoryOf, start } from './lib/children';
import { addKernelBridge, readHostCpu, removeKernelBridge } from './lib/lab-setup';
import { Lab, LabNode, buildLab, teardownLab, waitUntilQuiet } from '../lib/lab/netns';
import { serveOnBoth, startLabServers } from '../lib/lab/servers';

const ROOT = join(__dirname, '..', '..');
const SHADOWVM = join(ROOT, 'bin', 'shadowvm');
const NOBODY = 65534;
const ECHO_PORT = 7777;
const BIG_FILE = 'soak-big.bin';
const BIG_BYTES = 16 << 20;
const BIG_SEED = 0x50a4;
const DOWNLOADERS = 3;
const DOWNLOAD_RATE = '4M';
const PROBE_EVERY_MS = 1;

interface Options { prefix: string; cpuProf: boolean; metricsPort: number; only: string[] | null; traceGc: boolean; reference: boolean; config: string | null; sendThread: boolean; realtime: string; nodeOptions: string[]; runOptions: string[] }

function parseArgs(argv: string[]): Options {
  const o: Options = { prefix: 'hs', cpuProf: false, metricsPort: 29900, only: null, traceGc: false, reference: true, config: null, sendThread: true, realtime: 'auto', nodeOptions: [], runOptions: [] };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--prefix') o.prefix = argv[++i];
    else if (argv[i] === '--cpu-prof') o.cpuProf = true;
    else if (argv[i] === '--trace-gc') o.traceGc = true;
    else if (argv[i] === '--no-reference') o.reference = false;
    else if (argv[i] === '--only') o.only = argv[++i].split(',').filter(Boolean);
    else if (argv[i] === '--metrics-port') o.metricsPort = Number(argv[++i]);
    else if (argv[i] === '--config') o.config = argv[++i];
    else if (argv[i] === '--no-send-thread') o.sendThread = false;
    else if (argv[i] === '--realtime') o.realtime = argv[++i];
    else if (argv[i] === '--node-option') o.nodeOptions.push(argv[++i]);
    else if (argv[i] === '--run-option') o.runOptions.push(argv[++i]);
    else if (argv[i] === '--help') {
      process.stdout.write('node dist/bench/soak.js [--prefix hs] [--cpu-prof] [--trace-gc] [--only ATTACK,...] [--no-reference] [--metrics-port 29900] [--config FILE (the bridge settings, as for run --config)] [--no-send-thread] [--realtime auto|on|off (the bridge\'s, as for run --realtime)] [--node-option FLAG (given to the bridge\'s node, repeatable)] [--run-option FLAG (given to shadowvm run, repeatable)]\n');
      process.exit(0);
    } else throw new Error(`unknown option ${argv[i]}`);
  }
  const unknown = (o.only ?? []).filter((n) => !ATTACKS.some((a) => a.name === n));
  if (unknown.length) throw new Error(`unknown attack ${unknown.join(', ')}: one of ${ATTACKS.map((a) => a.name).join(', ')}`);
  return o;
}

const delay = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

// ───────────────────────── children ─────────────────────────

/** A node script run as user nobody, with no capabilities, on the host. */
function asNobody(script: string, args: string[]): Child {
  return start(['setpriv', `--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', '--inh-caps=-all', process.execPath, '-e', script, '--', ...args], 'nobody script');
}

// ───────────────────────── the data-path probe ─────────────────────────

const ECHO_SERVER = `
const s = require('node:dgram').createSocket('udp4');
s.on('message', (m, r) => s.send(m, r.port, r.address));
s.bind(Number(process.argv[1]));
`;

/** Sends a timestamped datagram every N ms; on "mark" prints the figures since the last mark and starts over. */
const PROBE = `
const { performance } = require('node:perf_hooks');
const [host, port, everyMs] = process.argv.slice(1).map((v, i) => (i ? Number(v) : v));
const s = require('node:dgram').createSocket('udp4');
let w;
const reset = () => { w = { sent: 0, received: 0, maxRttMs: 0, maxGapMs: 0, rtts: [], lastAt: performance.now() }; };
reset();
s.on('message', (m) => {
  const now = performance.now();
  const rtt = now - m.readDoubleBE(0);
  w.received++;
  w.maxRttMs = Math.max(w.maxRttMs, rtt);
  w.maxGapMs = Math.max(w.maxGapMs, now - w.lastAt);
  w.lastAt = now;
  if (w.rtts.length < 200000) w.rtts.push(rtt);
});
setInterval(() => { const b = Buffer.alloc(32); b.writeDoubleBE(performance.now(), 0); s.send(b, port, host); w.sent++; }, everyMs);
let line = '';
process.stdin.on('data', (c) => {
  line += c;
  if (!line.includes('\\n')) return;
  line = '';
  const now = performance.now();
  const r = w.rtts.sort((a, b) => a - b);
  const p = (q) => (r.length ? r[Math.min(r.length - 1, Math.floor(q * r.length))] : NaN);
  process.stdout.write(JSON.stringify({ sent: w.sent, received: w.received, maxRttMs: w.maxRttMs, maxGapMs: Math.max(w.maxGapMs, now - w.lastAt), p50RttMs: p(0.5), p99RttMs: p(0.99) }) + '\\n');
  reset();
});
`;

interface ProbeWindow { sent: number; received: number; maxRttMs: number; maxGapMs: number; p50RttMs: number; p99RttMs: number }

class Probe {
  private readonly c: JsonLineChild<ProbeWindow>;

  constructor(lab: Lab) {
    this.c = new JsonLineChild(inNs(lab.client.netns, [process.execPath, '-e', PROBE, lab.serviceIpv4, String(ECHO_PORT), String(PROBE_EVERY_MS)]), 'probe');
  }

  /** The figures since the last mark. */
  mark(): Promise<ProbeWindow> {
    return this.c.ask('mark');
  }

  stop(): void { this.c.stop(); }
}

// ───────────────────────── downloads ─────────────────────────

class Downloads {
  ok = 0;
  bad: string[] = [];
  bytes = 0;
  private stopped = false;
  private readonly loops: Promise<void>[] = [];

  constructor(private readonly lab: Lab, private readonly expected: string) {
    for (let i = 0; i < DOWNLOADERS; i++) this.loops.push(this.loop(i));
  }

  private async loop(i: number): Promise<void> {
    const file = join(this.lab.runDir, `soak-download-${i}`);
    while (!this.stopped) {
      try {
        await runInAsync(this.lab.client.netns, 'curl', ['-sS', '--fail', '--limit-rate', DOWNLOAD_RATE, '--max-time', '120', '-o', file, `http://${this.lab.serviceIpv4}/${BIG_FILE}`], 130_000);
        const got = createHash('sha256').update(readFileSync(file)).digest('hex');
        if (got === this.expected) {
          this.ok++;
          this.bytes += BIG_BYTES;
        } else this.bad.push(`downloader ${i}: sha256 ${got}`);
      } catch (e) {
        this.bad.push(`downloader ${i}: ${(e as Error).message.split('\n')[0]}`);
      } finally {
        rmSync(file, { force: true });
      }
    }
  }

  /** Lets every download in progress finish (so each one is checked whole), then stops. */
  async stop(): Promise<void> {
    this.stopped = true;
    await Promise.all(this.loops);
  }
}

// ───────────────────────── the bridge ─────────────────────────

interface BridgeUnderTest { readonly proc: Child; readonly agent: Child; readonly controlSocket: string; readonly agentSocket: string; readonly metricsPort: number }

async function status(b: BridgeUnderTest, timeoutMs = 5000): Promise<BridgeSnapshot | null> {
  try {
    const reply = await queryControlSocket(b.controlSocket, { cmd: 'status' }, timeoutMs);
    return reply.ok ? reply.status : null;
  } catch {
    return null;
  }
}

const checkpointsAsked = (s: BridgeSnapshot | null): number => (s ? Object.values(s.checkpoints.requested).reduce((a, n) => a + n, 0) : NaN);
const rxDropsOf = (s: BridgeSnapshot | null): number => (s ? s.ports.reduce((a, p) => a + p.rxDrops, 0) : NaN);

async function startBridge(lab: Lab, o: Options, profDir: string): Promise<BridgeUnderTest> {
  const controlSocket = join(lab.runDir, 'run', 'control.sock');
  const agentSocket = join(lab.runDir, 'run', 'agent.sock');
  const node = [process.execPath, ...(o.cpuProf ? ['--cpu-prof', '--cpu-prof-dir', profDir] : []), ...(o.traceGc ? ['--trace-gc'] : []), ...o.nodeOptions, SHADOWVM];
  const proc = start([...node, 'run', '--name', o.prefix, '--uplink', lab.client.hostIf, '--primary', lab.primary.hostIf, '--backup', lab.backup.hostIf,
    '--agent', agentSocket, '--control', controlSocket, '--metrics', `127.0.0.1:${o.metricsPort}`, '--resync', 'align', '--no-vnet-hdr', '--log-level', 'warn', ...(o.config ? ['--config', o.config] : []), ...(o.sendThread ? [] : ['--send-thread', 'off']), '--realtime', o.realtime, ...o.runOptions], 'shadowvm run');
  const b: BridgeUnderTest = { proc, agent: null as unknown as Child, controlSocket, agentSocket, metricsPort: o.metricsPort };
  for (let i = 0; i < 200 && !(await status(b, 500)); i++) {
    if (proc.child.exitCode !== null) throw new Error(`shadowvm run exited: ${proc.output}`);
    await delay(50);
  }
  const agent = start([process.execPath, SHADOWVM, 'agent', 'lab', '--name', o.prefix, '--socket', agentSocket, '--delay-ms', '5'], 'shadowvm agent');
  const withAgent = { ...b, agent };
  for (let i = 0; i < 200; i++) {
    if ((await status(withAgent))?.state === 'COMPARING') return withAgent;
    await delay(50);
  }
  throw new Error(`the bridge did not reach COMPARING: ${proc.output.slice(-2000)} ${agent.output.slice(-2000)}`);
}

/**
 * The whole run's frame wait, from the bridge's own histogram (one
 * observation per breath): less noisy than the per-attack maximum, which is
 * one breath out of hundreds of thousands.
 */
/** The machine's steal time so far (/proc/stat, all CPUs, USER_HZ ticks of 10 ms); NaN where unknown. */
const readStealTicks = (): number => readHostCpu().steal;

/**
 * The machine's steal counter, sampled every 50 ms while shadowvm runs: a
 * stall whose window saw it move happened while the hypervisor ran
 * something else (the counter moves in 10 ms ticks, so short steals hide).
 */
class StealWatch {
  readonly samples: { atMs: number; ticks: number }[] = [];
  private readonly timer = setInterval(() => this.samples.push({ atMs: Date.now(), ticks: readStealTicks() }), 50).unref();
  constructor() { this.samples.push({ atMs: Date.now(), ticks: readStealTicks() }); }
  stop(): void { clearInterval(this.timer); }
  /** Steal (ms) counted between the sample before `fromMs` and the first one after `toMs`. */
  between(fromMs: number, toMs: number): number {
    let a = this.samples[0], b = this.samples[this.samples.length - 1];
    for (const x of this.samples) if (x.atMs <= fromMs) a = x;
    for (let i = this.samples.length - 1; i >= 0; i--) if (this.samples[i].atMs >= toMs) b = this.samples[i];
    return a && b ? (b.ticks - a.ticks) * 10 : NaN;
  }
}

function waitSummary(s: BridgeSnapshot | null, steal?: StealWatch): string {
  const w = s?.frameWait;
  if (!w || !w.seconds.count) return 'bridge wait over the whole run: not reported';
  const h = w.seconds;
  const over = (sec: number) => h.count - (h.buckets.find(([le]) => le >= sec - 1e-12)?.[1] ?? h.count);
  const line = `bridge wait over the whole run: ${h.count} breaths, mean ${(h.sum / h.count * 1e6).toFixed(0)} µs; over 1 ms ${over(0.001)}, over 5 ms ${over(0.005)}, over 10 ms ${w.over10ms}; longest ${w.maxMs.toFixed(1)} ms`;
  if (!w.stalls) return line;
  const causes = Object.entries(w.stalls.byCause).filter(([, n]) => n > 0).map(([c, n]) => `${c} ${n}`).join(', ') || 'none settled';
  const recent = w.stalls.recent.map((r) => `  ${new Date(r.atUnixMs).toISOString().slice(11, 23)} ${r.waitMs.toFixed(1)} ms, ${r.frames} frame(s): ${Object.entries(r.parts).filter(([, v]) => v > 0).map(([c, v]) => `${c} ${v.toFixed(1)}`).join(', ')}${r.during.length ? `; meanwhile ${r.during.join(', ')}` : ''}${steal ? `; machine steal in that 0.1 s: ${steal.between(r.atUnixMs - r.waitMs - 50, r.atUnixMs + 50)} ms` : ''}`);
  return [`${line}`, `breaths over 10 ms by cause (the largest part of each): ${causes}; the last ones:`, ...recent].join('\n');
}

/** Per port, the data plane's own time in sends: waiting for the send thread's stage, and sends it made itself. */
function sendSummary(s: BridgeSnapshot | null): string {
  const ports = (s?.ports ?? []) as (BridgeSnapshot['ports'][number] & { txWaitUs?: number; txWaitMaxUs?: number; txSyncUs?: number; txSyncMaxUs?: number })[];
  if (!ports.some((p) => p.txSyncUs !== undefined)) return 'data plane in sends: not reported';
  const ms = (us = 0) => (us / 1000).toFixed(1);
  return `data plane in sends (waiting for the send thread's room; its own sends), total and longest ms: ${ports.map((p) => `${p.name} ${ms(p.txWaitUs)}/${ms(p.txWaitMaxUs)}; ${ms(p.txSyncUs)}/${ms(p.txSyncMaxUs)}`).join(' | ')}`;
}

/** Why each `timeout` checkpoint was asked, from the bridge's `backup-late` log lines (the first 10). */
function timeoutLines(output: string): string[] {
  const late: Record<string, unknown>[] = [];
  for (const line of output.split('\n')) {
    if (!line.includes('"backup-late"')) continue;
    try {
      late.push(JSON.parse(line) as Record<string, unknown>);
    } catch {
      // a line cut by the output buffer
    }
  }
  return late.slice(0, 10).map((r) => `timeout checkpoint: ${String(r.flow)}: held ${String(r.heldMs)} ms, backup quiet ${String(r.backupQuietMs)} ms, past the match: primary ${String(r.primaryAheadBytes)} B, backup ${String(r.backupAheadBytes)} B; ${String(r.heldFrames)} frame(s) held`)
    .concat(late.length > 10 ? [`… and ${late.length - 10} more timeout checkpoint(s)`] : []);
}

// ───────────────────────── attacks ─────────────────────────

interface AttackContext { lab: Lab; bridge: BridgeUnderTest }
/** dataPlane: frames only (no control socket, no agent), so the kernel-bridge reference pass runs it too. */
/** optional: run only when named by --only (a decomposition of another attack). */
interface Attack { name: string; what: string; dataPlane?: boolean; optional?: boolean; run(c: AttackContext): Promise<string> }

/** Opens a connection and writes `payload`, never reading; resolves with the socket once written (or refused). */
function floodConnection(path: string | { host: string; port: number }, payload: string): Promise<Socket> {
  return new Promise((resolve) => {
    const s = typeof path === 'string' ? connect(path) : connect(path.port, path.host);
    s.on('error', () => resolve(s));
    s.on('connect', () => s.write(payload, () => resolve(s)));
    s.pause();
  });
}

/** As nobody: `connections` connections each pipelining `requests` scrapes, never reading, held `holdMs`. */
const NOBODY_SCRAPER = `
const net = require('node:net');
const [port, connections, requests, holdMs] = process.argv.slice(1).map(Number);
const req = 'GET /metrics HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\n\\r\\n'.repeat(requests);
const socks = [];
let closed = 0;
for (let i = 0; i < connections; i++) {
  const s = net.connect(port, '127.0.0.1', () => s.write(req));
  s.pause();
  s.on('error', () => {});
  s.on('close', () => closed++);
  socks.push(s);
}
setTimeout(() => { console.log(JSON.stringify({ closedByServer: closed })); socks.forEach((s) => s.destroy()); }, holdMs);
`;

const ATTACKS: Attack[] = [
  {
    name: 'metrics-unread',
    what: '4 connections × 500 pipelined GET /metrics, never read, by user nobody, held 4 s',
    run: async ({ bridge }) => {
      const c = asNobody(NOBODY_SCRAPER, [String(bridge.metricsPort), '4', '500', '4000']);
      await c.exited;
      return c.output.trim();
    },
  },
  {
    name: 'status-pipelined',
    what: '1,000 pipelined status requests on one control connection, read slowly',
    run: async ({ bridge }) => {
      const s = await floodConnection(bridge.controlSocket, '{"cmd":"status"}\n'.repeat(1000));
      let replies = 0;
      s.on('data', (d: Buffer) => { for (const b of d) if (b === 10) replies++; });
      // Take the replies at a crawl: one read every 100 ms for 3 s.
      for (let i = 0; i < 30 && !s.destroyed; i++) {
        s.resume();
        await delay(1);
        s.pause();
        await delay(100);
      }
      const closed = s.destroyed;
      s.destroy();
      return `${replies} replies read${closed ? ', closed by the bridge' : ''}`;
    },
  },
  {
    name: 'flows-unread',
    what: '300 pipelined {"cmd":"flows","limit":100000}, never read, held 4 s',
    run: async ({ bridge }) => {
      const s = await floodConnection(bridge.controlSocket, '{"cmd":"flows","limit":100000}\n'.repeat(300));
      let closedAt = NaN;
      const t0 = performance.now();
      s.once('close', () => { closedAt = performance.now() - t0; });
      await delay(4000);
      s.destroy();
      return Number.isFinite(closedAt) ? `closed by the bridge after ${closedAt.toFixed(0)} ms` : 'still open after 4 s';
    },
  },
  {
    name: 'idle-control-x40',
    what: '40 idle control connections held 4 s; status asked meanwhile',
    run: async ({ bridge }) => {
      const socks = await Promise.all(Array.from({ length: 40 }, () => floodConnection(bridge.controlSocket, '')));
      await delay(500);
      const answered = (await status(bridge, 3000)) !== null;
      await delay(3500);
      const open = socks.filter((s) => !s.destroyed).length;
      socks.forEach((s) => s.destroy());
      return `status ${answered ? 'answered' : 'NOT answered'} while held; ${open} of 40 still open after 4 s`;
    },
  },
  {
    name: 'signals',
    what: 'SIGUSR1, SIGHUP, SIGUSR2 to the bridge, 1 s apart; then port 9229',
    run: async ({ bridge }) => {
      const pid = bridge.proc.child.pid!;
      for (const sig of ['SIGUSR1', 'SIGHUP', 'SIGUSR2'] as const) {
        process.kill(pid, sig);
        await delay(1000);
      }
      const inspector = await new Promise<boolean>((resolve) => {
        const s = connect(9229, '127.0.0.1');
        s.on('connect', () => { s.destroy(); resolve(true); });
        s.on('error', () => resolve(false));
      });
      return `bridge ${bridge.proc.child.exitCode === null ? 'alive' : `EXITED ${bridge.proc.child.exitCode}`}; 9229 ${inspector ? 'OPEN' : 'closed'}`;
    },
  },
  {
    name: 'agent-impostor',
    what: 'a silent client on the agent socket, reconnecting every 1 s for 6 s',
    run: async ({ bridge }) => {
      let held = 0;
      for (let i = 0; i < 6; i++) {
        const s = await floodConnection(bridge.agentSocket, '');
        await delay(1000);
        if (!s.destroyed) held++;
        s.destroy();
      }
      const snap = await status(bridge);
      return `${held}/6 impostor connections outlived 1 s; agent ${snap?.agent.connected ? `connected (${snap.agent.name ?? '?'})` : 'NOT connected'}`;
    },
  },
  {
    name: 'garbage-tcp',
    dataPlane: true,
    what: '20,000 TCP segments with random flags/seq/ack from the client address to port 80 and random ports',
    run: async ({ lab }) => JSON.stringify(await injectIn(lab.client.netns, { kind: 'garbage-tcp', count: 20_000, seed: 21, perMs: 10 }, 180_000)),
  },
  {
    name: 'ethertypes',
    dataPlane: true,
    what: '5,000 frames with random ethertypes from the primary VM',
    run: async ({ lab }) => JSON.stringify(await injectIn(lab.primary.netns, { kind: 'ethertypes', count: 5000, seed: 22, perMs: 5 })),
  },
  {
    name: 'syn-flood',
    dataPlane: true,
    what: '70,000 SYNs from spoofed sources (198.18.0.0/15) to port 80',
    run: async ({ lab }) => JSON.stringify(await injectIn(lab.client.netns, { kind: 'syn-flood', count: 70_000, seed: 23, perMs: 20 })),
  },
  {
    name: 'malformed',
    dataPlane: true,
    what: '3 × 10,000 malformed frames, from the client, the primary and the backup at once',
    run: async ({ lab }) => {
      const nodes: LabNode[] = [lab.client, lab.primary, lab.backup];
      const r = await Promise.all(nodes.map((n, i) => injectIn(n.netns, { kind: 'malformed', count: 10_000, seed: 30 + i, perMs: 5 })));
      return r.map((x, i) => `${nodes[i].role} ${x.sent}`).join(', ');
    },
  },
  {
    name: 'malformed-client',
    dataPlane: true,
    what: 'the client third of `malformed` alone: 10,000 malformed frames from the client (by --only)',
    optional: true,
    run: async ({ lab }) => JSON.stringify(await injectIn(lab.client.netns, { kind: 'malformed', count: 10_000, seed: 30, perMs: 5 })),
  },
  {
    name: 'malformed-vms',
    dataPlane: true,
    what: 'the VM two thirds of `malformed` alone: 10,000 malformed frames from each VM (by --only)',
    optional: true,
    run: async ({ lab }) => {
      const nodes: LabNode[] = [lab.primary, lab.backup];
      const r = await Promise.all(nodes.map((n, i) => injectIn(n.netns, { kind: 'malformed', count: 10_000, seed: 31 + i, perMs: 5 })));
      return r.map((x, i) => `${nodes[i].role} ${x.sent}`).join(', ');
    },
  },
];

// ───────────────────────── the kernel-bridge reference ─────────────────────────

/**
 * What the machine itself does under the same attack, without shadowvm: a
 * Linux bridge joins the client and the primary, and tc mirrors every frame
 * the client sends to the backup, whose answers go nowhere (its host end
 * is in no bridge and has no address: the host drops them). So the
 * backup's kernel answers the SYNs, the probe and the garbage as it does
 * behind shadowvm. It does not serve the downloads: the client's ACKs are in
 * the primary's sequence space, so it resets them, and those resets are
 * dropped. The VM-side attacks (ethertypes, malformed from the VMs) are
 * dropped at the backup and bridged from the primary. (u32 matching
 * everything: this kernel has no matchall classifier.)
 */
function kernelReferenceUp(lab: Lab): void {
  addKernelBridge(lab);
  run('tc', ['qdisc', 'add', 'dev', lab.client.hostIf, 'ingress']);
  run('tc', ['filter', 'add', 'dev', lab.client.hostIf, 'ingress', 'protocol', 'all', 'u32', 'match', 'u32', '0', '0', 'action', 'mirred', 'egress', 'mirror', 'dev', lab.backup.hostIf]);
}

function kernelReferenceDown(lab: Lab): void {
  removeKernelBridge(lab.prefix);
  runQuietly('tc', ['qdisc', 'del', 'dev', lab.client.hostIf, 'ingress']);
}

async function measureReference(name: string, what: string, probe: Probe, body: () => Promise<string>): Promise<Row> {
  const w = await probeWindow(probe, body);
  return {
    attack: name, what, ...w, bridgeWaitMs: NaN, holdWaitMs: NaN,
    rssPeakMiB: NaN, rssEndMiB: NaN, hwmMiB: NaN, checkpointsForced: 0, ringDrops: NaN, checkpointsByReason: {},
    stateAfter: 'kernel bridge', statusAnswered: false,
  };
}

/**
 * The probe's figures over `body` and one second more (what the attack left
 * queued is worked off before the window closes); a failed attack is a note.
 */
async function probeWindow(probe: Probe, body: () => Promise<string>): Promise<{ probe: ProbeWindow; stallMs: number; durationMs: number; note: string }> {
  await probe.mark();
  const t0 = performance.now();
  let note: string;
  try {
    note = await body();
  } catch (e) {
    note = `attack failed: ${(e as Error).message.split('\n')[0]}`;
  }
  await delay(1000);
  const durationMs = performance.now() - t0;
  const window = await probe.mark();
  return { probe: window, stallMs: Math.max(window.maxRttMs, window.maxGapMs), durationMs, note };
}

/** The baselines and the data-plane attacks through the kernel reference; its own downloads, checked the same way. */
async function referencePass(lab: Lab, probe: Probe, expected: string, attacks: readonly Attack[]): Promise<{ rows: Row[]; downloads: { ok: number; bad: string[] } }> {
  kernelReferenceUp(lab);
  try {
    await delay(1000);
    await probe.mark();
    const rows: Row[] = [];
    rows.push(await measureReference('baseline (probe only)', 'kernel reference, no attack', probe, async () => { await delay(4000); return ''; }));
    const downloads = new Downloads(lab, expected);
    await delay(1000);
    rows.push(await measureReference('baseline (downloads)', 'kernel reference, downloads', probe, async () => { await delay(4000); return ''; }));
    const none = null as unknown as BridgeUnderTest;
    for (const attack of attacks) {
      process.stderr.write(`soak: kernel reference: ${attack.name}\n`);
      rows.push(await measureReference(attack.name, attack.what, probe, () => attack.run({ lab, bridge: none })));
    }
    rows.push(await measureReference('after (downloads)', 'kernel reference, after the set', probe, async () => { await delay(4000); return ''; }));
    await downloads.stop();
    return { rows, downloads: { ok: downloads.ok, bad: downloads.bad } };
  } finally {
    kernelReferenceDown(lab);
  }
}

// ───────────────────────── run ─────────────────────────

interface Row {
  attack: string;
  what: string;
  probe: ProbeWindow;
  stallMs: number;
  /** The bridge's own figure: the longest a frame waited in a ring for the data plane during the window (status frameWait), ms. */
  bridgeWaitMs: number;
  /** The longest the primary's output was held for the backup (or a checkpoint) during the window (status holdWait), ms. */
  holdWaitMs: number;
  rssPeakMiB: number;
  rssEndMiB: number;
  hwmMiB: number;
  checkpointsForced: number;
  /** Frames the ports' rings had no room for during the attack (rx drops, every port). */
  ringDrops: number;
  checkpointsByReason: Record<string, number>;
  stateAfter: string;
  statusAnswered: boolean;
  durationMs: number;
  note: string;
}

async function measure(name: string, what: string, b: BridgeUnderTest, probe: Probe, body: () => Promise<string>): Promise<Row> {
  const pid = b.proc.child.pid!;
  const before = await status(b);
  let peak = memoryOf(pid).rssMiB;
  const sampler = setInterval(() => { peak = Math.max(peak, memoryOf(pid).rssMiB); }, 50);
  const fromSecond = Math.floor(Date.now() / 1000);
  const w = await probeWindow(probe, body);
  clearInterval(sampler);
  const mem = memoryOf(pid);
  const after = await status(b);
  const byReason: Record<string, number> = {};
  if (before && after) for (const [r, n] of Object.entries(after.checkpoints.requested)) if (n - before.checkpoints.requested[r as keyof typeof before.checkpoints.requested] > 0) byReason[r] = n - before.checkpoints.requested[r as keyof typeof before.checkpoints.requested];
  return {
    attack: name, what, ...w,
    bridgeWaitMs: (after?.frameWait?.perSecond ?? []).filter(([sec]) => sec >= fromSecond).reduce((m, [, ms]) => Math.max(m, ms), 0),
    holdWaitMs: (after?.holdWait?.perSecond ?? []).filter(([sec]) => sec >= fromSecond).reduce((m, [, ms]) => Math.max(m, ms), 0),
    rssPeakMiB: Math.max(peak, mem.rssMiB), rssEndMiB: mem.rssMiB, hwmMiB: mem.hwmMiB,
    checkpointsForced: checkpointsAsked(after) - checkpointsAsked(before), checkpointsByReason: byReason,
    ringDrops: rxDropsOf(after) - rxDropsOf(before),
    stateAfter: after?.state ?? 'no answer', statusAnswered: after !== null,
  };
}

function table(rows: Row[], reference: Row[]): string[] {
  const header = ['attack', 'stall ms', 'kernel ref', 'ratio', 'bridge wait', 'hold wait', 'rtt p99', 'lost', 'RSS peak', 'RSS end', 'ring drops', 'ckpts', 'state after', 'note'];
  const refOf = (r: Row) => reference.find((x) => x.attack === r.attack);
  // A figure the run could not measure (no reply at all: the bridge died in that attack) prints '-'.
  const fx = (v: number | null | undefined, d: number) => (typeof v === 'number' && Number.isFinite(v) ? v.toFixed(d) : '-');
  const body = rows.map((r) => [
    r.attack, fx(r.stallMs, 1), fx(refOf(r)?.stallMs, 1), refOf(r) ? `${fx(r.stallMs / refOf(r)!.stallMs, 1)}×` : '-',
    fx(r.bridgeWaitMs, 1), fx(r.holdWaitMs, 1), fx(r.probe.p99RttMs, 2), String(Math.max(0, r.probe.sent - r.probe.received)),
    `${fx(r.rssPeakMiB, 0)} MiB`, `${fx(r.rssEndMiB, 0)} MiB`, fx(r.ringDrops, 0),
    `${r.checkpointsForced}${Object.keys(r.checkpointsByReason).length ? ` (${Object.entries(r.checkpointsByReason).map(([k, n]) => `${k} ${n}`).join(', ')})` : ''}`,
    r.stateAfter, r.note.length > 90 ? `${r.note.slice(0, 87)}...` : r.note,
  ]);
  const all = [header, ...body];
  const widths = header.map((_, i) => Math.max(...all.map((c) => c[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 || i >= 12 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ').trimEnd();
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...body.map(line)];
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  if (process.getuid?.() !== 0) throw new Error('the soak builds network namespaces: run it as root');
  const startedAt = new Date();
  const outDir = join(ROOT, 'bench', 'results');
  const profDir = join(outDir, `soak-prof-${startedAt.toISOString().replace(/[:.]/g, '-')}`);
  const lab = buildLab({ prefix: o.prefix });
  const children: Child[] = [];
  let probe: Probe | null = null;
  let downloads: Downloads | null = null;
  let bridge: BridgeUnderTest | null = null;
  const cleanup = () => {
    probe?.stop();
    for (const c of children) if (c.child.exitCode === null) c.child.kill('SIGKILL');
    kernelReferenceDown(lab);
    teardownLab(lab);
  };
  process.once('SIGINT', () => { cleanup(); process.exit(130); });
  // A promise that can no longer settle (the bridge died, and what waited on it with it) lets Node
  // end quietly with nothing printed: say so, with the bridge's end, and fail.
  let finished = false;
  process.once('beforeExit', () => {
    if (finished) return;
    const b = bridge?.proc.child;
    process.stderr.write(`soak: ended without a result; the bridge ${b && b.exitCode === null && b.signalCode === null ? 'was still running' : `ended (code ${String(b?.exitCode)}, signal ${String(b?.signalCode)})`}; its last output:\n${(bridge?.proc.output ?? '').slice(-2000)}\n`);
    cleanup();
    process.exitCode = 1;
  });
  try {
    const servers = await startLabServers(lab);
    const big = fixedSeedBytes(BIG_BYTES, BIG_SEED);
    serveOnBoth(servers, BIG_FILE, big);
    for (const node of [lab.primary, lab.backup]) children.push(start(inNs(node.netns, [process.execPath, '-e', ECHO_SERVER, String(ECHO_PORT)]), 'udp echo'));
    await waitUntilQuiet(lab);
    bridge = await startBridge(lab, o, profDir);
    children.push(bridge.proc, bridge.agent);
    const stealBefore = readStealTicks();
    const steal = new StealWatch();
    probe = new Probe(lab);
    await delay(1000);
    await probe.mark();
    const rows: Row[] = [];
    const selected = ATTACKS.filter((a) => (o.only ? o.only.includes(a.name) : !a.optional));
    // The probe alone, then with the downloads: the baselines.
    rows.push(await measure('baseline (probe only)', 'no attack, no downloads', bridge, probe, async () => { await delay(4000); return ''; }));
    downloads = new Downloads(lab, createHash('sha256').update(big).digest('hex'));
    await delay(1000);
    rows.push(await measure('baseline (downloads)', `no attack; ${DOWNLOADERS} curl --limit-rate ${DOWNLOAD_RATE} of ${BIG_BYTES >> 20} MiB, looping`, bridge, probe, async () => { await delay(4000); return ''; }));
    for (const attack of selected) {
      process.stderr.write(`soak: ${attack.name}\n`);
      const b = bridge;
      rows.push(await measure(attack.name, attack.what, bridge, probe, () => attack.run({ lab, bridge: b })));
    }
    rows.push(await measure('after (downloads)', 'no attack, after the set', bridge, probe, async () => { await delay(4000); return ''; }));
    await downloads.stop();
    const finalStatus = await status(bridge);
    const stealMs = (readStealTicks() - stealBefore) * 10;
    steal.stop();
    // What the bridge logs after this (its stop, the lab's teardown) is not part of the run.
    const outputOfRun = bridge.proc.output;
    const mem = memoryOf(bridge.proc.child.pid!);
    bridge.proc.child.kill('SIGTERM');
    bridge.agent.child.kill('SIGTERM');
    const exitCode = await Promise.race([bridge.proc.exited, delay(10_000).then(() => 'no exit within 10 s')]);
    // The same machine work without shadowvm, in the same run, on the same lab.
    const reference = o.reference
      ? await referencePass(lab, probe, createHash('sha256').update(big).digest('hex'), selected.filter((a) => a.dataPlane))
      : { rows: [], downloads: { ok: 0, bad: [] } };

    const lines = [
      `soak ${startedAt.toISOString()}  node ${process.version}  loadavg ${readFileSync('/proc/loadavg', 'utf8').trim()}`,
      `probe: UDP echo every ${PROBE_EVERY_MS} ms through the bridge; stall = max(largest RTT, largest gap between replies); goal ≤ 10 ms`,
      'bridge wait: the bridge\'s own figure, the longest any frame waited between its arrival in a ring and the end of the breath that handled it (status frameWait)',
      'hold wait: the longest the primary\'s output was held for the backup\'s answer or a checkpoint (status holdWait): the price of comparing',
      '',
      ...table(rows, reference.rows),
      '',
      `downloads: ${downloads.ok} complete and sha256-identical (${(downloads.bytes / 2 ** 20).toFixed(0)} MiB), ${downloads.bad.length} failed${downloads.bad.length ? `: ${downloads.bad.slice(0, 5).join('; ')}` : ''}`,
      `bridge: VmHWM ${mem.hwmMiB.toFixed(0)} MiB, VmRSS at the end ${mem.rssMiB.toFixed(0)} MiB, state ${finalStatus?.state ?? '?'}, exit after SIGTERM: ${String(exitCode)}`,
      ...(finalStatus?.dataPlane ? [formatScheduling(finalStatus.dataPlane)] : [`data plane: no scheduling reported (--realtime ${o.realtime})`]),
      ...(o.nodeOptions.length ? [`bridge's node started with: ${o.nodeOptions.join(' ')}`] : []),
      ...(o.reference ? [
        `kernel reference (Linux bridge client↔primary, tc mirror of the client's frames to the backup, backup's answers dropped), run after shadowvm on the same lab: downloads ${reference.downloads.ok} complete, ${reference.downloads.bad.length} failed`,
        'ratio: shadowvm stall ÷ kernel reference stall, same attack',
      ] : []),
      `worst stall under attack: ${(() => { const w = rows.slice(2, -1).reduce((a, r) => (r.stallMs > a.stallMs ? r : a)); return `${w.stallMs.toFixed(1)} ms (${w.attack})`; })()}`,
      waitSummary(finalStatus, steal),
      `machine: the hypervisor ran something else on this VM's CPUs for ${Number.isFinite(stealMs) ? stealMs.toFixed(0) : '?'} ms while shadowvm ran (steal, /proc/stat, all CPUs): one source of off-cpu stalls`,
      sendSummary(finalStatus),
      `worst bridge wait under attack: ${(() => { const w = rows.slice(2, -1).reduce((a, r) => (r.bridgeWaitMs > a.bridgeWaitMs ? r : a)); return `${w.bridgeWaitMs.toFixed(1)} ms (${w.attack})`; })()}`,
      ...timeoutLines(outputOfRun),
      ...(o.cpuProf ? [`cpu profile of the bridge: ${profDir}`] : []),
    ];
    if (o.traceGc) {
      const gcFile = join(outDir, `soak-${startedAt.toISOString().replace(/[:.]/g, '-')}-bridge.log`);
      writeFileSync(gcFile, bridge.proc.output);
      lines.push(`bridge output with --trace-gc: ${gcFile}`);
    }
    process.stdout.write(`${lines.join('\n')}\n`);
    mkdirSync(outDir, { recursive: true });
    const file = join(outDir, `soak-${startedAt.toISOString().replace(/[:.]/g, '-')}.json`);
    writeFileSync(file, `${JSON.stringify({
      bench: 'soak', startedAt: startedAt.toISOString(), node: process.version, options: o, probeEveryMs: PROBE_EVERY_MS,
      downloads: { workers: DOWNLOADERS, rate: DOWNLOAD_RATE, fileBytes: BIG_BYTES, ok: downloads.ok, failed: downloads.bad },
      rows, reference, final: { status: finalStatus, memory: mem, exitAfterSigterm: exitCode }, table: lines,
    }, null, 1)}\n`);
    process.stdout.write(`results: ${file}\n`);
    if (downloads.bad.length || reference.downloads.bad.length || exitCode !== 0) process.exitCode = 1;
    finished = true;
  } finally {
    cleanup();
  }
}

main().catch((e) => {
  process.stderr.write(`soak: ${(e as Error).stack ?? String(e)}\n`);
  process.exitCode = 1;
});
