/**
 * bench/qemu-bench: the thesis's headline comparison on the QEMU lab (issue 8).
 * A report, not a test; needs root. Run:
 * `npx tsc -p tsconfig.json && node dist/bench/qemu-bench.js`
 * (`--mem 128|512`, `--rounds 3`, `--seconds 5`, `--connections 4`,
 * `--modes kernel,kernel-2vm,shadowvm,periodic-25,periodic-100`, `--prefix qb`, `--verbose`;
 * COLO modes `shadowvm-colo,periodic-colo-25,…` need `make qemu-colo`).
 *
 *   kernel:       <p>-client ── <p>c ─┐
 *                                     <p>br (Linux bridge) ── tap <p>p ── primary VM    backup VM paused, off the bridge
 *   kernel-2vm:   the same, plus <p>-backup (a second client, same addresses) ── <p>c2 ── <p>br2 ── tap <p>b ── backup VM,
 *                 given the same load at the same time: both VMs do the work shadowvm makes them do, nothing compared
 *   shadowvm:     <p>-client ── <p>c ── shadowvm ─┬─ tap <p>p ── primary VM
 *                                                 └─ tap <p>sN ── backup VM (a fresh copy after each checkpoint)
 *                 checkpoint only on divergence; the QEMU agent pauses the primary and copies it whole
 *   periodic-N:   the same, plus a checkpoint at least every N ms after the last one ended
 *                 (replicator.maxIntervalMs = N: state sync on a clock, each one a whole copy)
 *   shadowvm-colo, periodic-colo-N: the same two, but the agent runs QEMU's COLO checkpoints
 *                 (`sync: 'colo'`): one secondary that stays, and each checkpoint sends only the
 *                 pages dirtied since the last one: periodic-colo-N is what Remus does
 *
 * When any COLO mode is asked for, every mode (the kernel ones too) runs the
 * patched QEMU, so all compare the same emulator.
 *
 * Every (round, mode) gets a fresh lab from startQemuLab (same cached guest,
 * same memory size), so no mode inherits another's state; the modes run
 * interleaved (ABCD ABCD …) because the host's speed drifts between minutes.
 * Per lab: a sanity fetch, a 1 s wrk warm-up, wrk on /hello.txt (static),
 * wrk on /cgi-bin/counter (a stateful CGI), one FTP download of big.bin
 * (4 MiB, curl, passive). Bridge counters, the agent's copies and /proc/stat
 * are read around each phase. Results: a table on stdout and
 * bench/results/qemu-<timestamp>.json. The lab is always torn down (finally,
 * SIGINT/SIGTERM/SIGHUP, uncaught errors).
 */
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { QemuAgent } from '../lib/agents/qemu-agent';
import type { LogFn } from '../lib/control/logger';
import type { BridgeSnapshot } from '../lib/control/snapshot';
import { LAB_VM_IPV6, findLabLeftovers, labNames, teardownLab } from '../lib/lab/netns';
import { DEFAULT_REPLICATOR_CONFIG as DEFAULT_REPLICATOR } from '../lib/replicate/replicator';
import { findColoQemu } from '../lib/qemu/colo-probe';
import { GUEST_BIG_FILE, QemuLab, QemuLabMem, guestContent, qemuSyncAgent, startQemuLab } from '../lib/lab/qemu';
import {
  addKernelBridgeOn, addTwinClient, hostCpuBusyPercent, hostFacts, kernelBridgeName, linkExists, readHostCpu, removeKernelBridge, removeTwinClient, twinBridgeName, twinHostIf,
} from './lib/lab-setup';
import { WrkOptions, WrkResult, execInNetns, fetchStatus, runWrk } from './lib/load-tools';
import { Spread, cell, layout, ratioCell, spread } from './lib/report';

type Mode = string; // 'kernel' | 'kernel-2vm' | 'shadowvm' | 'shadowvm-colo' | `periodic-${number}` | `periodic-colo-${number}`
const DEFAULT_MODES: readonly Mode[] = ['kernel', 'kernel-2vm', 'shadowvm', 'periodic-25', 'periodic-100'];
/** The default where `make qemu-colo` has built the patched QEMU: both ways of copying, each against its own periodic baseline. */
const DEFAULT_MODES_WITH_COLO: readonly Mode[] = ['kernel', 'kernel-2vm', 'shadowvm', 'shadowvm-colo', 'periodic-25', 'periodic-colo-25', 'periodic-100', 'periodic-colo-100'];

function periodicMs(mode: Mode): number {
  const m = /^periodic-(?:colo-)?(\d+)$/.exec(mode);
  return m ? Number(m[1]) : 0;
}

/** Whether the mode's agent runs COLO checkpoints (dirty pages into a secondary that stays). */
function coloMode(mode: Mode): boolean {
  return mode === 'shadowvm-colo' || /^periodic-colo-\d+$/.test(mode);
}

function validMode(mode: Mode): boolean {
  return mode === 'kernel' || mode === 'kernel-2vm' || mode === 'shadowvm' || mode === 'shadowvm-colo' || periodicMs(mode) > 0;
}

/** The checkpoint-on-divergence mode that a periodic mode is compared with (same way of copying). */
function divergenceModeFor(periodic: Mode): Mode {
  return coloMode(periodic) ? 'shadowvm-colo' : 'shadowvm';
}

interface Options {
  modes: Mode[];
  prefix: string;
  memMiB: QemuLabMem;
  rounds: number;
  wrk: WrkOptions;
  verbose: boolean;
  /** The patched QEMU, for every mode, when a COLO mode runs. */
  qemuBinary?: string;
}

function parseArgs(argv: string[]): Options {
  const get = (name: string): string | undefined => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const defaults = findColoQemu() ? DEFAULT_MODES_WITH_COLO : DEFAULT_MODES;
  const modes = (get('modes') ?? defaults.join(',')).split(',').map((m) => m.trim());
  for (const m of modes) if (!validMode(m)) throw new Error(`unknown mode ${m}: kernel, kernel-2vm, shadowvm, shadowvm-colo, periodic-N or periodic-colo-N (N ms)`);
  let qemuBinary: string | undefined;
  if (modes.some(coloMode)) {
    qemuBinary = findColoQemu() ?? undefined;
    if (!qemuBinary) throw new Error('COLO modes need the patched QEMU: run `make qemu-colo` first');
  }
  const memMiB = Number(get('mem') ?? 128) as QemuLabMem;
  if (memMiB !== 128 && memMiB !== 512) throw new Error('--mem must be 128 or 512');
  const rounds = Number(get('rounds') ?? 3);
  const seconds = Number(get('seconds') ?? 5);
  const connections = Number(get('connections') ?? 4);
  if (!(rounds >= 1) || !(seconds >= 1) || !(connections >= 2)) throw new Error('--rounds ≥ 1, --seconds ≥ 1, --connections ≥ 2');
  return {
    modes, prefix: get('prefix') ?? 'qb', memMiB, rounds, qemuBinary,
    wrk: { threads: 2, connections, seconds },
    verbose: argv.includes('--verbose'),
  };
}

// ------------------------------------------------------------------ one phase's figures

/** What moved during one phase: the bridge's checkpoints and the agent's copies. */
interface SyncCounts {
  checkpoints: number;
  requestedByReason: Record<string, number>;
  mismatches: number;
  failed: number;
  /** The agent's copies in the phase (whole copies and COLO checkpoints): primary paused → both running, ms; RAM bytes moved. */
  copyMs: number[];
  copyBytes: number[];
  /** Share of the phase the primary spent paused by copies (sum of copy ms ÷ wall ms). */
  pausedShare: number;
  /** The bridge's checkpoints that ended in the phase: asked → done, ms (client ingress held meanwhile). */
  checkpointingMs: number[];
  /** Share of the phase the bridge spent in CHECKPOINTING. */
  checkpointingShare: number;
}

interface Measured {
  wallMs: number;
  hostCpuBusyPercent: number;
  /** Host CPU busy time (all CPUs, /proc/stat) over the phase, ms. */
  hostCpuMs: number;
  sync?: SyncCounts;
}

type WrkPhase = WrkResult & Measured & {
  checkpointsPer1000: number;
  hostCpuMsPerRequest: number;
  /** kernel-2vm: what the backup VM's own client got at the same time. */
  twin?: WrkResult;
};

interface FtpPhase extends Measured {
  ok: boolean;
  bytes: number;
  seconds: number;
  mbytesPerSecond: number;
  intact: boolean;
  error?: string;
}

interface RunResult {
  mode: Mode;
  round: number;
  ok: boolean;
  error?: string;
  accel?: string;
  setupMs: number;
  bootMs?: number;
  static?: WrkPhase;
  cgi?: WrkPhase;
  ftp?: FtpPhase;
  warnings: Record<string, number>;
  /** The first two mismatches the bridge logged in each phase (phase: flow, kind, offset, excerpts). */
  mismatchSamples: string[];
  teardownClean: boolean;
}

/**
 * How long the bridge spent in CHECKPOINTING (from its `state` log events):
 * the time client ingress was held, which is longer than the primary's pause
 * (the agent's answer, a standby that was not warm yet).
 */
class CheckpointClock {
  /** The phase running now (for the log's mismatch samples). */
  phase = 'setup';
  readonly durationsMs: number[] = [];
  private totalMs = 0;
  private since: number | null = null;
  onState(from: unknown, to: unknown): void {
    const now = performance.now();
    if (to === 'CHECKPOINTING' && this.since === null) this.since = now;
    else if (from === 'CHECKPOINTING' && this.since !== null) {
      this.durationsMs.push(now - this.since);
      this.totalMs += now - this.since;
      this.since = null;
    }
  }
  /** Time spent in CHECKPOINTING so far, counting one in progress. */
  spentMs(): number {
    return this.totalMs + (this.since === null ? 0 : performance.now() - this.since);
  }
}

/** Counts the bridge's and agent's warnings and errors; prints them with --verbose. */
function makeLog(counts: Record<string, number>, mismatches: string[], clock: CheckpointClock, verbose: boolean): LogFn {
  return (level, event, fields) => {
    if (event === 'state') clock.onState(fields?.from, fields?.to);
    if (level === 'debug' || level === 'info') return;
    const key = `${level}:${event}`;
    counts[key] = (counts[key] ?? 0) + 1;
    if (event === 'mismatch' && mismatches.filter((m) => m.startsWith(`${clock.phase}:`)).length < 2) {
      const f = fields ?? {};
      const excerpt = (v: unknown) => JSON.stringify(String(v ?? '').slice(0, 64));
      mismatches.push(`${clock.phase}: ${String(f.flow)} ${String(f.kind)} at ${String(f.offset)}: primary ${excerpt(f.primary)} backup ${excerpt(f.backup)}`);
    }
    if (verbose) process.stderr.write(`    [${level}] ${event} ${JSON.stringify(fields ?? {}).slice(0, 300)}\n`);
  };
}

const CLK_TCK_MS = 10; // /proc/stat counts in USER_HZ = 100 on Linux

interface Probe { snap?: BridgeSnapshot; copies: number; colos: number; held: number; heldMs: number; cpu: { busy: number; total: number }; atMs: number }

function probe(lab: QemuLab | null, agent: QemuAgent | undefined, clock: CheckpointClock): Probe {
  return {
    snap: lab && agent ? lab.bridge.snapshot() : undefined, copies: agent?.stats.copyMs.length ?? 0, colos: agent?.stats.coloPauseMs.length ?? 0,
    held: clock.durationsMs.length, heldMs: clock.spentMs(), cpu: readHostCpu(), atMs: performance.now(),
  };
}

function measuredBetween(a: Probe, b: Probe, agent: QemuAgent | undefined, clock: CheckpointClock): Measured {
  const wallMs = b.atMs - a.atMs;
  const m: Measured = { wallMs, hostCpuBusyPercent: hostCpuBusyPercent(a.cpu, b.cpu), hostCpuMs: (b.cpu.busy - a.cpu.busy) * CLK_TCK_MS };
  if (a.snap && b.snap && agent) {
    const requestedByReason: Record<string, number> = {};
    for (const [reason, n] of Object.entries(b.snap.checkpoints.requested)) {
      const d = n - (a.snap.checkpoints.requested as Record<string, number>)[reason];
      if (d) requestedByReason[reason] = d;
    }
    // Whole copies (way 1, and COLO's start) and COLO checkpoints (the primary's pause; RAM bytes).
    const copyMs = [...agent.stats.copyMs.slice(a.copies, b.copies), ...agent.stats.coloPauseMs.slice(a.colos, b.colos)];
    m.sync = {
      checkpoints: b.snap.checkpoints.done - a.snap.checkpoints.done,
      requestedByReason,
      mismatches: b.snap.mismatches - a.snap.mismatches,
      failed: b.snap.checkpoints.failed - a.snap.checkpoints.failed,
      copyMs,
      copyBytes: [...agent.stats.copyBytes.slice(a.copies, b.copies), ...agent.stats.coloBytes.slice(a.colos, b.colos)],
      pausedShare: copyMs.reduce((s, v) => s + v, 0) / wallMs,
      checkpointingMs: clock.durationsMs.slice(a.held, b.held),
      checkpointingShare: (b.heldMs - a.heldMs) / wallMs,
    };
  }
  return m;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * `twin`: a second client namespace (kernel-2vm) that gets the same load at
 * the same time, against the backup VM; only the first client's figures are
 * reported.
 */
async function measureLab(lab: QemuLab, agent: QemuAgent | undefined, clock: CheckpointClock, o: Options, r: RunResult, say: (s: string) => void, twin?: string): Promise<void> {
  const ns = lab.client.netns;
  const url = (p: string) => `http://${lab.serviceIpv4}/${p}`;
  // The path must work before it is measured (a kernel bridge's ports may take a moment to forward).
  let s = await fetchStatus(ns, url('hello.txt'));
  for (let i = 0; i < 30 && !s.ok; i++) {
    await sleep(200);
    s = await fetchStatus(ns, url('hello.txt'));
  }
  if (!s.ok) throw new Error(`sanity fetch of ${url('hello.txt')} failed: ${s.error ?? `status ${s.status}`}`);
  if (twin) {
    const t = await fetchStatus(twin, url('hello.txt'));
    if (!t.ok) throw new Error(`sanity fetch from ${twin} (the backup VM's own client) failed: ${t.error ?? `status ${t.status}`}`);
  }

  const wrkPhase = async (name: string, path: string): Promise<WrkPhase> => {
    say(`    wrk ${name}…`);
    clock.phase = name;
    const a = probe(lab, agent, clock);
    const [w, t] = await Promise.all([runWrk(ns, url(path), o.wrk), twin ? runWrk(twin, url(path), o.wrk) : null]);
    const m = measuredBetween(a, probe(lab, agent, clock), agent, clock);
    const requests = Number.isFinite(w.requests) ? w.requests : NaN;
    return {
      ...w, ...m, ...(t ? { twin: t } : {}),
      checkpointsPer1000: m.sync && requests > 0 ? (m.sync.checkpoints / requests) * 1000 : NaN,
      hostCpuMsPerRequest: requests > 0 ? m.hostCpuMs / requests : NaN,
    };
  };

  // Warm-up: the guest's page cache and httpd, the bridge's JIT; not reported.
  clock.phase = 'warm-up';
  await Promise.all([ns, ...(twin ? [twin] : [])].map((n) => runWrk(n, url('hello.txt'), { ...o.wrk, seconds: 1 })));
  await sleep(300);
  r.static = await wrkPhase('static', 'hello.txt');
  r.cgi = await wrkPhase('CGI', 'cgi-bin/counter');

  say('    FTP get big.bin…');
  clock.phase = 'FTP';
  const file = join(lab.runDir, `bench-${GUEST_BIG_FILE}`);
  const a = probe(lab, agent, clock);
  const curlFtp = (n: string, out: string) => execInNetns(n, 'curl', ['-sS', '--ftp-pasv', '--max-time', '150', '-o', out, '-w', '%{size_download} %{time_total}', `ftp://${lab.serviceIpv4}/${GUEST_BIG_FILE}`], 170_000);
  const [c] = await Promise.all([curlFtp(ns, file), twin ? curlFtp(twin, '/dev/null') : null]);
  const m = measuredBetween(a, probe(lab, agent, clock), agent, clock);
  const w = /^(\d+) ([\d.]+)/.exec(c.stdout.trim());
  const bytes = w ? Number(w[1]) : 0;
  const seconds = w ? Number(w[2]) : NaN;
  let intact = false;
  try {
    const want = guestContent().get(GUEST_BIG_FILE) as Buffer;
    const got = readFileSync(file);
    intact = createHash('sha256').update(got).digest('hex') === createHash('sha256').update(want).digest('hex');
  } catch { /* reported as not intact */ }
  rmSync(file, { force: true });
  const ok = c.code === 0 && intact;
  r.ftp = {
    ...m, ok, bytes, seconds, intact,
    mbytesPerSecond: ok ? bytes / 1e6 / seconds : NaN,
    ...(ok ? {} : { error: `curl exit ${c.code}${c.timedOut ? ' (timed out)' : ''}, ${bytes} bytes, ${intact ? 'intact' : 'not intact'}: ${c.stderr.trim().split('\n').slice(-2).join(' ')}` }),
  };
}

// ------------------------------------------------------------------ one (round, mode)

/**
 * The backup VM's own client for kernel-2vm. Its namespace is named as the
 * netns lab's backup namespace, which teardownLab(prefix) removes too.
 */
function addTwin(lab: QemuLab, prefix: string): string {
  return addTwinClient(prefix, labNames(prefix).namespaces.backup, lab.taps.backup, { mac: lab.serviceMac, ipv4: lab.serviceIpv4, ipv6: LAB_VM_IPV6 });
}

function removeTwin(prefix: string): void {
  removeTwinClient(prefix, labNames(prefix).namespaces.backup);
}

const current: { prefix: string | null } = { prefix: null };

async function runOne(mode: Mode, round: number, o: Options, say: (s: string) => void): Promise<RunResult> {
  const r: RunResult = { mode, round, ok: false, setupMs: 0, warnings: {}, mismatchSamples: [], teardownClean: false };
  const clock = new CheckpointClock();
  const log = makeLog(r.warnings, r.mismatchSamples, clock, o.verbose);
  const t0 = Date.now();
  let lab: QemuLab | null = null;
  try {
    if (mode === 'kernel' || mode === 'kernel-2vm') {
      // The lab as built (its default agent only answers: no copies), then its bridge out of the way:
      // a Linux bridge joins the client's veth and the primary's tap. kernel: the backup VM is paused.
      // kernel-2vm: the backup VM gets a client of its own (same addresses) behind a second Linux bridge.
      lab = await startQemuLab({ prefix: o.prefix, memMiB: o.memMiB, log, ...(o.qemuBinary ? { qemuBinary: o.qemuBinary } : {}) });
      await lab.bridge.stop();
      await lab.agent.stop();
      addKernelBridgeOn(o.prefix, [lab.client.hostIf, lab.taps.primary]);
      let twin: string | undefined;
      if (mode === 'kernel') await lab.vms.backup.qmp.execute('stop');
      else twin = addTwin(lab, o.prefix);
      r.setupMs = Date.now() - t0;
      r.accel = lab.accel.accel;
      r.bootMs = lab.bootMs;
      await measureLab(lab, undefined, clock, o, r, say, twin);
    } else {
      const factory = qemuSyncAgent(coloMode(mode) ? { sync: 'colo' } : {});
      const every = periodicMs(mode);
      lab = await startQemuLab({
        prefix: o.prefix, memMiB: o.memMiB, agent: factory, log, ...(o.qemuBinary ? { qemuBinary: o.qemuBinary } : {}),
        ...(every ? { config: { replicator: { ...DEFAULT_REPLICATOR, maxIntervalMs: every } } } : {}),
      });
      r.setupMs = Date.now() - t0;
      r.accel = lab.accel.accel;
      r.bootMs = lab.bootMs;
      await measureLab(lab, factory.last, clock, o, r, say);
    }
    r.ok = Boolean(r.static?.ok && r.cgi?.ok && r.ftp?.ok);
    if (!r.ok) r.error = [r.static?.error, r.cgi?.error, r.ftp?.error].filter(Boolean).join('; ') || 'a phase failed';
  } catch (e) {
    r.error = (e as Error).message;
  } finally {
    removeKernelBridge(o.prefix);
    removeTwin(o.prefix);
    await lab?.stop().catch((e: Error) => { r.error = `${r.error ?? ''} (stop: ${e.message})`; });
    teardownLab(o.prefix);
    const left = findLabLeftovers(o.prefix);
    r.teardownClean = !left.namespaces.length && !left.links.length && !left.processes.length
      && !linkExists(kernelBridgeName(o.prefix)) && !linkExists(twinBridgeName(o.prefix)) && !linkExists(twinHostIf(o.prefix));
  }
  return r;
}

// ------------------------------------------------------------------ cleanup on interruption

/** Synchronous: usable from signal handlers and 'exit'. Kills the VMs and everything in the namespace, removes taps and the kernel bridge. */
function emergencyTeardown(): void {
  if (!current.prefix) return;
  const prefix = current.prefix;
  current.prefix = null;
  removeKernelBridge(prefix);
  removeTwin(prefix);
  const report = teardownLab(prefix);
  if (report.failures.length) process.stderr.write(`teardown problems:\n${report.failures.join('\n')}\n`);
}

function installCleanupHandlers(): void {
  for (const [signal, code] of [['SIGINT', 130], ['SIGTERM', 143], ['SIGHUP', 129]] as const) {
    process.on(signal, () => {
      process.stderr.write(`\n${signal}: tearing the QEMU lab down\n`);
      emergencyTeardown();
      process.exit(code);
    });
  }
  process.on('uncaughtException', (e) => {
    process.stderr.write(`uncaught: ${e.stack ?? e.message}\n`);
    emergencyTeardown();
    process.exit(1);
  });
  process.on('exit', emergencyTeardown);
}

// ------------------------------------------------------------------ summary

interface Metric {
  key: string;
  label: string;
  digits: number;
  /** Higher is better (throughput) or lower is better (latency, checkpoints, CPU). */
  higherIsBetter: boolean;
  /** Compare with the kernel baseline (not for figures the kernel has none of). */
  ratio: boolean;
  value: (r: RunResult) => number;
}

const okWrk = (w: WrkPhase | undefined, f: (w: WrkPhase) => number) => (w?.ok ? f(w) : NaN);
/** wrk prints a latency of 0 when no request completed in time to be timed (all timed out): no figure. */
const okLatency = (w: WrkPhase | undefined, f: (w: WrkPhase) => number) => {
  const v = okWrk(w, f);
  return v > 0 ? v : NaN;
};
const median = (xs: number[]) => spread(xs).median;

const METRICS: Metric[] = [
  { key: 'staticRps', label: 'static req/s', digits: 0, higherIsBetter: true, ratio: true, value: (r) => okWrk(r.static, (w) => w.requestsPerSecond) },
  { key: 'staticP50', label: 'static latency p50 ms', digits: 1, higherIsBetter: false, ratio: true, value: (r) => okLatency(r.static, (w) => w.latencyP50Ms) },
  { key: 'staticP99', label: 'static latency p99 ms', digits: 0, higherIsBetter: false, ratio: true, value: (r) => okLatency(r.static, (w) => w.latencyP99Ms) },
  { key: 'cgiRps', label: 'CGI req/s', digits: 1, higherIsBetter: true, ratio: true, value: (r) => okWrk(r.cgi, (w) => w.requestsPerSecond) },
  { key: 'cgiP50', label: 'CGI latency p50 ms', digits: 0, higherIsBetter: false, ratio: true, value: (r) => okLatency(r.cgi, (w) => w.latencyP50Ms) },
  { key: 'cgiP99', label: 'CGI latency p99 ms', digits: 0, higherIsBetter: false, ratio: true, value: (r) => okLatency(r.cgi, (w) => w.latencyP99Ms) },
  { key: 'twinStaticRps', label: 'kernel-2vm: backup VM\'s client, static req/s', digits: 0, higherIsBetter: true, ratio: false, value: (r) => (r.static?.twin?.ok ? r.static.twin.requestsPerSecond : NaN) },
  { key: 'ftpMBps', label: 'FTP get 4 MiB, MB/s', digits: 2, higherIsBetter: true, ratio: true, value: (r) => (r.ftp?.ok ? r.ftp.mbytesPerSecond : NaN) },
  { key: 'staticCkptPer1000', label: 'checkpoints / 1,000 req (static)', digits: 1, higherIsBetter: false, ratio: false, value: (r) => r.static?.checkpointsPer1000 ?? NaN },
  { key: 'cgiCkptPer1000', label: 'checkpoints / 1,000 req (CGI)', digits: 0, higherIsBetter: false, ratio: false, value: (r) => r.cgi?.checkpointsPer1000 ?? NaN },
  { key: 'ftpCkpts', label: 'checkpoints per FTP transfer', digits: 0, higherIsBetter: false, ratio: false, value: (r) => r.ftp?.sync?.checkpoints ?? NaN },
  { key: 'ckptPerSecStatic', label: 'checkpoints / s (static)', digits: 1, higherIsBetter: false, ratio: false, value: (r) => (r.static?.sync ? (r.static.sync.checkpoints / r.static.wallMs) * 1000 : NaN) },
  { key: 'copyMsP50', label: 'copy or COLO pause (primary paused) p50 ms', digits: 1, higherIsBetter: false, ratio: false, value: (r) => median([...(r.static?.sync?.copyMs ?? []), ...(r.cgi?.sync?.copyMs ?? []), ...(r.ftp?.sync?.copyMs ?? [])]) },
  { key: 'copyMB', label: 'RAM MB moved per copy (p50)', digits: 1, higherIsBetter: false, ratio: false, value: (r) => median([...(r.static?.sync?.copyBytes ?? []), ...(r.cgi?.sync?.copyBytes ?? []), ...(r.ftp?.sync?.copyBytes ?? [])]) / 1e6 },
  { key: 'ckptBridgeMsP50', label: 'checkpoint asked → done p50 ms', digits: 0, higherIsBetter: false, ratio: false, value: (r) => median([...(r.static?.sync?.checkpointingMs ?? []), ...(r.cgi?.sync?.checkpointingMs ?? []), ...(r.ftp?.sync?.checkpointingMs ?? [])]) },
  { key: 'pausedStatic', label: 'primary paused, % of static phase', digits: 0, higherIsBetter: false, ratio: false, value: (r) => (r.static?.sync ? r.static.sync.pausedShare * 100 : NaN) },
  { key: 'heldStatic', label: 'bridge checkpointing, % of static phase', digits: 0, higherIsBetter: false, ratio: false, value: (r) => (r.static?.sync ? r.static.sync.checkpointingShare * 100 : NaN) },
  { key: 'hostCpuStatic', label: 'host CPU busy % (static)', digits: 0, higherIsBetter: false, ratio: false, value: (r) => r.static?.hostCpuBusyPercent ?? NaN },
  { key: 'cpuPerReqStatic', label: 'host CPU ms / request (static)', digits: 2, higherIsBetter: false, ratio: true, value: (r) => okWrk(r.static, (w) => w.hostCpuMsPerRequest) },
];

/** Per-round ratio of a mode to a baseline mode (same round: the paired comparison), then its spread over rounds. */
function pairedRatio(results: RunResult[], mode: Mode, base: Mode, metric: Metric): Spread {
  const ratios: number[] = [];
  for (const r of results.filter((x) => x.mode === mode)) {
    const b = results.find((x) => x.mode === base && x.round === r.round);
    if (!b) continue;
    const v = metric.value(r);
    const k = metric.value(b);
    if (Number.isFinite(v) && Number.isFinite(k) && k !== 0) ratios.push(v / k);
  }
  return spread(ratios);
}

function report(results: RunResult[], o: Options, facts: Record<string, string>, factsAfter: Record<string, string>, totalS: number): string[] {
  const out: string[] = [];
  const accel = [...new Set(results.map((r) => r.accel).filter(Boolean))].join('/') || '?';
  const rounds = Math.max(0, ...results.map((r) => r.round));
  out.push(`QEMU bench: no protection vs shadowvm vs periodic checkpoints, ${o.memMiB} MiB guest under ${accel.toUpperCase()} (node ${process.version}, kernel ${facts.kernel}, ${facts.cpus} CPUs${o.qemuBinary ? `; QEMU ${o.qemuBinary} in every mode` : ''})`);
  out.push(`  ${rounds} round(s) of ${o.modes.join(', ')} (interleaved, a fresh lab each); wrk -t${o.wrk.threads} -c${o.wrk.connections} -d${o.wrk.seconds}s --latency on /hello.txt and /cgi-bin/counter; one curl FTP get of ${GUEST_BIG_FILE} (4 MiB, passive)`);
  out.push(`  loadavg before ${facts.loadavg.split(' ').slice(0, 3).join(' ')}, after ${factsAfter.loadavg.split(' ').slice(0, 3).join(' ')}; run took ${totalS.toFixed(0)} s`);
  out.push('  cells: median [min–max] over rounds; ratios: the median of each round\'s own ratio (same round, paired), [min–max]');
  out.push('');
  const modes = o.modes;
  const rows = [['metric', ...modes]];
  for (const metric of METRICS) rows.push([metric.label, ...modes.map((m) => cell(spread(results.filter((r) => r.mode === m).map(metric.value)), metric.digits))]);
  out.push(...layout(rows));
  out.push('');
  out.push('  kernel = one unprotected VM behind a Linux bridge; the backup VM is paused. kernel-2vm = the same, and the backup VM runs');
  out.push('  behind a second Linux bridge with a client of its own that sends it the same load at the same time: both VMs do the work');
  out.push('  shadowvm makes them do, with no comparison and no checkpoints (figures: the primary\'s client). shadowvm and periodic-N');
  out.push('  run two VMs on the same 2 CPUs, so their ratio to kernel includes the cost of running a replica at all.');
  const ratioTable = (base: Mode, title: string) => {
    const others = modes.filter((m) => m !== base && m !== 'kernel' && (base === 'kernel' || m !== 'kernel-2vm'));
    if (!modes.includes(base) || !others.length) return;
    out.push('');
    out.push(title);
    const t = [['metric', ...others.map((m) => `${m} ÷ ${base}`), 'better is']];
    for (const metric of METRICS.filter((x) => x.ratio)) {
      t.push([metric.label, ...others.map((m) => ratioCell(pairedRatio(results, m, base, metric))), metric.higherIsBetter ? '> 1' : '< 1']);
    }
    out.push(...layout(t));
  };
  ratioTable('kernel', 'Ratios to no protection (each round\'s mode ÷ that round\'s kernel):');
  ratioTable('kernel-2vm', 'Ratios to two unprotected VMs doing the same work (÷ kernel-2vm of the same round):');

  const periodic = modes.filter((m) => periodicMs(m) > 0 && modes.includes(divergenceModeFor(m)));
  if (periodic.length) {
    out.push('');
    out.push('The thesis\'s comparison: checkpoint on divergence against periodic state sync, same round, same two VMs, same way of copying');
    out.push('(shadowvm and periodic-N: whole copies; shadowvm-colo and periodic-colo-N: COLO dirty pages, as Remus copies):');
    const th = [['metric', ...periodic.map((p) => `${divergenceModeFor(p)} ÷ ${p}`), 'better is']];
    for (const metric of METRICS.filter((x) => x.ratio)) {
      th.push([metric.label, ...periodic.map((p) => ratioCell(pairedRatio(results, divergenceModeFor(p), p, metric))), metric.higherIsBetter ? '> 1' : '< 1']);
    }
    out.push(...layout(th));
  }
  out.push('');
  for (const r of results) {
    const sync = (label: string, p: Measured | undefined) => {
      if (!p?.sync) return '';
      const reasons = Object.entries(p.sync.requestedByReason).map(([k, n]) => `${k} ${n}`).join(', ') || 'none';
      return `${label}: ${p.sync.checkpoints} ckpt (${reasons}), ${p.sync.mismatches} mism, ${p.sync.failed} failed`;
    };
    const warn = Object.entries(r.warnings).map(([k, n]) => `${k}×${n}`).join(' ');
    out.push(`round ${r.round} ${r.mode}: ${r.ok ? 'ok' : `FAILED: ${r.error}`}; setup ${(r.setupMs / 1000).toFixed(1)} s (boot ${r.bootMs ?? '?'} ms)${r.teardownClean ? '' : '; LEFTOVERS after teardown'}`);
    const details = [sync('static', r.static), sync('CGI', r.cgi), sync('FTP', r.ftp)].filter(Boolean);
    const errs = (label: string, w: WrkPhase | undefined) => {
      if (!w) return '';
      const e = w.socketErrors;
      const n = e.connect + e.read + e.write + e.timeout + w.non2xx3xx;
      return n ? `${label} errors: connect ${e.connect} read ${e.read} write ${e.write} timeout ${e.timeout} non-2xx ${w.non2xx3xx}` : '';
    };
    details.push(...[errs('static', r.static), errs('CGI', r.cgi)].filter(Boolean));
    if (details.length) out.push(`    ${details.join('; ')}`);
    if (warn) out.push(`    warnings: ${warn}`);
    for (const m of r.mismatchSamples) out.push(`    mismatch in ${m}`);
  }
  return out;
}

// ------------------------------------------------------------------ main

async function main(): Promise<number> {
  if (process.getuid?.() !== 0) {
    process.stderr.write('qemu-bench builds a QEMU lab (taps, a namespace, VMs): run it as root\n');
    return 1;
  }
  const o = parseArgs(process.argv.slice(2));
  current.prefix = o.prefix;
  installCleanupHandlers();
  removeKernelBridge(o.prefix);
  teardownLab(o.prefix);

  const startedAt = new Date();
  const facts = hostFacts();
  const say = (s: string) => process.stderr.write(`${s}\n`);
  const results: RunResult[] = [];
  const t0 = Date.now();
  for (let round = 1; round <= o.rounds; round++) {
    for (const mode of o.modes) {
      say(`round ${round}/${o.rounds}, ${mode}:`);
      const r = await runOne(mode, round, o, say);
      if (r.error) say(`  failed: ${r.error}`);
      results.push(r);
    }
  }
  const factsAfter = hostFacts();
  const totalS = (Date.now() - t0) / 1000;
  const lines = report(results, o, facts, factsAfter, totalS);
  process.stdout.write(`${lines.join('\n')}\n`);

  const summary: Record<string, unknown> = {};
  for (const m of o.modes) {
    const per: Record<string, unknown> = {};
    for (const metric of METRICS) {
      per[metric.key] = spread(results.filter((r) => r.mode === m).map(metric.value));
      if (m !== 'kernel' && metric.ratio) per[`${metric.key}_per_kernel`] = pairedRatio(results, m, 'kernel', metric);
      if (m !== 'kernel' && m !== 'kernel-2vm' && metric.ratio) per[`${metric.key}_per_kernel-2vm`] = pairedRatio(results, m, 'kernel-2vm', metric);
      if ((m === 'shadowvm' || m === 'shadowvm-colo') && metric.ratio) {
        for (const p of o.modes.filter((x) => periodicMs(x) > 0 && divergenceModeFor(x) === m)) per[`${metric.key}_per_${p}`] = pairedRatio(results, m, p, metric);
      }
    }
    summary[m] = per;
  }
  const outDir = join(__dirname, '..', '..', 'bench', 'results');
  mkdirSync(outDir, { recursive: true });
  const file = join(outDir, `qemu-${startedAt.toISOString().replace(/[:.]/g, '-')}.json`);
  const json = JSON.stringify({
    bench: 'qemu', startedAt: startedAt.toISOString(), totalS, node: process.version, host: facts, hostAfter: factsAfter,
    options: o, summary, results,
  }, (_k, v) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2);
  writeFileSync(file, json);
  process.stdout.write(`saved ${file}\n`);
  return results.every((r) => r.ok && r.teardownClean) ? 0 : 1;
}

main()
  .then((code) => {
    emergencyTeardown();
    process.exit(code);
  })
  .catch((e: Error) => {
    process.stderr.write(`qemu-bench: ${e.stack ?? e.message}\n`);
    emergencyTeardown();
    process.exit(1);
  });
