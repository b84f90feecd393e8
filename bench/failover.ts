/**
 * bench/failover: what a client sees when the active replica dies, on the
 * netns lab with shadowvm in the middle. A report, not a test; needs root.
 * Run: `npx tsc -p tsconfig.json && node dist/bench/failover.js`
 * (`--runs 20`, `--wrk-rounds 3`, `--prefix svmbf`; `--help` lists the rest).
 *
 *   client ns ── <p>c ── shadowvm (in this process) ─┬─ <p>p ── primary ns (nginx)
 *   tcpdump -i eth0 (headers)                         └─ <p>b ── backup ns  (nginx)
 *
 * One lab for the whole run (startBridgedLab with a LinkWatcher, so carrier
 * loss is seen). Every death kills the replica that is active at the time, so
 * the roles alternate; after each failover the lab re-protects itself (the
 * dead namespace gets fresh servers and becomes the backup) and the next run
 * waits for COMPARING with a standby.
 *
 * Downloads, interleaved by round (none, abrupt, silent, none, abrupt, …):
 * curl --limit-rate fetches a fixed-seed file written into both content
 * roots (the client namespace's tcp_rmem is capped, 256 KiB by default, so
 * curl's read-ahead, and with it the pauses of its rate limiter, stay short)
 * while tcpdump in the client namespace records the headers of what
 * the client received; `--kill-at-ms` after curl starts, the active replica
 * is killed (`none`: the same moment is only marked). The death time is the
 * monotonic clock just BEFORE the kill() call (kill() runs `ip`
 * asynchronously, so the bridge goes on forwarding; the death takes effect
 * somewhere inside the call, whose duration is reported, and the figure
 * "from kill() return" bounds it from the other side), put on the wall clock of the capture's
 * kernel timestamps with bench/lib/wallclock. From the capture
 * (bench/lib/segments): death → first data segment from the survivor (told
 * apart by its IPv4 ID sequence), the largest gap between new-data segments
 * in a window around the death (the stall) against the same window of the
 * runs with no death, and the dead replica's bytes still released after its
 * death. From the bridge: failoverHistory (detection → promotion), the
 * time to re-protection, and how long its event loop went without a tick
 * (bench/lib/tick-gaps). Every download's sha256 is checked.
 *
 * Then wrk side by side (none, abrupt, silent per round): `wrk -t2 -c8
 * --latency` on a 1 KiB object, the death half way through.
 *
 * Results: a table on stdout and bench/results/failover-<timestamp>.json. The
 * lab is always torn down (finally, SIGINT/SIGTERM, uncaught errors). Exits
 * non-zero when a run failed or something was left behind.
 */
import { createHash } from 'node:crypto';
import { copyFileSync, createReadStream, existsSync, mkdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { EventLoopUtilization, performance } from 'node:perf_hooks';
import { monotonicUs } from '../lib/clock';
import type { LogFn, LogLevel } from '../lib/control/logger';
import { LinkWatcher } from '../lib/io/link-watch';
import { BridgedLab, startBridgedLab, waitFor } from '../lib/lab/bridged';
import { fixedSeedBytes } from '../lib/lab/content';
import { serveOnBoth } from '../lib/lab/servers';
import { runIn } from '../lib/lab/exec';
import type { DeathMode } from '../lib/lab/faults';
import { findLabLeftovers, teardownLab } from '../lib/lab/netns';
import type { FailoverRecord } from '../lib/pipeline/pipeline';
import { startHeaderCapture } from './lib/capture';
import { BENCH_OBJECTS, hostFacts, writeBenchObjects } from './lib/lab-setup';
import { WrkResult, execInNetns, fetchStatus, percentile, runWrk } from './lib/load-tools';
import { RunTiming, analyzeRun, readServerSegments } from './lib/segments';
import { TickGaps } from './lib/tick-gaps';
import { measureWallOffset } from './lib/wallclock';

type Mode = 'none' | DeathMode;
const MODES: readonly Mode[] = ['none', 'abrupt', 'silent'];
const LABELS: Record<Mode, string> = { none: 'no failover', abrupt: 'abrupt death', silent: 'silent death' };

const BIG_FILE = 'failover-big.bin';
const BIG_SEED = 0xfa11;
const HTTP_PORT = 80;

interface Options {
  prefix: string;
  /** Download runs per death mode. */
  runs: number;
  /** A download with no death every this many rounds (1: every round). */
  baselineEvery: number;
  fileMiB: number;
  /** curl --limit-rate. */
  rate: string;
  killAtMs: number;
  windowBeforeMs: number;
  windowAfterMs: number;
  wrkRounds: number;
  wrk: { threads: number; connections: number; seconds: number };
  /** Pause after re-protection before the next run. */
  settleMs: number;
  /** Keep each run's capture here (default: deleted after analysis). */
  keepCaptures: string | null;
  /** Download modes per round, in this order. */
  modes: Mode[];
  /** Client namespace net.ipv4.tcp_rmem maximum (bytes); 0: leave the kernel default. */
  clientRmem: number;
}

const HELP = `node dist/bench/failover.js [options]   (root)
  --runs N              download runs per death mode (default 20)
  --baseline-every N    a download with no death every N rounds (default 1)
  --file-mib N          download size (default 40)
  --rate R              curl --limit-rate (default 20M)
  --kill-at-ms N        death this long after curl starts (default 800)
  --window-before-ms N  stall window before the death (default 700)
  --window-after-ms N   stall window after the death (default 1000)
  --wrk-rounds N        wrk rounds (none, abrupt, silent each; default 3)
  --wrk-seconds N       (default 3)   --wrk-connections N (default 8)
  --prefix P            lab prefix (default svmbf)
  --modes LIST          download modes per round (default none,abrupt,silent)
  --client-rmem N       client namespace tcp_rmem maximum in bytes (default 262144; 0: kernel default)
  --keep-captures DIR   keep each run's client capture (headers, both directions; wrk runs too) in DIR`;

function parseArgs(argv: string[]): Options {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(`${HELP}\n`);
    process.exit(0);
  }
  const get = (name: string): string | undefined => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const num = (name: string, dflt: number, min: number): number => {
    const v = Number(get(name) ?? dflt);
    if (!Number.isFinite(v) || v < min) throw new Error(`--${name} must be a number ≥ ${min}`);
    return v;
  };
  const o: Options = {
    prefix: get('prefix') ?? 'svmbf',
    runs: num('runs', 20, 1),
    baselineEvery: num('baseline-every', 1, 1),
    fileMiB: num('file-mib', 40, 1),
    rate: get('rate') ?? '20M',
    killAtMs: num('kill-at-ms', 800, 50),
    windowBeforeMs: num('window-before-ms', 700, 1),
    windowAfterMs: num('window-after-ms', 1000, 1),
    wrkRounds: num('wrk-rounds', 3, 0),
    wrk: { threads: 2, connections: num('wrk-connections', 8, 1), seconds: num('wrk-seconds', 3, 2) },
    settleMs: 200,
    keepCaptures: get('keep-captures') ?? null,
    modes: (get('modes') ?? MODES.join(',')).split(',').map((m) => m.trim()) as Mode[],
    clientRmem: num('client-rmem', 262144, 0),
  };
  for (const m of o.modes) if (!MODES.includes(m)) throw new Error(`unknown mode ${m}: one of ${MODES.join(', ')}`);
  if (o.windowBeforeMs > o.killAtMs) throw new Error('--window-before-ms must not exceed --kill-at-ms');
  return o;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ------------------------------------------------------------------ bridge log

interface LogEntry {
  atUs: number; level: LogLevel; event: string; fields: Record<string, string | number | boolean | null>;
  /** Event-loop utilization counters at failover and re-protection events (how busy the bridge's loop was in between). */
  elu?: EventLoopUtilization;
}

/** Events at which the event loop's utilization is sampled. */
const ELU_EVENTS = new Set(['failover', 'reprotected']);

/** Keeps the bridge's and the lab agent's events with their monotonic time (checkpoint-done and mismatches only counted). */
class EventTap {
  readonly entries: LogEntry[] = [];
  readonly counts: Record<string, number> = {};
  readonly log: LogFn = (level, event, fields) => {
    if (level === 'debug') return;
    const key = `${level}:${event}`;
    this.counts[key] = (this.counts[key] ?? 0) + 1;
    if (event === 'checkpoint-done' || event === 'mismatch') return;
    const flat: LogEntry['fields'] = {};
    for (const [k, v] of Object.entries(fields ?? {})) {
      flat[k] = v === null || typeof v === 'number' || typeof v === 'boolean' ? v : typeof v === 'string' ? v.slice(0, 200) : String(v).slice(0, 200);
    }
    this.entries.push({ atUs: monotonicUs(), level, event, fields: flat, ...(ELU_EVENTS.has(event) ? { elu: performance.eventLoopUtilization() } : {}) });
    if (this.entries.length > 5000) this.entries.splice(0, 1000);
  };
  /** Events from `fromUs` to `toUs`, time in ms relative to `zeroUs`. */
  between(fromUs: number, toUs: number, zeroUs: number): { ms: number; level: LogLevel; event: string; fields: LogEntry['fields'] }[] {
    return this.entries.filter((e) => e.atUs >= fromUs && e.atUs <= toUs)
      .map((e) => ({ ms: Number(((e.atUs - zeroUs) / 1000).toFixed(3)), level: e.level, event: e.event, fields: e.fields }));
  }
}

// ------------------------------------------------------------------ one death

interface DeathRecord {
  dead: string;
  survivor: string;
  /** kill() duration (the `ip` commands; the bridge keeps running meanwhile), ms. */
  killMs: number;
  cause: string;
  detail: string;
  /** failoverHistory: promotedUs − detectedUs. */
  detectToPromoteMs: number;
  /** Kill call start → detection (the bridge's detectedUs; for silence, when the silence began) and → promotion. */
  killToDetectMs: number;
  killToPromoteMs: number;
  flowsCarried: number;
  backlogFrames: number;
  discardedFrames: number;
  /** Promotion → the bridge's 'reprotected' event (new backup in place), ms. */
  reprotectMs: number;
  /**
   * Share of that time the event loop (bridge, lab agent) was busy rather than waiting for I/O
   * (performance.eventLoopUtilization): near 1 means the bridge could hardly run.
   */
  reprotectLoopBusy: number;
  /** Bridge counters that moved during the run (probes, false alarms, trimmed, duplicates…). */
  counters: Record<string, number>;
  log: ReturnType<EventTap['between']>;
}

interface Ctx {
  o: Options;
  l: BridgedLab;
  tap: EventTap;
  ticks: TickGaps;
  bigSha: string;
  bigBytes: number;
}

function counterDiff(before: Record<string, number>, after: Record<string, number>): Record<string, number> {
  const d: Record<string, number> = {};
  for (const [k, v] of Object.entries(after)) if (v !== before[k]) d[k] = v - (before[k] ?? 0);
  return d;
}

function isProtected(l: BridgedLab): boolean {
  return l.bridge.pipeline.state === 'COMPARING' && l.bridge.pipeline.replicas.standby !== null;
}

async function waitProtected(l: BridgedLab, timeoutMs = 20_000): Promise<boolean> {
  return waitFor(() => isProtected(l), timeoutMs, 2);
}

/**
 * Kills the active replica (or, for `none`, only marks the moment).
 * Returns the monotonic times around the call and who died.
 */
async function killActive(l: BridgedLab, mode: Mode): Promise<{ t0: number; t1: number; dead: string; survivor: string }> {
  const dead = l.activeNode();
  const survivor = l.standbyNode();
  const t0 = monotonicUs();
  if (mode !== 'none') await l.kill(dead, mode);
  const t1 = monotonicUs();
  return { t0, t1, dead: dead.netns, survivor: survivor?.netns ?? '—' };
}

/**
 * After a kill: waits for the failover, then for the client (`clientDone`: curl or wrk finished), then until
 * the bridge is protected again; fills the death record (times from the bridge and its log events).
 */
async function followDeath(
  ctx: Ctx, mode: DeathMode, k: { t0: number; t1: number; dead: string; survivor: string }, failoversBefore: number,
  countersBefore: Record<string, number>, clientDone: () => Promise<void>,
): Promise<{ death: DeathRecord | null; error?: string; rec?: FailoverRecord }> {
  const { l } = ctx;
  const p = l.bridge.pipeline;
  // Polled every 5 ms: the bridge shares this event loop, so fewer wake-ups disturb it less; the times come from the bridge.
  const failedOver = await waitFor(() => p.failover.failovers > failoversBefore, 5000, 5);
  await clientDone();
  if (!failedOver) {
    return { death: null, error: `no failover within 5 s after the ${mode} death of ${k.dead} (state ${p.state}, roles ${p.replicas.describe()})` };
  }
  const rec = p.failoverHistory[p.failoverHistory.length - 1];
  const okAgain = await waitProtected(l);
  const doneUs = monotonicUs();
  // Re-protection happens while the client still runs: its time is the bridge's 'reprotected' event.
  const reprotected = ctx.tap.entries.find((e) => e.event === 'reprotected' && e.atUs >= rec.promotedUs);
  const failoverEntry = ctx.tap.entries.find((e) => e.event === 'failover' && e.atUs >= rec.promotedUs);
  const busy = reprotected?.elu && failoverEntry?.elu ? performance.eventLoopUtilization(reprotected.elu, failoverEntry.elu).utilization : NaN;
  const death: DeathRecord = {
    dead: k.dead,
    survivor: k.survivor,
    killMs: (k.t1 - k.t0) / 1000,
    cause: rec.cause,
    detail: rec.detail,
    detectToPromoteMs: (rec.promotedUs - rec.detectedUs) / 1000,
    killToDetectMs: (rec.detectedUs - k.t0) / 1000,
    killToPromoteMs: (rec.promotedUs - k.t0) / 1000,
    flowsCarried: rec.flowsCarried,
    backlogFrames: rec.backlogFrames,
    discardedFrames: rec.discardedFrames,
    reprotectMs: okAgain && reprotected ? (reprotected.atUs - rec.promotedUs) / 1000 : NaN,
    reprotectLoopBusy: busy,
    counters: counterDiff(countersBefore, { ...p.failover } as unknown as Record<string, number>),
    log: ctx.tap.between(k.t0 - 50_000, doneUs, k.t0),
  };
  return { death, rec, ...(okAgain ? {} : { error: `not protected again within 20 s (state ${p.state}, roles ${p.replicas.describe()})` }) };
}

// ------------------------------------------------------------------ download runs

interface DownloadRun {
  index: number;
  round: number;
  mode: Mode;
  ok: boolean;
  failures: string[];
  /** Bytes curl had written when the death (or mark) came. */
  bytesAtMark: number;
  curl: { code: number | null; ms: number; status: number; bytes: number; error?: string };
  sha256Ok: boolean;
  capture: { captured: number; droppedByKernel: number };
  /** Wall-clock offset of the monotonic clock before and after the run, and the tightest bracket (µs). */
  clock: { offsetBeforeUs: number; driftUs: number; bracketUs: number };
  timing?: RunTiming;
  /** timing.firstSurvivorDataMs measured from kill()'s return instead of its start. */
  firstSurvivorDataAfterKillMs?: number;
  /**
   * The bridge's event loop: the longest pause between its 10 ms ticks that began after kill() returned
   * (within the window), and when it began (ms after the death). The kill() call itself is kill_call_ms.
   */
  loopPauseMs: number;
  loopPauseStartMs: number;
  death?: DeathRecord;
}

async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest('hex');
}

function fileSize(path: string): number {
  try {
    return statSync(path).size;
  } catch {
    return 0;
  }
}

async function downloadRun(ctx: Ctx, mode: Mode, index: number, round: number): Promise<DownloadRun> {
  const { o, l } = ctx;
  const lab = l.lab;
  const p = l.bridge.pipeline;
  const r: DownloadRun = {
    index, round, mode, ok: false, failures: [], bytesAtMark: 0,
    curl: { code: null, ms: 0, status: 0, bytes: 0 }, sha256Ok: false, capture: { captured: NaN, droppedByKernel: NaN },
    clock: { offsetBeforeUs: NaN, driftUs: NaN, bracketUs: NaN }, loopPauseMs: NaN, loopPauseStartMs: NaN,
  };
  if (!isProtected(l) && !(await waitProtected(l))) {
    r.failures.push(`not protected at the start (state ${p.state}, roles ${p.replicas.describe()})`);
    return r;
  }
  const pcap = join(lab.runDir, `download-${index}.pcap`);
  const out = join(lab.runDir, `download-${index}.bin`);
  // Kept captures hold both directions (the client's ACKs and windows explain stalls); measured runs only what the client received.
  const cap = await startHeaderCapture(o.keepCaptures
    ? { netns: lab.client.netns, iface: lab.client.nsIf, file: pcap, filter: `tcp and host ${lab.serviceIpv4} and port ${HTTP_PORT}`, direction: 'inout' }
    : { netns: lab.client.netns, iface: lab.client.nsIf, file: pcap, filter: `tcp and src host ${lab.serviceIpv4} and src port ${HTTP_PORT}` });
  const wallBefore = measureWallOffset();
  const wallBeforeAt = monotonicUs();
  const failoversBefore = p.failover.failovers;
  const countersBefore = { ...p.failover } as unknown as Record<string, number>;
  const url = `http://${lab.serviceIpv4}/${BIG_FILE}`;
  const curl = execInNetns(lab.client.netns, 'curl', ['-sS', '--fail', '--max-time', '60', '--limit-rate', o.rate, '-o', out, '-w', '%{http_code} %{size_download}', url], 70_000);
  await sleep(o.killAtMs);
  // The transfer must be in flight when the death comes.
  for (let i = 0; i < 50 && fileSize(out) === 0; i++) await sleep(20);
  r.bytesAtMark = fileSize(out);
  const k = await killActive(l, mode);
  let rec: FailoverRecord | undefined;
  let curlResult: Awaited<typeof curl> | undefined;
  const awaitCurl = async () => { curlResult ??= await curl; };
  if (mode !== 'none') {
    const f = await followDeath(ctx, mode, k, failoversBefore, countersBefore, awaitCurl);
    if (f.error) r.failures.push(f.error);
    if (f.death) r.death = f.death;
    rec = f.rec;
  }
  await awaitCurl();
  const c = curlResult!;
  const summary = await cap.stop();
  const wallAfter = measureWallOffset();
  const wallAfterAt = monotonicUs();
  if (mode === 'none' && p.failover.failovers !== failoversBefore) r.failures.push('a failover happened in a run with no death');

  const m = /^(\d+) (\d+)/.exec(c.stdout.trim());
  r.curl = { code: c.code, ms: c.ms, status: m ? Number(m[1]) : 0, bytes: m ? Number(m[2]) : 0, ...(c.code === 0 ? {} : { error: (c.stderr || c.stdout).trim().slice(-300) }) };
  if (c.code !== 0) r.failures.push(`curl exit ${c.code}${c.timedOut ? ' (timed out)' : ''}: ${r.curl.error}`);
  if (r.bytesAtMark === 0) r.failures.push('nothing downloaded yet at the death');
  if (r.bytesAtMark >= ctx.bigBytes) r.failures.push('the download was over before the death');
  if (existsSync(out)) {
    r.sha256Ok = fileSize(out) === ctx.bigBytes && (await sha256File(out)) === ctx.bigSha;
    rmSync(out, { force: true });
  }
  if (!r.sha256Ok) r.failures.push(`downloaded file differs from the source (sha256 or size: ${r.curl.bytes} of ${ctx.bigBytes} bytes)`);

  r.capture = { captured: summary.captured, droppedByKernel: summary.droppedByKernel };
  if (summary.exitCode !== 0) r.failures.push(`tcpdump exit ${summary.exitCode}: ${summary.stderr.slice(-200)}`);
  if (summary.droppedByKernel > 0) r.failures.push(`capture dropped ${summary.droppedByKernel} packets`);
  // The wall clock may be slewed (NTP): put the death on it by interpolating between the two measurements.
  const offsetAt = (us: number) => {
    const span = wallAfter.offsetUs - wallBefore.offsetUs;
    return wallBefore.offsetUs + span * Math.min(1, Math.max(0, (us - wallBeforeAt) / Math.max(1, wallAfterAt - wallBeforeAt)));
  };
  r.clock = { offsetBeforeUs: wallBefore.offsetUs, driftUs: wallAfter.offsetUs - wallBefore.offsetUs, bracketUs: Math.max(wallBefore.widthUs, wallAfter.widthUs) };
  try {
    const segs = readServerSegments(pcap, lab.serviceIpv4, HTTP_PORT);
    const markWallUs = k.t0 + offsetAt(k.t0);
    r.timing = analyzeRun(segs, markWallUs, { beforeUs: o.windowBeforeMs * 1000, afterUs: o.windowAfterMs * 1000 },
      mode === 'none' ? null : { promotedWallUs: rec ? rec.promotedUs + offsetAt(rec.promotedUs) : NaN });
    if (mode !== 'none') r.firstSurvivorDataAfterKillMs = r.timing.firstSurvivorDataMs - (k.t1 - k.t0) / 1000;
    if (r.timing.newDataSegments === 0) r.failures.push('no data segment in the capture');
    else if (mode !== 'none' && !Number.isFinite(r.timing.firstSurvivorDataMs)) r.failures.push('no data segment from the survivor in the capture');
  } catch (e) {
    r.failures.push(`capture unreadable: ${(e as Error).message}`);
  }
  const pause = ctx.ticks.longestGap(k.t1, k.t0 + o.windowAfterMs * 1000);
  if (pause) {
    r.loopPauseMs = pause.gapUs / 1000;
    r.loopPauseStartMs = (pause.startUs - k.t0) / 1000;
  }
  if (o.keepCaptures) {
    mkdirSync(o.keepCaptures, { recursive: true });
    copyFileSync(pcap, join(o.keepCaptures, `download-${index}-${mode}.pcap`));
    writeFileSync(join(o.keepCaptures, `download-${index}-${mode}.json`), JSON.stringify({ markWallUs: k.t0 + offsetAt(k.t0), killMs: (k.t1 - k.t0) / 1000, promotedWallUs: rec ? rec.promotedUs + offsetAt(rec.promotedUs) : null }));
  }
  rmSync(pcap, { force: true });
  await sleep(o.settleMs);
  r.ok = r.failures.length === 0;
  return r;
}

// ------------------------------------------------------------------ wrk runs

interface WrkRun {
  index: number;
  round: number;
  mode: Mode;
  ok: boolean;
  failures: string[];
  wrk?: WrkResult;
  death?: DeathRecord;
}

async function wrkRun(ctx: Ctx, mode: Mode, index: number, round: number): Promise<WrkRun> {
  const { o, l } = ctx;
  const p = l.bridge.pipeline;
  const r: WrkRun = { index, round, mode, ok: false, failures: [] };
  if (!isProtected(l) && !(await waitProtected(l))) {
    r.failures.push(`not protected at the start (state ${p.state}, roles ${p.replicas.describe()})`);
    return r;
  }
  const failoversBefore = p.failover.failovers;
  const countersBefore = { ...p.failover } as unknown as Record<string, number>;
  const url = `http://${l.lab.serviceIpv4}/${BENCH_OBJECTS.small.file}`;
  // Debugging only (--keep-captures): what the client sent and received, headers, both directions.
  const pcap = join(l.lab.runDir, `wrk-${index}.pcap`);
  const cap = o.keepCaptures
    ? await startHeaderCapture({ netns: l.lab.client.netns, iface: l.lab.client.nsIf, file: pcap, filter: `tcp and host ${l.lab.serviceIpv4} and port ${HTTP_PORT}`, direction: 'inout' })
    : null;
  const wrk = runWrk(l.lab.client.netns, url, o.wrk);
  await sleep((o.wrk.seconds * 1000) / 2);
  const k = await killActive(l, mode);
  let result: WrkResult | undefined;
  const awaitWrk = async () => { result ??= await wrk; };
  if (mode !== 'none') {
    const f = await followDeath(ctx, mode, k, failoversBefore, countersBefore, awaitWrk);
    if (f.error) r.failures.push(f.error);
    if (f.death) r.death = f.death;
  }
  await awaitWrk();
  r.wrk = result!;
  if (cap && o.keepCaptures) {
    const summary = await cap.stop();
    if (summary.droppedByKernel > 0) r.failures.push(`capture dropped ${summary.droppedByKernel} packets`);
    mkdirSync(o.keepCaptures, { recursive: true });
    copyFileSync(pcap, join(o.keepCaptures, `wrk-${index}-${mode}.pcap`));
    writeFileSync(join(o.keepCaptures, `wrk-${index}-${mode}.json`), JSON.stringify({ markWallUs: k.t0 + measureWallOffset().offsetUs, killMs: (k.t1 - k.t0) / 1000 }));
    rmSync(pcap, { force: true });
  }
  if (!r.wrk.ok) r.failures.push(`wrk: ${r.wrk.error}`);
  if (mode === 'none' && p.failover.failovers !== failoversBefore) r.failures.push('a failover happened in a run with no death');
  await sleep(o.settleMs);
  r.ok = r.failures.length === 0;
  return r;
}

// ------------------------------------------------------------------ cleanup on interruption

const current: { prefix: string | null; links: LinkWatcher | null } = { prefix: null, links: null };

/** Synchronous: usable from signal handlers and 'exit'. */
function emergencyTeardown(): void {
  if (current.links) {
    try { current.links.close(); } catch { /* already closed */ }
    current.links = null;
  }
  if (!current.prefix) return;
  const prefix = current.prefix;
  current.prefix = null;
  const report = teardownLab(prefix);
  if (report.failures.length) process.stderr.write(`teardown problems:\n${report.failures.join('\n')}\n`);
}

function installCleanupHandlers(): void {
  for (const [signal, code] of [['SIGINT', 130], ['SIGTERM', 143], ['SIGHUP', 129]] as const) {
    process.on(signal, () => {
      process.stderr.write(`\n${signal}: tearing the lab down\n`);
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

// ------------------------------------------------------------------ statistics and report

interface Stat { n: number; p50: number; min: number; max: number }

function stat(values: readonly number[]): Stat {
  const v = values.filter((x) => Number.isFinite(x));
  return { n: v.length, p50: percentile(v, 50), min: v.length ? Math.min(...v) : NaN, max: v.length ? Math.max(...v) : NaN };
}

interface Metric {
  key: string;
  label: string;
  digits: number;
  /** Per mode: the values of the runs that count (ok runs). */
  values: Record<Mode, number[]>;
}

function metricsOf(downloads: DownloadRun[], wrks: WrkRun[]): Metric[] {
  const dl = (f: (r: DownloadRun) => number | undefined, modes: readonly Mode[] = MODES): Record<Mode, number[]> => {
    const out = { none: [], abrupt: [], silent: [] } as Record<Mode, number[]>;
    for (const r of downloads) if (r.ok && modes.includes(r.mode)) out[r.mode].push(f(r) ?? NaN);
    return out;
  };
  const wk = (f: (r: WrkRun) => number | undefined): Record<Mode, number[]> => {
    const out = { none: [], abrupt: [], silent: [] } as Record<Mode, number[]>;
    for (const r of wrks) if (r.wrk) out[r.mode].push(f(r) ?? NaN);
    return out;
  };
  const deaths: Mode[] = ['abrupt', 'silent'];
  const errs = (w: WrkResult | undefined) => (w ? w.socketErrors.connect + w.socketErrors.read + w.socketErrors.write + w.socketErrors.timeout : NaN);
  return [
    { key: 'death_to_first_byte_ms', label: 'death → first survivor data at client ms', digits: 1, values: dl((r) => r.timing?.firstSurvivorDataMs, deaths) },
    { key: 'death_to_first_byte_after_kill_ms', label: '  same, from kill() return ms', digits: 1, values: dl((r) => r.firstSurvivorDataAfterKillMs, deaths) },
    { key: 'kill_call_ms', label: '  kill() call (ip commands) ms', digits: 1, values: dl((r) => r.death?.killMs, deaths) },
    { key: 'death_to_next_segment_ms', label: 'death/mark → next data segment (any) ms', digits: 2, values: dl((r) => r.timing?.nextDataMs) },
    { key: 'dead_replica_kib_after_death', label: 'dead replica KiB released after death', digits: 1, values: dl((r) => (r.timing ? r.timing.deadBytesAfterMark / 1024 : NaN), deaths) },
    { key: 'detect_to_promote_ms', label: 'bridge detection → promotion ms', digits: 1, values: dl((r) => r.death?.detectToPromoteMs, deaths) },
    { key: 'kill_to_promote_ms', label: 'kill() start → promotion ms', digits: 1, values: dl((r) => r.death?.killToPromoteMs, deaths) },
    { key: 'promote_to_first_byte_ms', label: 'promotion → first survivor segment ms', digits: 2, values: dl((r) => r.timing?.switchMinusPromotionMs, deaths) },
    { key: 'stall_ms', label: 'client stall: largest data gap in window ms', digits: 1, values: dl((r) => r.timing?.stallMs) },
    { key: 'gap_p99_ms', label: 'data gap p99 in window ms', digits: 2, values: dl((r) => r.timing?.gaps.p99Ms) },
    { key: 'loop_pause_ms', label: 'bridge loop: longest pause after kill() ms', digits: 1, values: dl((r) => r.loopPauseMs) },
    { key: 'reprotect_ms', label: 'promotion → re-protected ms', digits: 0, values: dl((r) => r.death?.reprotectMs, deaths) },
    { key: 'reprotect_loop_busy_pct', label: '  event loop busy meanwhile %', digits: 0, values: dl((r) => (r.death ? r.death.reprotectLoopBusy * 100 : NaN), deaths) },
    { key: 'wrk_rps', label: 'wrk req/s', digits: 0, values: wk((r) => (r.wrk?.ok ? r.wrk.requestsPerSecond : NaN)) },
    { key: 'wrk_p99_ms', label: 'wrk latency p99 ms', digits: 1, values: wk((r) => (r.wrk?.ok ? r.wrk.latencyP99Ms : NaN)) },
    { key: 'wrk_socket_errors', label: 'wrk socket errors', digits: 0, values: wk((r) => errs(r.wrk)) },
    { key: 'wrk_non2xx', label: 'wrk non-2xx/3xx', digits: 0, values: wk((r) => r.wrk?.non2xx3xx) },
    { key: 'wrk_detect_to_promote_ms', label: 'wrk: bridge detection → promotion ms', digits: 1, values: wk((r) => r.death?.detectToPromoteMs) },
  ];
}

function fmt(v: number, digits: number): string {
  return Number.isFinite(v) ? v.toFixed(digits) : '—';
}

/** A time relative to the death: +12.3 or −2.4. */
function rel(v: number, digits = 1): string {
  return Number.isFinite(v) ? `${v < 0 ? '−' : '+'}${Math.abs(v).toFixed(digits)}` : '—';
}

function formatStats(metrics: Metric[], counts: Record<Mode, number>): string[] {
  const header1 = ['', ...MODES.flatMap((m) => [`${LABELS[m]} (n=${counts[m]})`, '', ''])];
  const header2 = ['metric', ...MODES.flatMap(() => ['p50', 'min', 'max'])];
  const body = metrics.map((mt) => {
    const cells = [mt.label];
    for (const m of MODES) {
      const s = stat(mt.values[m]);
      if (s.n === 0) cells.push('—', '', '');
      else cells.push(fmt(s.p50, mt.digits), fmt(s.min, mt.digits), fmt(s.max, mt.digits));
    }
    return cells;
  });
  const all = [header2, ...body];
  const widths = header2.map((_, i) => Math.max(...all.map((c) => c[i].length)));
  // The mode label spans its three columns.
  const groupWidth = widths.slice(1, 4).reduce((a, b) => a + b, 0) + 4;
  const line1 = [''.padEnd(widths[0]), ...MODES.map((m, i) => header1[1 + i * 3].padStart(Math.max(groupWidth, header1[1 + i * 3].length)))].join('  ');
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ').trimEnd();
  return [line1.trimEnd(), line(header2), widths.map((w) => '-'.repeat(w)).join('  '), ...body.map(line)];
}

function deathLine(r: DownloadRun | WrkRun, what: string): string {
  const d = r.death;
  const t = 'timing' in r ? r.timing : undefined;
  const parts = [`#${r.index} ${what} ${r.mode}`];
  if (d) {
    parts.push(`${d.dead} → ${d.survivor}`, `kill ${d.killMs.toFixed(1)} ms`);
    if (t) parts.push(`first survivor data ${fmt(t.firstSurvivorDataMs, 1)} ms (${t.survivorBy}; ${(t.deadBytesAfterMark / 1024).toFixed(1)} KiB of the dead one after), stall ${fmt(t.stallMs, 1)} ms from ${rel(t.stallStartMs)}`);
    parts.push(`${d.cause} detected ${rel(d.killToDetectMs)} ms, promoted ${rel(d.killToPromoteMs)} ms (detect→promote ${d.detectToPromoteMs.toFixed(1)} ms), backlog ${d.backlogFrames}, discarded ${d.discardedFrames}`);
    const probes = d.counters.probesSent ? `, ${d.counters.probesSent} probe(s)` : '';
    const alarms = d.counters.silenceFalseAlarms ? `, ${d.counters.silenceFalseAlarms} silence false alarm(s)` : '';
    parts.push(`re-protected ${fmt(d.reprotectMs, 0)} ms (loop busy ${fmt(d.reprotectLoopBusy * 100, 0)}%)${probes}${alarms}`);
  } else if (t) {
    parts.push(`next data ${fmt(t.nextDataMs, 2)} ms, stall ${fmt(t.stallMs, 1)} ms from ${rel(t.stallStartMs)}`);
  }
  if ('loopPauseMs' in r && Number.isFinite(r.loopPauseMs)) parts.push(`bridge loop paused ${r.loopPauseMs.toFixed(1)} ms from ${rel(r.loopPauseStartMs)}`);
  if (!r.ok) parts.push(`FAILED: ${r.failures.join('; ')}`);
  return `  ${parts.join(', ')}`;
}

// ------------------------------------------------------------------ main

async function main(): Promise<number> {
  if (process.getuid?.() !== 0) {
    process.stderr.write('failover bench builds network namespaces: run it as root\n');
    return 1;
  }
  const o = parseArgs(process.argv.slice(2));
  current.prefix = o.prefix;
  installCleanupHandlers();
  teardownLab(o.prefix);

  const startedAt = new Date();
  const facts = hostFacts();
  const say = (s: string) => process.stderr.write(`${s}\n`);
  const t0 = Date.now();
  const tap = new EventTap();
  const downloads: DownloadRun[] = [];
  const wrks: WrkRun[] = [];
  let setupError: string | undefined;
  let setupMs = 0;
  let l: BridgedLab | null = null;
  let ticks: TickGaps | null = null;
  let clientRmem = '';
  const links = LinkWatcher.open();
  current.links = links;
  try {
    say(`failover bench: building the lab (prefix ${o.prefix})…`);
    l = await startBridgedLab({ prefix: o.prefix, links, log: tap.log });
    // A bounded client receive buffer bounds curl's read-ahead: with the default (up to 32 MiB) curl --limit-rate
    // reads megabytes at once and then sleeps for hundreds of ms with the window closed, which hides any failover stall.
    if (o.clientRmem > 0) runIn(l.lab.client.netns, 'sysctl', ['-qw', `net.ipv4.tcp_rmem=4096 ${Math.min(131072, o.clientRmem)} ${o.clientRmem}`]);
    clientRmem = runIn(l.lab.client.netns, 'sysctl', ['-n', 'net.ipv4.tcp_rmem']).trim().replace(/\s+/g, ' ');
    ticks = new TickGaps(l.bridge.pipeline);
    const bigBytes = o.fileMiB << 20;
    const big = fixedSeedBytes(bigBytes, BIG_SEED);
    const bigSha = createHash('sha256').update(big).digest('hex');
    serveOnBoth(l.servers, BIG_FILE, big);
    writeBenchObjects(l.servers);
    const ctx: Ctx = { o, l, tap, ticks, bigSha, bigBytes };
    const ns = l.lab.client.netns;
    for (const file of [BENCH_OBJECTS.small.file, BIG_FILE]) {
      const s = await fetchStatus(ns, `http://${l.lab.serviceIpv4}/${file}`);
      if (!s.ok) throw new Error(`sanity fetch of ${file} failed: ${s.error ?? `status ${s.status}`}`);
    }
    // Warm-up: JIT, nginx caches, the flow table; not reported.
    await runWrk(ns, `http://${l.lab.serviceIpv4}/${BENCH_OBJECTS.small.file}`, { ...o.wrk, seconds: 1 });
    await sleep(500);
    setupMs = Date.now() - t0;

    let index = 0;
    for (let round = 1; round <= o.runs; round++) {
      const modes = o.modes.filter((m) => m !== 'none' || (round - 1) % o.baselineEvery === 0);
      for (const mode of modes) {
        const r = await downloadRun(ctx, mode, ++index, round);
        downloads.push(r);
        say(deathLine(r, 'download'));
      }
    }
    for (let round = 1; round <= o.wrkRounds; round++) {
      for (const mode of MODES) {
        const r = await wrkRun(ctx, mode, ++index, round);
        wrks.push(r);
        const w = r.wrk;
        say(`${deathLine(r, 'wrk')}${w ? `; ${fmt(w.requestsPerSecond, 0)} req/s, p99 ${fmt(w.latencyP99Ms, 1)} ms, socket errors ${w.socketErrors.connect + w.socketErrors.read + w.socketErrors.write + w.socketErrors.timeout}, non-2xx ${w.non2xx3xx}` : ''}`);
      }
    }
  } catch (e) {
    setupError = (e as Error).stack ?? (e as Error).message;
    say(`failover bench: ${setupError}`);
  } finally {
    ticks?.stop();
    if (l) await l.stop();
    links.close();
    current.links = null;
    teardownLab(o.prefix);
  }
  const left = findLabLeftovers(o.prefix);
  const leftovers = left.namespaces.length > 0 || left.links.length > 0 || left.processes.length > 0;
  current.prefix = null;

  // ------------------------------------------------------------ report
  const factsAfter = hostFacts();
  const counts = { none: 0, abrupt: 0, silent: 0 } as Record<Mode, number>;
  for (const r of downloads) if (r.ok) counts[r.mode]++;
  const metrics = metricsOf(downloads, wrks);
  const wrkMetric = metrics.find((m) => m.key === 'wrk_rps');
  if (wrkMetric) wrkMetric.label = `wrk -t${o.wrk.threads} -c${o.wrk.connections} -d${o.wrk.seconds}s req/s (1 KiB)`;
  const failedDownloads = downloads.filter((r) => !r.ok);
  const failedWrks = wrks.filter((r) => !r.ok);
  const ok = !setupError && failedDownloads.length === 0 && failedWrks.length === 0 && !leftovers && downloads.length > 0;

  const out: string[] = [];
  out.push(`failover bench: what the client sees when the active replica dies (node ${process.version}, kernel ${facts.kernel}, ${facts.cpus} CPUs)`);
  out.push(`  one lab (prefix ${o.prefix}), roles alternate; downloads: curl --limit-rate ${o.rate} of ${o.fileMiB} MiB (client tcp_rmem ${clientRmem}), death ${o.killAtMs} ms after curl starts, stall window −${o.windowBeforeMs}/+${o.windowAfterMs} ms;`);
  out.push(`  wrk -t${o.wrk.threads} -c${o.wrk.connections} -d${o.wrk.seconds}s --latency on ${BENCH_OBJECTS.small.file}, death half way; loadavg before ${facts.loadavg.split(' ').slice(0, 3).join(' ')}, after ${factsAfter.loadavg.split(' ').slice(0, 3).join(' ')}`);
  out.push('  death time = monotonic clock just before kill() (asynchronous `ip`: the death lands inside the call), put on the capture\'s wall clock;');
  out.push('  survivor segments told apart by their IPv4 ID sequence; timings in ms; figures over the runs that passed (n per mode; wrk: all rounds).');
  out.push('');
  out.push(...formatStats(metrics, counts));
  out.push('');
  out.push(`  wrk rounds: ${o.wrkRounds} per mode (n=${wrks.filter((r) => r.mode === 'none').length}/${wrks.filter((r) => r.mode === 'abrupt').length}/${wrks.filter((r) => r.mode === 'silent').length}).`);
  const noneGaps = downloads.filter((r) => r.ok && r.mode === 'none' && r.timing).map((r) => r.timing!.gaps);
  if (noneGaps.length) {
    out.push(`  baseline (no death) data gaps in the window, per run: p50 ${fmt(stat(noneGaps.map((g) => g.p50Ms)).p50, 3)} ms, p99 ${fmt(stat(noneGaps.map((g) => g.p99Ms)).p50, 2)} ms, p99.9 ${fmt(stat(noneGaps.map((g) => g.p999Ms)).p50, 2)} ms, max ${fmt(stat(noneGaps.map((g) => g.maxMs)).p50, 1)} ms (medians over runs)`);
  }
  const surv = downloads.filter((r) => r.timing?.survivorBy);
  const byIpId = surv.filter((r) => r.timing!.survivorBy === 'ip-id').length;
  const afterSwitch = surv.reduce((n, r) => n + r.timing!.deadSegmentsAfterSwitch, 0);
  const unexplained = surv.reduce((n, r) => n + r.timing!.unexplainedAfterSwitch, 0);
  const early = surv.filter((r) => r.timing!.switchMinusPromotionMs < -0.05).length;
  out.push(`  survivor identified by IP ID in ${byIpId} of ${surv.length} death runs; dead-replica segments after the switch: ${afterSwitch}, in neither IP ID sequence: ${unexplained}; first survivor segment before the promotion (> 50 µs): ${early}`);
  out.push('');
  out.push('per run:');
  for (const r of downloads) out.push(deathLine(r, 'download'));
  for (const r of wrks) out.push(deathLine(r, 'wrk'));
  const warnCounts = Object.entries(tap.counts).filter(([k]) => !k.startsWith('info:')).map(([k, n]) => `${k} ${n}`).join(', ');
  out.push(`  bridge warnings over the whole run: ${warnCounts || 'none'}`);
  out.push('');
  out.push(`teardown: ${leftovers ? `LEFTOVERS ${JSON.stringify(left)}` : 'clean'}`);
  out.push(ok ? `failover bench: ok (${downloads.length} downloads, ${wrks.length} wrk runs)`
    : `failover bench: FAILED${setupError ? ` (setup: ${setupError.split('\n')[0]})` : ''}: ${failedDownloads.length} of ${downloads.length} downloads and ${failedWrks.length} of ${wrks.length} wrk runs failed`
      + `${failedDownloads.some((r) => !r.sha256Ok) ? ` (sha256 mismatch in run(s) ${failedDownloads.filter((r) => !r.sha256Ok).map((r) => `#${r.index}`).join(', ')})` : ''}`);
  process.stdout.write(`${out.join('\n')}\n`);

  const summary: Record<string, number> = {};
  for (const mt of metrics) {
    for (const m of MODES) {
      const s = stat(mt.values[m]);
      if (s.n === 0) continue;
      summary[`${mt.key}_p50_${m}`] = s.p50;
      summary[`${mt.key}_min_${m}`] = s.min;
      summary[`${mt.key}_max_${m}`] = s.max;
      summary[`${mt.key}_n_${m}`] = s.n;
    }
  }
  const outDir = join(__dirname, '..', '..', 'bench', 'results');
  mkdirSync(outDir, { recursive: true });
  const file = join(outDir, `failover-${startedAt.toISOString().replace(/[:.]/g, '-')}.json`);
  const json = JSON.stringify({
    bench: 'failover', startedAt: startedAt.toISOString(), totalMs: Date.now() - t0, setupMs, node: process.version, host: facts, hostAfter: factsAfter,
    options: o, clientTcpRmem: clientRmem, ok, setupError: setupError ?? null, summary,
    failed: [...failedDownloads, ...failedWrks].map((r) => ({ index: r.index, mode: r.mode, failures: r.failures })),
    bridgeLogCounts: tap.counts, teardown: left, downloads, wrk: wrks,
  }, (_k, v) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2);
  writeFileSync(file, json);
  process.stdout.write(`saved ${file} (run took ${((Date.now() - t0) / 1000).toFixed(0)} s)\n`);
  return ok ? 0 : 1;
}

main()
  .then((code) => {
    emergencyTeardown();
    process.exit(code);
  })
  .catch((e: Error) => {
    process.stderr.write(`failover bench: ${e.stack ?? e.message}\n`);
    emergencyTeardown();
    process.exit(1);
  });
