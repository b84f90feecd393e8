/**
 * COLO checkpoints (QEMU's `x-colo` migration mode) driven over QMP: the
 * steps the QEMU agent's `sync: colo` needs, and nothing about roles.
 *
 *   enterColo:  target -incoming defer + x-colo ─ migrate-incoming unix:…
 *               source x-colo, x-checkpoint-delay 1 h ─ stop ─ migrate ─► COLO state, both run
 *   checkpoint: migrate-set-parameters {x-checkpoint-delay} on the primary starts one at once
 *               (colo_checkpoint_delay_set); the primary's STOP … RESUME bracket it
 *   leaveColo:  x-colo-lost-heartbeat: that side stops replicating and runs on as a normal VM
 *
 * The gate: a `filter-buffer` on the secondary's netdev, on the queue of
 * what the guest sends (`queue=rx`: packets *to* the tap backend). While its
 * status is `on` every frame the guest sends is held inside QEMU; switching
 * it `off` sends them out in order. QEMU re-arms the filter's release timer
 * only at creation, so after the first `off` it holds for as long as it is
 * `on`; at creation the interval (1 h of guest time) bounds the hold. The
 * agent uses it to keep a secondary silent from a moment it knows to be
 * after the secondary stopped for a checkpoint until the bridge has fenced
 * what the secondary said before (see agents/qemu-agent.ts, the fence rule).
 *
 * A checkpoint's size: QEMU 7.2's query-migrate answers only the status in
 * COLO state; the patched build (qemu-colo/patches/0003) adds the RAM
 * counters, which go on counting across checkpoints, so one checkpoint's
 * size is the difference of the primary's counters before and after it.
 * Both QEMUs must be the patched build under TCG anyway (findColoQemu in
 * colo-probe.ts).
 */
import { QmpClient, QmpEvent } from './qmp';

export const COLO_GATE_ID = 'svm-colo-gate';
/** x-checkpoint-delay: long enough that only our triggers start checkpoints. */
export const COLO_CHECKPOINT_DELAY_MS = 3_600_000;
/** filter-buffer's interval is a uint32 of µs: 1 h fits. */
const GATE_INTERVAL_US = 3_600_000_000;
const MAX_BANDWIDTH = 10 * 1024 * 1024 * 1024;

export class ColoError extends Error {
  constructor(readonly step: string, message: string) {
    super(`COLO ${step}: ${message}`);
    this.name = 'ColoError';
  }
}

/** The `-object` that gates a secondary's output; held (status on) from the start. */
export function coloGateObject(netdev = 'net0'): string {
  return `filter-buffer,id=${COLO_GATE_ID},netdev=${netdev},queue=rx,interval=${GATE_INTERVAL_US},status=on`;
}

/** Holds (true) or releases (false, sending what was held) the secondary's output. */
export async function setColoGate(qmp: QmpClient, held: boolean, timeoutMs = 5000): Promise<void> {
  await qmp.execute('qom-set', { path: `/objects/${COLO_GATE_ID}`, property: 'status', value: held ? 'on' : 'off' }, { timeoutMs });
}

interface MigrateInfo {
  status: string;
  'error-desc'?: string;
  ram?: { transferred: number; normal: number; duplicate?: number };
}

/** A COLO primary's RAM counters since the migration that entered COLO. */
export interface ColoRamCounters {
  /** RAM bytes put on the migration stream: page data, page headers, end-of-section markers. */
  transferred: number;
  /** Pages sent in full. */
  normal: number;
  /** Zero pages (a header each, no data). */
  duplicate: number;
}

/** What one COLO checkpoint moved, as the difference of two readings of the counters. */
export interface ColoCheckpointSize {
  /** RAM bytes; the device state (a buffer sent after the RAM) is not counted, as in a normal migration. */
  bytes: number;
  pages: number;
  zeroPages: number;
}

/** The primary's RAM counters, or null when it is not in COLO state or does not report them there (a QEMU without patch 0003). */
export async function readColoRam(qmp: QmpClient, timeoutMs = 5000): Promise<ColoRamCounters | null> {
  const m = await qmp.execute<MigrateInfo>('query-migrate', undefined, { timeoutMs });
  if (m.status !== 'colo' || !m.ram) return null;
  return { transferred: m.ram.transferred, normal: m.ram.normal, duplicate: m.ram.duplicate ?? 0 };
}

/** The counters moved from `before` to `after` (null when either is unknown, or they went backwards: a new migration started between). */
export function coloCheckpointSize(before: ColoRamCounters | null, after: ColoRamCounters | null): ColoCheckpointSize | null {
  if (!before || !after) return null;
  const size = { bytes: after.transferred - before.transferred, pages: after.normal - before.normal, zeroPages: after.duplicate - before.duplicate };
  return size.bytes < 0 || size.pages < 0 || size.zeroPages < 0 ? null : size;
}

export interface ColoEntryReport {
  /** Source stopped → source running again in COLO state. */
  ms: number;
  /** RAM bytes and full pages of the first (full) copy, as last seen by query-migrate (0: not seen). */
  bytes: number;
  pages: number;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Makes `target` (started with `-incoming defer`) the COLO secondary of
 * `source`: a stop-and-copy of the whole state (the source is paused first:
 * MACHINE-NOTES' caveat about multi-pass migrations under TCG), then COLO
 * state, in which QEMU starts both. On failure the source runs again.
 */
export async function enterColo(source: QmpClient, target: QmpClient, uri: string, timeoutMs = 30_000): Promise<ColoEntryReport> {
  const colo = { capabilities: [{ capability: 'x-colo', state: true }] };
  await target.execute('migrate-set-capabilities', colo);
  await target.execute('migrate-set-parameters', { 'announce-rounds': 0 });
  await target.execute('migrate-incoming', { uri });
  const now = await source.execute<MigrateInfo>('query-migrate');
  if (now.status === 'colo') throw new ColoError('enter', 'the source is still in COLO state with another secondary (leaveColo first)');
  await source.execute('migrate-set-capabilities', { capabilities: [{ capability: 'multifd', state: false }, { capability: 'x-colo', state: true }] });
  await source.execute('migrate-set-parameters', { 'x-checkpoint-delay': COLO_CHECKPOINT_DELAY_MS, 'max-bandwidth': MAX_BANDWIDTH });
  const started = performance.now();
  const st = await source.execute<{ running: boolean }>('query-status');
  if (st.running) await source.execute('stop');
  let last: MigrateInfo = { status: 'setup' };
  try {
    await source.execute('migrate', { uri });
    for (;;) {
      const m = await source.execute<MigrateInfo>('query-migrate');
      if (m.ram) last = m;
      if (m.status === 'failed' || m.status === 'cancelled') throw new ColoError('enter', `migration ${m.status}: ${m['error-desc'] ?? 'no reason given'}`);
      if (m.status === 'colo') {
        const s = await source.execute<{ running: boolean; status: string }>('query-status');
        if (s.running) break;
      }
      if (performance.now() - started > timeoutMs) throw new ColoError('enter', `not in COLO state after ${timeoutMs} ms (migration ${m.status})`);
      await sleep(2);
    }
  } catch (e) {
    // A source left paused must serve again: end whatever COLO began, then run.
    await source.execute('x-colo-lost-heartbeat').catch(() => {});
    await source.execute('cont').catch(() => {});
    throw e;
  }
  return { ms: performance.now() - started, bytes: last.ram?.transferred ?? 0, pages: last.ram?.normal ?? 0 };
}

/** Ends COLO on this side (if it is in COLO state): it runs on as a normal VM. */
export async function leaveColo(qmp: QmpClient, timeoutMs = 5000): Promise<boolean> {
  const m = await qmp.execute<MigrateInfo>('query-migrate', undefined, { timeoutMs });
  if (m.status !== 'colo') return false;
  await qmp.execute('x-colo-lost-heartbeat', undefined, { timeoutMs });
  const until = performance.now() + timeoutMs;
  for (;;) {
    const now = await qmp.execute<MigrateInfo>('query-migrate', undefined, { timeoutMs });
    if (now.status !== 'colo') break;
    if (performance.now() > until) throw new ColoError('failover', `still in COLO state ${timeoutMs} ms after x-colo-lost-heartbeat`);
    await sleep(5);
  }
  return true;
}

/** What one checkpoint has got to: read by whoever handles a death in the middle of it. */
export interface ColoCheckpointProgress {
  /** The primary paused for it: the secondary had stopped before (it stops first, then answers). */
  primaryStopped: boolean;
  /** The secondary stopped for it, and then ran again: it has loaded the primary's new state. */
  secondaryStopped: boolean;
  secondaryResumed: boolean;
}

export interface ColoCheckpointReport {
  /** Trigger (the QMP call) → primary RESUME. */
  ms: number;
  /** Primary STOP → RESUME: the pause its guest sees. */
  pauseMs: number;
  /** What it moved, from the primary's counters read before the trigger and after RESUME; null: this QEMU does not say. */
  size: ColoCheckpointSize | null;
}

/**
 * One checkpoint on demand. `whenPrimaryStopped` runs as soon as the
 * primary's STOP arrives (the secondary is stopped then); the checkpoint is
 * over when the primary's RESUME has arrived and that call has finished.
 * Rejects (ColoError) on COLO_EXIT, a closed QMP connection, or after
 * `timeoutMs`; QEMU does not time a checkpoint out by itself. `progress`
 * follows the secondary only until this returns or rejects: a primary that
 * dies after sending its state rejects it at once, and the secondary's
 * RESUME (it loaded that state) comes later, so a caller that must know
 * goes on listening until the secondary's COLO_EXIT (the QEMU agent does). A counter
 * that cannot be read makes the size unknown, never the checkpoint fail.
 */
export async function coloCheckpoint(primary: QmpClient, secondary: QmpClient, o: {
  timeoutMs: number;
  whenPrimaryStopped: () => Promise<void>;
  progress?: ColoCheckpointProgress;
}): Promise<ColoCheckpointReport> {
  const progress = o.progress ?? { primaryStopped: false, secondaryStopped: false, secondaryResumed: false };
  const before = await readColoRam(primary, o.timeoutMs).catch(() => null);
  let stopAt = 0;
  const fence: { gate: Promise<void> | null } = { gate: null };
  let onPrimary: (ev: QmpEvent) => void = () => {};
  let onSecondary: (ev: QmpEvent) => void = () => {};
  let onClose: () => void = () => {};
  let timer: NodeJS.Timeout | undefined;
  const t0 = performance.now();
  const resumed = new Promise<number>((resolve, reject) => {
    onPrimary = (ev) => {
      if (ev.event === 'STOP' && !progress.primaryStopped) {
        progress.primaryStopped = true;
        stopAt = performance.now();
        fence.gate = o.whenPrimaryStopped();
        fence.gate.catch(() => {});
      } else if (ev.event === 'RESUME' && progress.primaryStopped) {
        resolve(performance.now());
      } else if (ev.event === 'COLO_EXIT') {
        reject(new ColoError('checkpoint', `the primary left COLO (${JSON.stringify(ev.data)})`));
      }
    };
    onSecondary = (ev) => {
      if (ev.event === 'STOP') progress.secondaryStopped = true;
      else if (ev.event === 'RESUME' && progress.secondaryStopped) progress.secondaryResumed = true;
    };
    onClose = () => reject(new ColoError('checkpoint', 'the primary\'s QMP connection closed'));
    timer = setTimeout(() => reject(new ColoError('checkpoint', `not finished within ${o.timeoutMs} ms (${progress.primaryStopped ? 'the primary paused and never resumed' : 'the primary never paused'})`)), o.timeoutMs);
  });
  // A primary that dies while the trigger is still in flight rejects `resumed` before anything awaits it,
  // and the trigger's own failure ends this call first: without a handler that rejection is unhandled, which
  // kills the process (the agent, or the bridge that runs the lab's agent). `await resumed` still sees it.
  resumed.catch(() => {});
  primary.on('event', onPrimary);
  primary.once('close', onClose);
  secondary.on('event', onSecondary);
  try {
    await primary.execute('migrate-set-parameters', { 'x-checkpoint-delay': COLO_CHECKPOINT_DELAY_MS }, { timeoutMs: o.timeoutMs });
    const end = await resumed;
    // The RAM was saved before the secondary could load it, so the counters are final by RESUME.
    const [after] = await Promise.all([readColoRam(primary, o.timeoutMs).catch(() => null), fence.gate]);
    return { ms: end - t0, pauseMs: end - stopAt, size: coloCheckpointSize(before, after) };
  } finally {
    clearTimeout(timer);
    primary.off('event', onPrimary);
    primary.off('close', onClose);
    secondary.off('event', onSecondary);
  }
}
