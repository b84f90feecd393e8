/**
 * shard-scale: what a second data-plane worker buys on this machine, and
 * what one worker costs per request (issue 9, "scale across cores").
 *
 * The netns lab, wrk from the client through shadowvm, with the data plane
 * split by flow over N worker threads (N = 1, 2): each a whole Bridge whose
 * AF_PACKET ports take only its shard's frames (bench/lib/shard-worker.ts,
 * lib/dataplane/shard.ts). The pipeline normalizes HTTP Date headers, so the
 * steady state asks for no checkpoint; any that were asked are reported (the
 * shards do not coordinate checkpoints: a prototype of the data path, not of
 * the product's multi-worker mode). The kernel bridge runs in the same
 * rounds as the reference. Configurations interleave (K 1 2 K 1 2 …);
 * medians with their range.
 *
 * Run (root): `npx tsc -p tsconfig.json && node dist/bench/shard-scale.js [--rounds 3] [--seconds 5] [--workers 1,2]`
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { buildLab, teardownLab, waitUntilQuiet } from '../lib/lab/netns';
import type { Lab } from '../lib/lab/netns';
import { startLabServers } from '../lib/lab/servers';
import { BENCH_OBJECTS, addKernelBridge, hostCpuBusyUs, readHostCpu, removeKernelBridge, writeBenchObjects } from './lib/lab-setup';
import { runWrk } from './lib/load-tools';
import type { ShardWorkerInit, ShardWorkerReply } from './lib/shard-worker';

interface Options { rounds: number; seconds: number; workers: number[]; prefix: string; kernel: boolean }

function parse(argv: string[]): Options {
  const o: Options = { rounds: 3, seconds: 5, workers: [1, 2], prefix: 'svmsh', kernel: true };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--rounds') o.rounds = Number(argv[++i]);
    else if (a === '--seconds') o.seconds = Number(argv[++i]);
    else if (a === '--workers') o.workers = argv[++i].split(',').map(Number);
    else if (a === '--prefix') o.prefix = argv[++i];
    else if (a === '--no-kernel') o.kernel = false;
    else {
      process.stderr.write('node dist/bench/shard-scale.js [--rounds 3] [--seconds 5] [--workers 1,2] [--prefix svmsh] [--no-kernel]\n');
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
  /** Per worker: checkpoints asked by reason, frames by origin, flows. */
  shards?: { checkpoints: Record<string, number>; frames: Record<string, number>; flows: number; state: string }[];
}

class Shards {
  private readonly workers: Worker[] = [];
  private readonly inbox: ShardWorkerReply[][] = [];
  private readonly waiters: ((m: ShardWorkerReply) => void)[][] = [];

  constructor(private readonly lab: Lab, private readonly count: number) {}

  private next(i: number): Promise<ShardWorkerReply> {
    const m = this.inbox[i].shift();
    if (m) return Promise.resolve(m);
    return new Promise((resolve) => this.waiters[i].push(resolve));
  }

  async start(): Promise<void> {
    for (let i = 0; i < this.count; i++) {
      const init: ShardWorkerInit = {
        count: this.count, index: i, name: `${this.lab.prefix}-s${i}`,
        ports: { uplink: this.lab.client.hostIf, primary: this.lab.primary.hostIf, backup: this.lab.backup.hostIf },
        agentSocket: join(this.lab.runDir, `agent-${i}.sock`),
      };
      const w = new Worker(join(__dirname, 'lib', 'shard-worker.js'), { workerData: init, resourceLimits: { maxYoungGenerationSizeMb: 24 } });
      this.inbox.push([]);
      this.waiters.push([]);
      w.on('message', (m: ShardWorkerReply) => {
        const waiter = this.waiters[i].shift();
        if (waiter) waiter(m);
        else this.inbox[i].push(m);
      });
      w.on('error', (e) => { const waiter = this.waiters[i].shift(); waiter?.({ type: 'failed', message: e.message }); });
      this.workers.push(w);
    }
    const replies = await Promise.all(this.workers.map((_, i) => this.next(i)));
    const failed = replies.find((r) => r.type === 'failed');
    if (failed && failed.type === 'failed') throw new Error(failed.message);
  }

  async stats(): Promise<NonNullable<Run['shards']>> {
    this.workers.forEach((w) => w.postMessage({ type: 'stats' }));
    const replies = await Promise.all(this.workers.map((_, i) => this.next(i)));
    return replies.map((r) => (r.type === 'stats' ? { checkpoints: r.checkpoints, frames: r.frames, flows: r.flows, state: r.state } : { checkpoints: {}, frames: {}, flows: 0, state: `no stats: ${r.type}` }));
  }

  async stop(): Promise<void> {
    this.workers.forEach((w) => w.postMessage({ type: 'stop' }));
    await Promise.race([Promise.all(this.workers.map((_, i) => this.next(i))), new Promise((r) => setTimeout(r, 5000))]);
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}

async function wrkPhase(lab: Lab, file: string, seconds: number, bridgeCpu: boolean): Promise<Measured> {
  const host0 = readHostCpu();
  const cpu0 = process.cpuUsage();
  const w = await runWrk(lab.client.netns, `http://10.77.0.2/${file}`, { threads: 2, connections: 32, seconds });
  const cpu = process.cpuUsage(cpu0);
  const host = hostCpuBusyUs(host0, readHostCpu());
  if (!w.ok) throw new Error(`wrk ${file}: ${w.error}`);
  const errors = w.socketErrors.connect + w.socketErrors.read + w.socketErrors.write + w.socketErrors.timeout + w.non2xx3xx;
  return {
    rps: w.requestsPerSecond, machineUsPerReq: host / w.requests, bridgeUsPerReq: bridgeCpu ? (cpu.user + cpu.system) / w.requests : NaN,
    p99Ms: w.latencyP99Ms, errors,
  };
}

async function oneRun(config: string, round: number, o: Options): Promise<Run> {
  const r: Run = { config, round, ok: false };
  const lab = buildLab({ prefix: o.prefix });
  let shards: Shards | null = null;
  try {
    const servers = await startLabServers(lab);
    writeBenchObjects(servers);
    await waitUntilQuiet(lab);
    const kernel = config === 'kernel';
    if (kernel) addKernelBridge(lab);
    else {
      shards = new Shards(lab, Number(config.split(' ')[0]));
      await shards.start();
    }
    // A short warm-up: ARP, neighbour entries, the JIT.
    await runWrk(lab.client.netns, `http://10.77.0.2/${BENCH_OBJECTS.small.file}`, { threads: 1, connections: 4, seconds: 1 });
    r.small = await wrkPhase(lab, BENCH_OBJECTS.small.file, o.seconds, !kernel);
    r.large = await wrkPhase(lab, BENCH_OBJECTS.large.file, o.seconds, !kernel);
    if (shards) r.shards = await shards.stats();
    r.ok = true;
  } catch (e) {
    r.error = (e as Error).message;
  } finally {
    await shards?.stop();
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
  // The workers' agent sockets are born private (as under `shadowvm run`); a worker thread cannot set the umask.
  process.umask(0o077);
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
  lines.push(`shard-scale ${startedAt}: ${o.rounds} round(s) of ${configs.join(', ')}, wrk -t2 -c32 -d${o.seconds}s; medians [range]`);
  lines.push('machine CPU: /proc/stat busy time per request (all cores); bridge CPU: the bench process (every worker, send thread and the main thread) per request');
  const head = ['config', '1 KiB req/s', '100 KiB req/s', 'machine µs/req 1 KiB', 'machine µs/req 100 KiB', 'bridge µs/req 1 KiB', 'bridge µs/req 100 KiB', 'p99 ms 1 KiB', 'checkpoints asked after start, per run'];
  const rows = configs.map((c) => {
    const rs = runs.filter((r) => r.config === c && r.ok);
    // Beyond each shard's first checkpoint (asked as its agent connects, to leave DEGRADED): by reason.
    const ck = rs.map((r) => {
      const by: Record<string, number> = {};
      for (const sh of r.shards ?? []) for (const [k, v] of Object.entries(sh.checkpoints)) by[k] = (by[k] ?? 0) + v - (k === 'manual' ? 1 : 0);
      const shown = Object.entries(by).filter(([, v]) => v > 0).map(([k, v]) => `${k} ${v}`);
      return shown.length ? shown.join(' ') : 'none';
    });
    return [
      c, fmt(rs.map((r) => r.small!.rps)), fmt(rs.map((r) => r.large!.rps)),
      fmt(rs.map((r) => r.small!.machineUsPerReq)), fmt(rs.map((r) => r.large!.machineUsPerReq)),
      fmt(rs.map((r) => r.small!.bridgeUsPerReq)), fmt(rs.map((r) => r.large!.bridgeUsPerReq)),
      fmt(rs.map((r) => r.small!.p99Ms), 2), c === 'kernel' ? '—' : ck.join('; '),
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
  for (const r of runs.filter((x) => x.ok && x.shards && x.shards.length > 1)) {
    lines.push(`round ${r.round} ${r.config}: frames per worker (client/primary/backup) ${r.shards!.map((s) => `${s.frames.client}/${s.frames.primary}/${s.frames.backup}`).join(' | ')}; states ${r.shards!.map((s) => s.state).join(', ')}`);
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
