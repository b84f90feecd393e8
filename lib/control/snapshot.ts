/**
 * BridgeSnapshot: every counter of a running bridge as one plain object, the
 * single source for `/metrics`, `shadowvm status` and the control socket's
 * `status` reply.
 *
 * In:  the pipeline, the ports' stats, the agent link's counters.
 * Out: a JSON-safe object (numbers and strings only), taken in one go.
 */
import type { DataPlaneScheduling } from '../dataplane/scheduling';
import type { FrameWaitSnapshot } from '../io/frame-wait';
import type { PortStats } from '../io/port';
import { CHECKPOINT_REASONS, CheckpointReason, ReplicationState } from '../replicate/replicator';
import type { HistogramSnapshot } from '../replicate/duration-histogram';
import { MISMATCH_KINDS, MismatchKind, mismatchCounter } from '../compare/tcp-stream';
import type { ShadowPipeline } from '../pipeline/pipeline';

export type PortRole = 'uplink' | 'primary' | 'backup';
export const PORT_ROLES: readonly PortRole[] = ['uplink', 'primary', 'backup'];
export const REPLICATION_STATES: readonly ReplicationState[] = ['COMPARING', 'CHECKPOINTING', 'DEGRADED', 'FAILED_OVER'];

export interface PortSnapshot extends PortStats {
  role: PortRole;
  /** Interface or capture name. */
  name: string;
  /** Its receive ring (AF_PACKET): slots, their size, and the kernel memory it holds resident in this process. */
  ring?: { frames: number; frameSize: number; bytes: number; large?: { frames: number; frameSize: number; fanout?: boolean } };
  /** Split rings: how many of rxFrames came through the ring for GSO super-frames. */
  rxLargeFrames?: number;
}

export type FrameSide = 'client' | 'primary' | 'backup';

export interface CheckpointSnapshot {
  /** Epoch of the last checkpoint asked for. */
  epoch: number;
  requested: Record<CheckpointReason, number>;
  done: number;
  failed: number;
  /** Triggers folded into an outstanding checkpoint. */
  coalesced: number;
  /** An answer is awaited. */
  pending: boolean;
  /** Duration of the last successful checkpoint. */
  lastMs?: number;
  /** State the agent said its checkpoints moved since start: bytes, and memory pages where it counts them. */
  bytesMoved?: number;
  pagesMoved?: number;
  /** Durations of the successful checkpoints since start, in seconds. */
  durationSeconds?: HistogramSnapshot;
}

export interface AgentSnapshot {
  connected: boolean;
  name?: string;
  messagesIn: number;
  messagesOut: number;
  protocolErrors: number;
  heartbeatTimeouts: number;
}

export interface BridgeSnapshot {
  /** The bridge's name (the one in its socket paths). */
  name: string;
  uptimeSeconds: number;
  state: ReplicationState;
  ports: PortSnapshot[];
  flows: { active: number; created: number; evicted: number };
  /** Bytes both replicas said alike. */
  bytesMatched: number;
  /** Payload bytes of the primary released to the client after comparison. */
  bytesReleased: number;
  mismatches: number;
  /** The same mismatches by what differed (data, syn, syn-options, fin, rst, datagram). */
  mismatchesByKind: Record<MismatchKind, number>;
  checkpoints: CheckpointSnapshot;
  /** Primary output waiting for the backup now. */
  heldOutput: { frames: number; bytes: number };
  /** Client frames held during checkpoints (since start), and those dropped because the hold was full. */
  ingress: { heldFrames: number; holdDropped: number };
  /** Malformed frames by reason, then by the side that sent them. */
  malformed: Record<string, Record<FrameSide, number>>;
  /** Policy actions by "class/action", e.g. "arp/forward-primary". */
  policyActions: Record<string, number>;
  agent: AgentSnapshot;
  /** Each VM port and the role of the replica behind it now. */
  replicas: { port: string; role: string }[];
  failover: {
    count: number;
    refused: number;
    /** Failovers that waited for the answer to a checkpoint in flight (failover.checkpointWaitMs). */
    deferred: number;
    /** A failover waiting now: its cause and the checkpoint whose answer it waits for. */
    waiting?: { cause: string; epoch: number };
    backupsLost: number;
    flowsCarried: number;
    flowsLost: number;
    flowsUnprotected: number;
    /** The last failover, if any. */
    last?: { cause: string; detail: string; survivor: string; detectionToPromotionMs: number; agoSeconds: number; flowsCarried: number; backlogFrames: number; discardedFrames: number };
  };
  /** Every stage's counters, one shape (stage → counter → value). */
  stages: Record<string, Record<string, number>>;
  /** The control plane's counters in the same shape: agent link, control socket, metrics server. */
  components: Record<string, Record<string, number>>;
  /** Memory: the process's resident set, and the heap of the thread that runs the pipeline (the data plane). */
  memory?: MemorySnapshot;
  /** How long frames waited for the data plane (AF_PACKET ports only): one observation per breath. */
  frameWait?: FrameWaitSnapshot;
  /** How long the primary's output was held before release (for the backup's answer, or a checkpoint): one observation per release step. */
  holdWait?: FrameWaitSnapshot;
  /** The data-plane thread's name, id and scheduling policy (run's --realtime). */
  dataPlane?: DataPlaneScheduling;
  /** The rate gate of inline sends (run's --send-inline-max-fps), where the ports have a send thread. */
  inlineSends?: InlineSendsSnapshot;
  /** A data plane of several worker threads (run --workers): each one's summary, worker 0 first (mergeSnapshots). Absent for one data plane. */
  workers?: WorkerSummary[];
}

/** One data-plane worker of a bridge whose snapshot is the sum of its workers' (lib/control/snapshot-merge.ts). */
export interface WorkerSummary {
  index: number;
  /** This worker's own replication state. */
  state: ReplicationState;
  flowsActive: number;
  /** Frames its pipeline took in, by the side that sent them (its shard, and for worker 0 what no shard owns). */
  framesIn: Record<FrameSide, number>;
  /** Epoch of the last checkpoint this worker asked for (each worker numbers its own). */
  checkpointEpoch: number;
  /** Its thread's JavaScript heap in use. */
  heapUsedBytes?: number;
  /** Roles this worker reads on another interface than worker 0 does (a port move that has not reached every worker yet): the snapshot's ports carry worker 0's names. */
  portNames?: Partial<Record<PortRole, string>>;
}

export interface InlineSendsSnapshot {
  /** Whether a small flush may now go out from the data plane itself. */
  on: boolean;
  /** The gate closes above this many frames a second taken in. */
  maxFps: number;
  /** How many times it opened or closed. */
  switches: number;
}

export interface MemorySnapshot {
  /** Resident memory of the whole process (every thread), bytes. */
  rssBytes: number;
  /** The data plane's JavaScript heap: in use, and its size (what V8 holds, garbage included). */
  heapUsedBytes: number;
  heapSizeBytes: number;
  /** Memory held outside that heap for its objects (packet copies, buffers), bytes. */
  externalBytes: number;
}

/** The memory figures as seen from the calling thread (its heap; the process's resident set). */
export function memoryNow(): MemorySnapshot {
  const m = process.memoryUsage();
  return { rssBytes: m.rss, heapUsedBytes: m.heapUsed, heapSizeBytes: m.heapTotal, externalBytes: m.external };
}

export function emptyAgentSnapshot(): AgentSnapshot {
  return { connected: false, messagesIn: 0, messagesOut: 0, protocolErrors: 0, heartbeatTimeouts: 0 };
}

/** What `snapshotOf` needs besides the pipeline. */
export interface SnapshotSources {
  name: string;
  startedMs: number;
  nowMs: number;
  /** The pipeline clock now (µs), to age the last failover. */
  nowUs?: number;
  ports: PortSnapshot[];
  agent: AgentSnapshot;
  components?: Record<string, Record<string, number>>;
  frameWait?: FrameWaitSnapshot;
  dataPlane?: DataPlaneScheduling;
  inlineSends?: InlineSendsSnapshot;
}

/**
 * Reads a pipeline into a snapshot: every number comes from the stages'
 * counter reports (`stageCounters`), plus the replicator's state and history
 * (what it is doing, not what it counted). No pass over the flows.
 */
export function snapshotOf(pipeline: ShadowPipeline, src: SnapshotSources): BridgeSnapshot {
  const st = pipeline.stageCounters();
  const n = (stage: string, counter: string): number => st[stage]?.[counter] ?? 0;
  const rep = pipeline.replicator;
  let lastMs: number | undefined;
  for (let i = rep.history.length - 1; i >= 0; i--) {
    if (rep.history[i].outcome === 'done' && rep.history[i].kind === 'checkpoint') {
      lastMs = rep.history[i].ms;
      break;
    }
  }
  const requested = {} as Record<CheckpointReason, number>;
  for (const reason of CHECKPOINT_REASONS) requested[reason] = n('replicate', `requested_${reason}`);
  const malformed: BridgeSnapshot['malformed'] = {};
  for (const [reason, c] of Object.entries(pipeline.malformed)) malformed[reason] = { client: c.client, primary: c.primary, backup: c.backup };
  return {
    name: src.name,
    uptimeSeconds: Math.max(0, (src.nowMs - src.startedMs) / 1000),
    state: rep.state,
    ports: src.ports.map((p) => ({ ...p })),
    flows: { active: n('flow', 'active'), created: n('flow', 'created'), evicted: n('flow', 'evicted') },
    bytesMatched: n('compare', 'matched_bytes'),
    bytesReleased: n('release', 'released_payload_bytes'),
    mismatches: n('compare', 'mismatches'),
    mismatchesByKind: Object.fromEntries(MISMATCH_KINDS.map((k) => [k, n('compare', mismatchCounter(k))])) as Record<MismatchKind, number>,
    checkpoints: {
      epoch: rep.epoch, requested, done: n('replicate', 'checkpoints_done'), failed: n('replicate', 'checkpoints_failed'),
      coalesced: n('replicate', 'checkpoints_coalesced'), pending: rep.pending !== null, lastMs,
      bytesMoved: n('replicate', 'checkpoint_bytes_moved'), pagesMoved: n('replicate', 'checkpoint_pages_moved'),
      durationSeconds: rep.durations.snapshot(),
    },
    heldOutput: { frames: n('release', 'held_frames'), bytes: n('release', 'held_bytes') },
    ingress: { heldFrames: n('ingress', 'held'), holdDropped: n('ingress', 'hold_dropped') },
    malformed,
    policyActions: { ...pipeline.policyActions },
    agent: { ...src.agent },
    replicas: pipeline.replicas.slots.map((slot) => ({ port: slot.name, role: slot.role })),
    failover: failoverSnapshot(pipeline, st, src.nowUs),
    stages: st,
    components: src.components ?? {},
    memory: memoryNow(),
    ...(src.frameWait ? { frameWait: src.frameWait } : {}),
    ...(src.dataPlane ? { dataPlane: { ...src.dataPlane } } : {}),
    ...(src.inlineSends ? { inlineSends: { ...src.inlineSends } } : {}),
    holdWait: pipeline.held.holdWait.snapshot(),
  };
}

function failoverSnapshot(pipeline: ShadowPipeline, st: Record<string, Record<string, number>>, nowUs: number | undefined): BridgeSnapshot['failover'] {
  const rec = pipeline.failoverHistory[pipeline.failoverHistory.length - 1];
  const n = (stage: string, counter: string): number => st[stage]?.[counter] ?? 0;
  return {
    count: n('failover', 'failovers'),
    refused: n('failover', 'refused'),
    deferred: n('failover', 'deferred'),
    ...(pipeline.failoverWaiting ? { waiting: { cause: pipeline.failoverWaiting.cause, epoch: pipeline.failoverWaiting.epoch } } : {}),
    backupsLost: n('failover', 'backups_lost'),
    flowsCarried: n('compare', 'flows_carried'),
    flowsLost: n('compare', 'flows_lost'),
    flowsUnprotected: n('flow', 'unprotected'),
    ...(rec ? {
      last: {
        cause: rec.cause, detail: rec.detail, survivor: rec.survivor,
        detectionToPromotionMs: (rec.promotedUs - rec.detectedUs) / 1000,
        agoSeconds: nowUs !== undefined ? Math.max(0, (nowUs - rec.promotedUs) / 1e6) : 0,
        flowsCarried: rec.flowsCarried, backlogFrames: rec.backlogFrames, discardedFrames: rec.discardedFrames,
      },
    } : {}),
  };
}
