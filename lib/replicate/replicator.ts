/**
 * The replication state machine and checkpoint triggers.
 *
 *   COMPARING ──request──► CHECKPOINTING ──done──► COMPARING
 *       ▲                      │ failed / timeout
 *       └──── done ◄── DEGRADED ◄┘   (retries with back-off)
 *
 * In:  trigger calls from the stages (`request`), agent answers (`done`,
 *      `failed`, `agentConnected`), the clock (`tick`).
 * Out: checkpoint requests to the agent link (coalesced: at most one
 *      outstanding), state changes to the listener, counters.
 */
export type CheckpointReason = 'mismatch' | 'timeout' | 'queue' | 'periodic' | 'manual';
export const CHECKPOINT_REASONS: readonly CheckpointReason[] = ['mismatch', 'timeout', 'queue', 'periodic', 'manual'];
export type ReplicationState = 'COMPARING' | 'CHECKPOINTING' | 'DEGRADED' | 'FAILED_OVER';

export interface CheckpointRequest {
  epoch: number;
  reason: CheckpointReason;
  /** The flow that triggered it, for the log. */
  flow?: string;
  timeUs: number;
}

export interface CheckpointRecord extends CheckpointRequest {
  /** Further triggers folded into this checkpoint while it was outstanding. */
  coalesced: number;
  outcome: 'pending' | 'done' | 'failed';
  ms?: number;
  error?: string;
}

export interface ReplicatorConfig {
  /** How long an agent may take before the checkpoint counts as failed. */
  checkpointTimeoutMs: number;
  /** Checkpoint at least this often; 0: never for this reason. */
  maxIntervalMs: number;
  /** First retry delay in DEGRADED; doubles up to `retryMaxMs`. */
  retryInitialMs: number;
  retryMaxMs: number;
}

export const DEFAULT_REPLICATOR_CONFIG: ReplicatorConfig = {
  checkpointTimeoutMs: 5000,
  maxIntervalMs: 0,
  retryInitialMs: 1000,
  retryMaxMs: 30000,
};

export interface ReplicatorEvents {
  /** Send this request to the agent. */
  sendCheckpoint(req: CheckpointRequest): void;
  /** The checkpoint finished: the backup is a copy of the primary. */
  checkpointDone(rec: CheckpointRecord): void;
  stateChanged(from: ReplicationState, to: ReplicationState, why: string): void;
}

export class Replicator {
  state: ReplicationState;
  epoch = 0;
  readonly requested: Record<CheckpointReason, number> = { mismatch: 0, timeout: 0, queue: 0, periodic: 0, manual: 0 };
  coalesced = 0;
  completed = 0;
  failures = 0;
  /** Every checkpoint, most recent last (bounded: the oldest are dropped past `historyLimit`). */
  readonly history: CheckpointRecord[] = [];
  private outstanding: CheckpointRecord | null = null;
  private lastCheckpointUs: number;
  private retryDelayMs: number;
  private retryAtUs = 0;
  private agentUp: boolean;
  /** What a retry from DEGRADED asks for: the reason of the checkpoint that failed. */
  private retryReason: CheckpointReason = 'manual';
  private retryFlow: string | undefined;

  constructor(
    private readonly config: ReplicatorConfig,
    private readonly events: ReplicatorEvents,
    nowUs: number,
    agentConnected: boolean,
    private readonly historyLimit = 10000,
  ) {
    this.agentUp = agentConnected;
    this.state = agentConnected ? 'COMPARING' : 'DEGRADED';
    this.lastCheckpointUs = nowUs;
    this.retryDelayMs = config.retryInitialMs;
  }

  /** Whether the bridge must hold client ingress now. */
  get holdingIngress(): boolean {
    return this.state === 'CHECKPOINTING';
  }

  /** Whether VM output is being compared (else the primary's output flows unchecked). */
  get comparing(): boolean {
    return this.state === 'COMPARING' || this.state === 'CHECKPOINTING';
  }

  get pending(): CheckpointRecord | null {
    return this.outstanding;
  }

  /** A trigger fired. Returns true if a new checkpoint was sent, false if coalesced or refused. */
  request(reason: CheckpointReason, flow: string | undefined, nowUs: number): boolean {
    if (this.state === 'CHECKPOINTING' && this.outstanding) {
      this.outstanding.coalesced++;
      this.coalesced++;
      return false;
    }
    if (this.state === 'FAILED_OVER') return false;
    if (this.state === 'DEGRADED' && (!this.agentUp || nowUs < this.retryAtUs)) return false;
    this.requested[reason]++;
    const rec: CheckpointRecord = { epoch: ++this.epoch, reason, flow, timeUs: nowUs, coalesced: 0, outcome: 'pending' };
    this.outstanding = rec;
    this.history.push(rec);
    if (this.history.length > this.historyLimit) this.history.shift();
    this.setState('CHECKPOINTING', `checkpoint ${rec.epoch} requested (${reason}${flow ? `, ${flow}` : ''})`);
    this.events.sendCheckpoint({ epoch: rec.epoch, reason, flow, timeUs: nowUs });
    return true;
  }

  done(epoch: number, nowUs: number, ms?: number): void {
    const rec = this.outstanding;
    if (!rec || rec.epoch !== epoch) return; // late answer to a checkpoint we gave up on
    this.outstanding = null;
    rec.outcome = 'done';
    rec.ms = ms ?? (nowUs - rec.timeUs) / 1000;
    this.completed++;
    this.lastCheckpointUs = nowUs;
    this.retryDelayMs = this.config.retryInitialMs;
    this.events.checkpointDone(rec);
    this.setState('COMPARING', `checkpoint ${epoch} done`);
  }

  failed(epoch: number, error: string, nowUs: number): void {
    const rec = this.outstanding;
    if (!rec || rec.epoch !== epoch) return;
    this.outstanding = null;
    rec.outcome = 'failed';
    rec.error = error;
    this.failures++;
    this.retryReason = rec.reason;
    this.retryFlow = rec.flow;
    this.retryAtUs = nowUs + this.retryDelayMs * 1000;
    this.retryDelayMs = Math.min(this.retryDelayMs * 2, this.config.retryMaxMs);
    this.setState('DEGRADED', `checkpoint ${epoch} failed: ${error}`);
  }

  agentConnected(up: boolean, nowUs: number): void {
    this.agentUp = up;
    if (!up) {
      if (this.outstanding) this.failed(this.outstanding.epoch, 'agent disconnected', nowUs);
      else if (this.state === 'COMPARING') this.setState('DEGRADED', 'no sync agent connected');
    } else if (this.state === 'DEGRADED') {
      // A fresh agent: resynchronize at once rather than wait out the back-off.
      this.retryAtUs = nowUs;
      this.request(this.retryReason, this.retryFlow, nowUs);
    }
  }

  tick(nowUs: number): void {
    const rec = this.outstanding;
    if (rec && nowUs - rec.timeUs > this.config.checkpointTimeoutMs * 1000) {
      this.failed(rec.epoch, `no answer within ${this.config.checkpointTimeoutMs} ms`, nowUs);
      return;
    }
    if (this.state === 'DEGRADED' && this.agentUp && nowUs >= this.retryAtUs) {
      this.request(this.retryReason, this.retryFlow, nowUs);
      return;
    }
    const every = this.config.maxIntervalMs;
    if (every > 0 && this.state === 'COMPARING' && nowUs - this.lastCheckpointUs > every * 1000) {
      this.request('periodic', undefined, nowUs);
    }
  }

  private setState(to: ReplicationState, why: string): void {
    const from = this.state;
    this.state = to;
    if (from !== to) this.events.stateChanged(from, to, why);
  }
}
