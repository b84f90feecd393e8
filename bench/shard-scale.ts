/**
 * shard-scale: what a second data-plane worker buys on this machine, and
 * what one worker costs per request (issue 9, "scale across cores").
 *
 * The netns lab, wrk from the client through `shadowvm run --workers N`
 * (N = 1, 2) as an administrator runs it: its own process, run's default
 * ports, the lab agent as a process too. Each worker is a data-plane thread
 * on its shard of the flows; checkpoints and failovers are one for all (the
 * coordinator). The pipeline normalizes HTTP Date headers (a --config file),
 * so the steady state asks for no checkpoint; those asked are reported. The
 * kernel bridge runs in the same rounds as the reference. Configurations
 * interleave (K 1 2 K 1 2 …); medians with their range. `--offloads`: TSO
 * and checksum offload on in the namespaces (super-frames through the
 * bridge), else off.
 *
 * Run (root): `npx tsc -p tsconfig.json && node dist/bench/shard-scale.js [--rounds 3] [--seconds 5] [--workers 1,2] [--offloads] [--run-option ARG]…`
 * (`--run-option` passes ARG on to `run`, e.g. `--run-option --realtime --run-option off`)
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { BridgeSnapshot } from '../lib/control/snapshot';
import { buildLab, teardownLab, waitUntilQuiet } from '../lib/lab/netns';
import type { Lab } from '../lib/lab/netns';
import { startLabServers } from '../lib/lab/servers';
import { BENCH_OBJECTS, addKernelBridge, hostCpuBusyUs, offloadsOn, readHostCpu, removeKernelBridge, writeBenchObjects } from './lib/lab-setup';
import { runWrk } from './lib/load-tools';
import { bridgeStatus, BridgeUnderTest, startBridgeProcess } from './lib/flood-bridge';

interface Options { rounds: number; seconds: number; workers: number[]; prefix: string; kernel: boolean; offloads: boolean; runArgs: string[] }

function parse(argv: string[]): Options {
  const o: Options = { rounds: 3, seconds: 5, workers: [1, 2], prefix: 'svmsh', kernel: true, offloads: false, runArgs: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--rounds') o.rounds = Number(argv[++i]);
    else if (a === '--seconds') o.seconds = Number(argv[++i]);
    else if (a === '--workers') o.workers = argv[++i].split(',').map(Number);
    else if (a === '--prefix') o.prefix = argv[++i];
    else if (a === '--no-kernel') o.kernel = false;
    else if (a === '--offloads') o.offloads = true;
    else if (a === '--run-option') o.runArgs.push(argv[++i]);
    else {
      process.stderr.write('node dist/bench/shard-scale.js [--rounds 3] [--seconds 5] [--workers 1,2] [--prefix svmsh] [--no-kernel] [--offloads] [--run-option ARG]…\n');
      process.exit(a === '--help' ? 0 : 2);
    }
  }
  if (!(o.rounds >= 1) || !(o.seconds >= 1) || o.workers.some((n) => !(Number.isInteger(n) && n >= 1 && n <= 16))) {
    process.stderr.write('shard-scale: --rounds and --seconds at least 1; --workers 1 to 16 each\n');
    process.exit(2);
  }
  return o;
}

interface Measured { rps: number; machineUsPerReq: number; bridgeUsPerReq: number; p99Ms: number; errors: number }
interface Run {
  config: string;
  round: number;
  ok: boolean;
  error?: string;
  small?: Measured;
  large?: Measured;
  /** The bridge's status at the end: checkpoints by reason, per-worker frames and flows. */
  checkpoints?: Record<string, number>;
  workers?: NonNullable<BridgeSnapshot['workers']>;
  state?: string;
  rssMiB?: number;
}

/** utime + stime of a process, µs (clock ticks of 10 ms: /proc/PID/stat fields 14 and 15). */
function processCpuUs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) * 10_000;
}

async function wrkPhase(lab: Lab, file: string, seconds: number, bridgePid: number | null): Promise<Measured> {
  const host0 = readHostCpu();
  const cpu0 = bridgePid === null ? 0 : processCpuUs(bridgePid);
  const w = await runWrk(lab.client.netns, `http://10.77.0.2/${file}`, { threads: 2, connections: 32, seconds });
  const cpu = bridgePid === null ? NaN : processCpuUs(bridgePid) - cpu0;
  const host = hostCpuBusyUs(host0, readHostCpu());
  if (!w.ok) throw new Error(`wrk ${file}: ${w.error}`);
  const errors = w.socketErrors.connect + w.socketErrors.read + w.socketErrors.write + w.socketErrors.timeout + w.non2xx3xx;
  return { rps: w.requestsPerSecond, machineUsPerReq: host / w.requests, bridgeUsPerReq: cpu / w.requests, p99Ms: w.latencyP99Ms, errors };
}

async function oneRun(config: string, round: number, o: Options): Promise<Run> {
  const r: Run = { config, round, ok: false };
  const lab = buildLab({ prefix: o.prefix });
  let bridge: BridgeUnderTest | null = null;
  try {
    const servers = await startLabServers(lab);
    writeBenchObjects(servers);
    if (o.offloads) for (const node of lab.nodes) await offloadsOn(node);
    await waitUntilQuiet(lab);
    const kernel = config === 'kernel';
    if (kernel) addKernelBridge(lab);
    else {
      const workers = Number(config.split(' ')[0]);
      bridge = await startBridgeProcess(lab, o.prefix, { normalize: { httpDate: true, httpDateToleranceMs: 2000 } }, ['--workers', String(workers), ...o.runArgs]);
    }
    const pid = bridge?.proc.child.pid ?? null;
    // A short warm-up: ARP, neighbour entries, the JIT.
    await runWrk(lab.client.netns, `http://10.77.0.2/${BENCH_OBJECTS.small.file}`, { threads: 1, connections: 4, seconds: 1 });
    const before = bridge ? await bridgeStatus(bridge.controlSocket) : null;
    r.small = await wrkPhase(lab, BENCH_OBJECTS.small.file, o.seconds, pid);
    r.large = await wrkPhase(lab, BENCH_OBJECTS.large.file, o.seconds, pid);
    if (bridge) {
      const s = await bridgeStatus(bridge.controlSocket);
      if (!s || !before) throw new Error('the bridge did not answer status');
      r.checkpoints = Object.fromEntries(Object.entries(s.checkpoints.requested).map(([k, v]) => [k, v - (before.checkpoints.requested as Record<string, number>)[k]]));
      r.workers = s.workers ?? [];
      r.state = s.state;
      r.rssMiB = Math.round((s.memory?.rssBytes ?? NaN) / 1048576);
    }
    r.ok = true;
  } catch (e) {
    r.error = (e as Error).message;
  } finally {
    if (bridge) {
      for (const c of [bridge.proc, bridge.agent]) if (c.child.exitCode === null) c.child.kill('SIGTERM');
      await Promise.race([Promise.all([bridge.proc.exited, bridge.agent.exited]), new Promise((res) => setTimeout(res, 5000))]);
      for (const c of [bridge.proc, bridge.agent]) if (c.child.exitCode === null) c.child.kill('SIGKILL');
    }
    removeKernelBridge(o.prefix);
    teardownLab(lab);
  }
  return r;
}

function median(xs: number[]): number {
  const s = xs.filter(Number.isFinite).sort((a, b) => a - b);
  if (!s.length) return NaN;
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

function fmt(xs: number[], digits = 0): string {
  const f = xs.filter(Number.isFinite);
  if (!f.length) return '—';
  return `${median(f).toFixed(digits)} [${Math.min(...f).toFixed(digits)}–${Math.max(...f).toFixed(digits)}]`;
}

async function main(): Promise<void> {
  const o = parse(process.argv.slice(2));
  const configs = [...(o.kernel ? ['kernel'] : []), ...o.workers.map((n) => `${n} worker${n > 1 ? 's' : ''}`)];
  const startedAt = new Date().toISOString();
  const runs: Run[] = [];
  for (let round = 1; round <= o.rounds; round++) {
    for (const c of configs) {
      process.stderr.write(`round ${round}: ${c}\n`);
      const r = await oneRun(c, round, o);
      if (!r.ok) process.stderr.write(`  failed: ${r.error}\n`);
      runs.push(r);
    }
  }
  const lines: string[] = [];
  lines.push(`shard-scale ${startedAt}: ${o.rounds} round(s) of ${configs.join(', ')}, wrk -t2 -c32 -d${o.seconds}s, offloads ${o.offloads ? 'on' : 'off'} in the namespaces; \`shadowvm run --workers N${o.runArgs.length ? ` ${o.runArgs.join(' ')}` : ''}\` (else its defaults); medians [range]`);
  lines.push('machine CPU: /proc/stat busy time per request (all cores); bridge CPU: the `run` process (every worker, send threads and the main thread) per request');
  const head = ['config', '1 KiB req/s', '100 KiB req/s', 'machine µs/req 1 KiB', 'machine µs/req 100 KiB', 'bridge µs/req 1 KiB', 'bridge µs/req 100 KiB', 'p99 ms 1 KiB', 'RSS MiB', 'checkpoints asked during wrk, per run'];
  const rows = configs.map((c) => {
    const rs = runs.filter((r) => r.config === c && r.ok);
    const ck = rs.map((r) => {
      const shown = Object.entries(r.checkpoints ?? {}).filter(([, v]) => v > 0).map(([k, v]) => `${k} ${v}`);
      return shown.length ? shown.join(' ') : 'none';
    });
    return [
      c, fmt(rs.map((r) => r.small!.rps)), fmt(rs.map((r) => r.large!.rps)),
      fmt(rs.map((r) => r.small!.machineUsPerReq)), fmt(rs.map((r) => r.large!.machineUsPerReq)),
      fmt(rs.map((r) => r.small!.bridgeUsPerReq)), fmt(rs.map((r) => r.large!.bridgeUsPerReq)),
      fmt(rs.map((r) => r.small!.p99Ms), 2), c === 'kernel' ? '—' : fmt(rs.map((r) => r.rssMiB ?? NaN)), c === 'kernel' ? '—' : ck.join('; '),
    ];
  });
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  lines.push(head.map((h, i) => h.padEnd(widths[i])).join('  '));
  for (const r of rows) lines.push(r.map((v, i) => v.padEnd(widths[i])).join('  '));
  const med = (c: string, k: 'small' | 'large') => median(runs.filter((r) => r.config === c && r.ok).map((r) => r[k]!.rps));
  for (const n of o.workers.filter((n) => n > 1)) {
    const c = `${n} workers`;
    lines.push(`${c} ÷ 1 worker: 1 KiB ${(med(c, 'small') / med('1 worker', 'small')).toFixed(2)}, 100 KiB ${(med(c, 'large') / med('1 worker', 'large')).toFixed(2)}`);
  }
  for (const r of runs.filter((x) => x.ok && x.workers && x.workers.length > 1)) {
    lines.push(`round ${r.round} ${r.config}: frames per worker (client/primary/backup) ${r.workers!.map((w) => `${w.framesIn.client}/${w.framesIn.primary}/${w.framesIn.backup}`).join(' | ')}; state ${r.state}`);
  }
  for (const r of runs.filter((x) => !x.ok)) lines.push(`round ${r.round} ${r.config}: FAILED: ${r.error}`);
  const text = lines.join('\n');
  process.stdout.write(`${text}\n`);
  const file = join(__dirname, '..', '..', 'bench', 'results', `shard-scale-${startedAt.replace(/[:.]/g, '-')}.json`);
  writeFileSync(file, `${JSON.stringify({ bench: 'shard-scale', startedAt, options: o, runs, table: text }, null, 2)}\n`);
  process.stdout.write(`saved ${file}\n`);
  if (runs.some((r) => !r.ok)) process.exitCode = 1;
}

void main();
