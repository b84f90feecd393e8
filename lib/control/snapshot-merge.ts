/**
 * mergeSnapshots: one BridgeSnapshot for a bridge whose data plane runs in
 * N worker threads (`run --workers N`), each a whole Bridge over one shard
 * of the flows, each with its own snapshot.
 *
 * In:  the workers' snapshots, worker 0's first; optionally the replication
 *      state the main thread knows for the whole bridge.
 * Out: one snapshot for status and /metrics, plus `workers`: one summary
 *      per worker (its state, flows, frames in, checkpoint epoch, heap).
 *
 * Every field of every type in a snapshot has its rule in a table below,
 * written beside it; a field without a rule does not compile. Counters and
 * levels add up: each worker counts its own flows and frames only. What is
 * not added (maxima, durations, timestamps, bucket bounds, what every
 * worker sees alike) is listed with its rule in NOT_ADDED, and a unit test
 * checks that every other number of a real snapshot doubles when the
 * snapshot is merged with itself.
 */
import type { FrameWaitSnapshot } from '../io/frame-wait';
import type { StallCausesSnapshot } from '../io/stall-causes';
import type { HistogramSnapshot } from '../replicate/duration-histogram';
import type { AgentSnapshot, BridgeSnapshot, CheckpointSnapshot, InlineSendsSnapshot, MemorySnapshot, PortRole, PortSnapshot, WorkerSummary } from './snapshot';
import type { ReplicationState } from '../replicate/replicator';

/**
 * The numeric fields that are not the sum of the workers' values, by path
 * ("*": any key or index; a path covers what is below it), with their rule.
 */
export const NOT_ADDED: Readonly<Record<string, string>> = {
  uptimeSeconds: 'max: the bridge is up since its oldest worker started',
  'ports.*.ring.frameSize': 'worker 0\'s: every worker\'s ring has slots of the same size',
  'ports.*.ring.large.frameSize': 'worker 0\'s, as above',
  'checkpoints.epoch': 'worker 0\'s: each worker numbers its own checkpoints',
  'checkpoints.done': 'max: a checkpoint is a barrier whose answer every worker counts',
  'checkpoints.failed': 'max, as checkpoints.done',
  'checkpoints.lastMs': 'max: the slowest worker\'s last checkpoint',
  'checkpoints.bytesMoved': 'max: the agent\'s answer, with what it moved, reaches every worker',
  'checkpoints.pagesMoved': 'max, as checkpoints.bytesMoved',
  'checkpoints.durationSeconds': 'the histogram of the worker that saw the most checkpoints: one observation per checkpoint, as checkpoints.done',
  'failover.count': 'max: every worker counts the same promotion of the VM (the others follow the one that decided)',
  'failover.refused': 'max, as failover.count',
  'failover.deferred': 'max, as failover.count',
  'failover.backupsLost': 'max, as failover.count: one backup VM for every worker',
  'failover.waiting': 'worker 0\'s, or the first worker\'s that waits',
  'failover.last.detectionToPromotionMs': 'max: until the last worker promoted',
  'failover.last.agoSeconds': 'min: since the last worker promoted',
  'memory.rssBytes': 'worker 0\'s: one process, read from any thread',
  'frameWait.seconds.buckets.*.0': 'bucket bounds (counts add)',
  'frameWait.maxMs': 'max: the worst worker\'s',
  'frameWait.maxLast10sMs': 'max: the worst worker\'s',
  'frameWait.maxLast60sMs': 'max: the worst worker\'s',
  'frameWait.perSecond': 'each second, the worst worker\'s wait in it',
  'frameWait.stalls.recent': 'a list: the latest stalls of any worker, as many as one worker keeps',
  'holdWait.seconds.buckets.*.0': 'bucket bounds (counts add)',
  'holdWait.maxMs': 'max: the worst worker\'s',
  'holdWait.maxLast10sMs': 'max: the worst worker\'s',
  'holdWait.maxLast60sMs': 'max: the worst worker\'s',
  'holdWait.perSecond': 'each second, the worst worker\'s hold in it',
  dataPlane: 'worker 0\'s: its thread id and policy; every worker runs with the same --realtime',
  'inlineSends.maxFps': 'worker 0\'s: one option for every worker',
};

/** How each field of T is made from the workers' values (undefined: the field is left out). */
type Rules<T> = { readonly [K in keyof T]-?: (xs: readonly T[]) => T[K] | undefined };

function mergeBy<T extends object>(xs: readonly T[], rules: Rules<T>): T {
  const out: Partial<T> = {};
  for (const key of Object.keys(rules) as (keyof T)[]) {
    const v = rules[key](xs);
    if (v !== undefined) out[key] = v;
  }
  return out as T;
}

/** The rules applied to the workers that have the (optional) part; undefined when none has it. */
function mergePresent<T extends object>(parts: readonly (T | undefined)[], rules: Rules<T>): T | undefined {
  const present = parts.filter((p): p is T => p !== undefined);
  return present.length ? mergeBy(present, rules) : undefined;
}

function numbers<T>(xs: readonly T[], pick: (x: T) => number | undefined): number[] {
  return xs.map(pick).filter((v): v is number => v !== undefined);
}

const add = <T>(pick: (x: T) => number | undefined) => (xs: readonly T[]): number | undefined => {
  const vs = numbers(xs, pick);
  return vs.length ? vs.reduce((a, b) => a + b, 0) : undefined;
};
const max = <T>(pick: (x: T) => number | undefined) => (xs: readonly T[]): number | undefined => {
  const vs = numbers(xs, pick);
  return vs.length ? Math.max(...vs) : undefined;
};
const min = <T>(pick: (x: T) => number | undefined) => (xs: readonly T[]): number | undefined => {
  const vs = numbers(xs, pick);
  return vs.length ? Math.min(...vs) : undefined;
};
/** A copy of a part of a snapshot (JSON-safe: numbers, strings, booleans, arrays and plain objects). */
function copy<V>(v: V): V {
  if (Array.isArray(v)) return v.map(copy) as V;
  if (v !== null && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, copy(x)])) as V;
  return v;
}

/** Worker 0's value, or the first worker's that has one; a copy, so the merge shares nothing with its inputs. */
const first = <T, V>(pick: (x: T) => V | undefined) => (xs: readonly T[]): V | undefined => {
  for (const x of xs) {
    const v = pick(x);
    if (v !== undefined) return copy(v);
  }
  return undefined;
};

/** Counters by name: every name any worker has, the values added. */
function addByName<K extends string>(records: readonly (Partial<Record<K, number>> | undefined)[]): Record<K, number> {
  const out = {} as Record<K, number>;
  for (const r of records) {
    for (const [k, v] of Object.entries(r ?? {}) as [K, number][]) out[k] = (out[k] ?? 0) + v;
  }
  return out;
}

function addTables<K extends string>(tables: readonly Record<string, Partial<Record<K, number>>>[]): Record<string, Record<K, number>> {
  const out: Record<string, Record<K, number>> = {};
  for (const name of new Set(tables.flatMap((t) => Object.keys(t)))) out[name] = addByName(tables.map((t) => t[name]));
  return out;
}

/**
 * Counts per bucket, sums and counts added. Histograms whose bounds are not
 * the first one's cannot be added bucket by bucket and are left out (every
 * worker makes its histograms from the same bounds).
 */
function addHistograms(hs: readonly (HistogramSnapshot | undefined)[]): HistogramSnapshot | undefined {
  const present = hs.filter((h): h is HistogramSnapshot => h !== undefined);
  if (!present.length) return undefined;
  const bounds = present[0].buckets.map(([le]) => le);
  const alike = present.filter((h) => h.buckets.length === bounds.length && h.buckets.every(([le], i) => le === bounds[i]));
  return {
    buckets: bounds.map((le, i): [number, number] => [le, alike.reduce((n, h) => n + h.buckets[i][1], 0)]),
    sum: alike.reduce((n, h) => n + h.sum, 0),
    count: alike.reduce((n, h) => n + h.count, 0),
  };
}

type Ring = NonNullable<PortSnapshot['ring']>;
type LargeRing = NonNullable<Ring['large']>;

const LARGE_RING_RULES: Rules<LargeRing> = {
  frames: add((r) => r.frames), // each worker has its own rings
  frameSize: first((r) => r.frameSize),
  fanout: first((r) => r.fanout),
};

const RING_RULES: Rules<Ring> = {
  frames: add((r) => r.frames), // each worker has its own rings: the slots and kernel memory of all of them
  frameSize: first((r) => r.frameSize),
  bytes: add((r) => r.bytes),
  large: (rs) => mergePresent(rs.map((r) => r.large), LARGE_RING_RULES),
};

const PORT_RULES: Rules<PortSnapshot> = {
  role: first((p) => p.role),
  // Worker 0's; a worker that reads the role on another interface says so in its WorkerSummary.portNames.
  name: first((p) => p.name),
  rxFrames: add((p) => p.rxFrames),
  rxBytes: add((p) => p.rxBytes),
  txFrames: add((p) => p.txFrames),
  txBytes: add((p) => p.txBytes),
  rxDrops: add((p) => p.rxDrops),
  txErrors: add((p) => p.txErrors),
  ring: (ps) => mergePresent(ps.map((p) => p.ring), RING_RULES),
  rxLargeFrames: add((p) => p.rxLargeFrames),
};

/** One port per role, in worker 0's order: every worker reads each role's interface through its own socket. */
function mergePorts(snaps: readonly BridgeSnapshot[]): PortSnapshot[] {
  const roles = [...new Set(snaps.flatMap((s) => s.ports.map((p) => p.role)))];
  return roles.map((role) => mergeBy(snaps.flatMap((s) => s.ports.filter((p) => p.role === role)), PORT_RULES));
}

/** The histogram with the most observations (worker 0's on a tie). */
function mostObserved(hs: readonly (HistogramSnapshot | undefined)[]): HistogramSnapshot | undefined {
  let most: HistogramSnapshot | undefined;
  for (const h of hs) if (h && (!most || h.count > most.count)) most = h;
  return most && copy(most);
}

/**
 * A checkpoint is a barrier (dataplane/coordinator.ts): the worker whose
 * trigger fired asks (requested), every other worker joins, the agent is
 * asked once, and its answer, with what it moved, reaches every worker. So
 * the outcome of one checkpoint is in every worker's counts: the max of
 * them, not the sum, is the bridge's.
 */
const CHECKPOINT_RULES: Rules<CheckpointSnapshot> = {
  epoch: first((c) => c.epoch), // each worker numbers its own checkpoints
  // A join is not a request, but workers that ask at once each count theirs: the coordinator's count, when given, wins.
  requested: (cs) => addByName(cs.map((c) => c.requested)),
  done: max((c) => c.done),
  failed: max((c) => c.failed),
  coalesced: add((c) => c.coalesced), // triggers: each worker's own
  pending: (cs) => cs.some((c) => c.pending),
  lastMs: max((c) => c.lastMs), // the slowest worker's
  bytesMoved: max((c) => c.bytesMoved),
  pagesMoved: max((c) => c.pagesMoved),
  durationSeconds: (cs) => mostObserved(cs.map((c) => c.durationSeconds)), // one observation per checkpoint, as `done`
};

/**
 * Each worker's link is a relay through the main thread's one connection to
 * the agent (dataplane/relay-agent-link.ts): its counts are what it passed
 * through the coordinator, and they add up. The main thread may put the
 * connection's own snapshot over the merged one.
 */
const AGENT_RULES: Rules<AgentSnapshot> = {
  connected: first((a) => a.connected), // worker 0's: the coordinator relays the agent's hello to every worker
  name: first((a) => a.name),
  messagesIn: add((a) => a.messagesIn),
  messagesOut: add((a) => a.messagesOut),
  protocolErrors: add((a) => a.protocolErrors),
  heartbeatTimeouts: add((a) => a.heartbeatTimeouts),
};

type Failover = BridgeSnapshot['failover'];
type LastFailover = NonNullable<Failover['last']>;

/** The workers' records of the last failover: one promotion of the VM, which each worker made for its own flows. */
const LAST_FAILOVER_RULES: Rules<LastFailover> = {
  cause: first((l) => l.cause),
  detail: first((l) => l.detail),
  survivor: first((l) => l.survivor),
  detectionToPromotionMs: max((l) => l.detectionToPromotionMs), // until the last worker promoted
  agoSeconds: min((l) => l.agoSeconds), // since the last worker promoted
  flowsCarried: add((l) => l.flowsCarried),
  backlogFrames: add((l) => l.backlogFrames),
  discardedFrames: add((l) => l.discardedFrames),
};

const FAILOVER_RULES: Rules<Failover> = {
  // Every worker counts the same promotion (a peer follows the worker that decided): the max, not the sum,
  // so that one failover is one; the max rather than worker 0's shows a worker that is ahead of worker 0.
  count: max((f) => f.count),
  refused: max((f) => f.refused),
  deferred: max((f) => f.deferred),
  waiting: first((f) => f.waiting),
  backupsLost: max((f) => f.backupsLost),
  // Flows are a worker's own.
  flowsCarried: add((f) => f.flowsCarried),
  flowsLost: add((f) => f.flowsLost),
  flowsUnprotected: add((f) => f.flowsUnprotected),
  last: (fs) => mergePresent(fs.map((f) => f.last), LAST_FAILOVER_RULES),
};

const MEMORY_RULES: Rules<MemorySnapshot> = {
  rssBytes: first((m) => m.rssBytes), // one process: every thread reads the same resident set
  heapUsedBytes: add((m) => m.heapUsedBytes), // each worker thread has its own heap
  heapSizeBytes: add((m) => m.heapSizeBytes),
  externalBytes: add((m) => m.externalBytes),
};

/** The stalls each worker kept, newest last, as many as the worker that keeps the most. */
function latestStalls(ss: readonly StallCausesSnapshot[]): StallCausesSnapshot['recent'] {
  const all = ss.flatMap((s) => s.recent).sort((a, b) => a.atUnixMs - b.atUnixMs);
  return copy(all.slice(all.length - Math.max(...ss.map((s) => s.recent.length))));
}

const STALL_RULES: Rules<StallCausesSnapshot> = {
  byCause: (ss) => addByName(ss.map((s) => s.byCause)),
  recent: latestStalls,
};

/** Each second, the worst worker's wait in it. */
function worstPerSecond(ws: readonly FrameWaitSnapshot[]): [number, number][] {
  const bySecond = new Map<number, number>();
  for (const w of ws) for (const [second, ms] of w.perSecond) bySecond.set(second, Math.max(ms, bySecond.get(second) ?? 0));
  return [...bySecond].sort((a, b) => a[0] - b[0]);
}

/** frameWait and holdWait: the histogram and stall counts add; the maxima are the worst worker's. */
const WAIT_RULES: Rules<FrameWaitSnapshot> = {
  seconds: (ws) => addHistograms(ws.map((w) => w.seconds)),
  maxMs: max((w) => w.maxMs),
  maxLast10sMs: max((w) => w.maxLast10sMs),
  maxLast60sMs: max((w) => w.maxLast60sMs),
  over10ms: add((w) => w.over10ms),
  perSecond: worstPerSecond,
  stalls: (ws) => mergePresent(ws.map((w) => w.stalls), STALL_RULES),
};

const INLINE_SENDS_RULES: Rules<InlineSendsSnapshot> = {
  on: (gs) => gs.every((g) => g.on), // off while any worker's gate is closed
  maxFps: first((g) => g.maxFps),
  switches: add((g) => g.switches),
};

/** The most serious state any worker is in, most serious first. */
const STATE_PRECEDENCE: readonly ReplicationState[] = ['FAILED_OVER', 'DEGRADED', 'CHECKPOINTING', 'COMPARING'];

function worstState(snaps: readonly BridgeSnapshot[]): ReplicationState {
  const states = new Set(snaps.map((s) => s.state));
  return STATE_PRECEDENCE.find((state) => states.has(state)) ?? snaps[0].state;
}

/** One worker in a line: what tells whether the shards are balanced and in step. */
function workerSummary(s: BridgeSnapshot, index: number, worker0: BridgeSnapshot): WorkerSummary {
  const portNames: Partial<Record<PortRole, string>> = {};
  for (const p of s.ports) {
    const ours = worker0.ports.find((q) => q.role === p.role);
    if (ours && ours.name !== p.name) portNames[p.role] = p.name;
  }
  return {
    index,
    state: s.state,
    flowsActive: s.flows.active,
    framesIn: { client: s.stages.ingress?.frames ?? 0, primary: s.stages.compare?.primary_frames ?? 0, backup: s.stages.compare?.backup_frames ?? 0 },
    checkpointEpoch: s.checkpoints.epoch,
    ...(s.memory ? { heapUsedBytes: s.memory.heapUsedBytes } : {}),
    ...(Object.keys(portNames).length ? { portNames } : {}),
  };
}

const BRIDGE_RULES: Rules<BridgeSnapshot> = {
  name: first((s) => s.name),
  uptimeSeconds: max((s) => s.uptimeSeconds), // since the oldest worker started
  state: worstState,
  ports: mergePorts,
  flows: (ss) => addByName(ss.map((s) => s.flows)), // active is a level, created and evicted counters: each worker's own flows
  bytesMatched: add((s) => s.bytesMatched),
  bytesReleased: add((s) => s.bytesReleased),
  mismatches: add((s) => s.mismatches),
  mismatchesByKind: (ss) => addByName(ss.map((s) => s.mismatchesByKind)),
  checkpoints: (ss) => mergeBy(ss.map((s) => s.checkpoints), CHECKPOINT_RULES),
  heldOutput: (ss) => addByName(ss.map((s) => s.heldOutput)), // levels: each worker holds its own flows' output
  ingress: (ss) => addByName(ss.map((s) => s.ingress)),
  malformed: (ss) => addTables(ss.map((s) => s.malformed)),
  policyActions: (ss) => addByName(ss.map((s) => s.policyActions)),
  agent: (ss) => mergeBy(ss.map((s) => s.agent), AGENT_RULES),
  replicas: first((s) => s.replicas), // one VM per slot: alike in every worker after the coordinator's barriers
  failover: (ss) => mergeBy(ss.map((s) => s.failover), FAILOVER_RULES),
  // Every stage counter and level is a worker's own events: a barrier checkpoint or a failover is one in each
  // worker's replicator or failover stage, so replicate/checkpoints_done is a multiple of checkpoints.done.
  stages: (ss) => addTables(ss.map((s) => s.stages)),
  components: (ss) => addTables(ss.map((s) => s.components)),
  memory: (ss) => mergePresent(ss.map((s) => s.memory), MEMORY_RULES),
  frameWait: (ss) => mergePresent(ss.map((s) => s.frameWait), WAIT_RULES),
  holdWait: (ss) => mergePresent(ss.map((s) => s.holdWait), WAIT_RULES),
  dataPlane: first((s) => s.dataPlane),
  inlineSends: (ss) => mergePresent(ss.map((s) => s.inlineSends), INLINE_SENDS_RULES),
  workers: (ss) => ss.map((s, i) => workerSummary(s, i, ss[0])),
};

/**
 * The whole bridge's snapshot from its workers' (`snaps[0]` is worker 0's;
 * at least one). `over.state`: the replication state to show, when the main
 * thread knows it for the whole bridge; otherwise the most serious of the
 * workers' (FAILED_OVER, then DEGRADED, CHECKPOINTING, COMPARING).
 * `over.requested`: the checkpoints asked of the agent, by reason, when the
 * main thread counted them (one per barrier: dataplane/coordinator.ts);
 * otherwise the workers' requests added. Always carries `workers`, one
 * summary per input; one snapshot in gives it back equal otherwise.
 */
export function mergeSnapshots(snaps: readonly BridgeSnapshot[], over: { state?: ReplicationState; requested?: CheckpointSnapshot['requested'] } = {}): BridgeSnapshot {
  if (snaps.length === 0) throw new Error('mergeSnapshots: no worker snapshot to merge');
  const merged = mergeBy(snaps, BRIDGE_RULES);
  if (over.state !== undefined) merged.state = over.state;
  if (over.requested !== undefined) merged.checkpoints.requested = { ...over.requested };
  return merged;
}
