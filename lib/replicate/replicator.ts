/**
 * The replication state machine and checkpoint triggers.
 *
 *   COMPARING ──request──► CHECKPOINTING ──done──► COMPARING
 *       ▲                      │ failed / timeout
 *       └──── done ◄── DEGRADED ◄┘   (retries with back-off)
 *
 *   any ──failedOver──► FAILED_OVER ──reprotect done──► COMPARING
 *   any ──backupLost──► DEGRADED (no backup) ──reprotect done──► COMPARING
 *
 * After a failover or the backup's death there is no backup: checkpoints
 * are refused and a re-protection (protocol v1 `reprotect`, answered by
 * `checkpoint-done`/`checkpoint-failed` for its epoch) is asked for as soon
 * as an agent is connected, retried with back-off.
 *
 * In:  trigger calls from the stages (`request`), agent answers (`done`,
 *      `failed`, `agentConnected`), the clock (`tick`).
 * Out: checkpoint requests to the agent link (coalesced: at most one
 *      outstanding), state changes to the listener, counters.
 */
import type { Stage, StageEvent } from '../pipeline/events';
import { CheckpointBudget, CheckpointBudgetConfig } from './budget';
import { DurationHistogram } from './duration-histogram';

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

/** What an outstanding request asks of the agent. */
export type AgentRequestKind = 'checkpoint' | 'reprotect';

export interface CheckpointRecord extends CheckpointRequest {
  kind: AgentRequestKind;
  /** Further triggers folded into this checkpoint while it was outstanding. */
  coalesced: number;
  /** `abandoned`: a failover or the backup's death made the answer moot. */
  outcome: 'pending' | 'done' | 'failed' | 'abandoned';
  ms?: number;
  /** What the agent said it moved (`checkpoint-done`'s `bytes` and `pages`): 0 and absent from agents that move nothing. */
  bytes?: number;
  pages?: number;
  error?: string;
}

/** State an agent reports having moved in one checkpoint. */
export interface StateMoved {
  bytes: number;
  pages?: number;
}

export interface ReplicatorConfig {
  /** How long an agent may take before the checkpoint counts as failed. */
  checkpointTimeoutMs: number;
  /** Checkpoint at least this often; 0: never for this reason. */
  maxIntervalMs: number;
  /** First retry delay in DEGRADED; doubles up to `retryMaxMs`. */
  retryInitialMs: number;
  retryMaxMs: number;
  /** How long building a new backup may take (re-protection). */
  reprotectTimeoutMs: number;
}

export const DEFAULT_REPLICATOR_CONFIG: ReplicatorConfig = {
  checkpointTimeoutMs: 5000,
  maxIntervalMs: 0,
  retryInitialMs: 1000,
  retryMaxMs: 30000,
  reprotectTimeoutMs: 30000,
};

export interface ReplicatorEvents {
  /** Send this request to the agent. */
  sendCheckpoint(req: CheckpointRequest): void;
  /** The checkpoint finished: the backup is a copy of the primary. */
  checkpointDone(rec: CheckpointRecord): void;
  stateChanged(from: ReplicationState, to: ReplicationState, why: string): void;
  /** Ask the agent to build a new backup from the active replica. */
  sendReprotect?(req: CheckpointRequest): void;
  /** The new backup is ready: comparison can start again. */
  reprotected?(rec: CheckpointRecord): void;
  /**
   * Client frames taken so far (a running count). Those taken while a
   * re-protection was in flight reached the survivor alone, perhaps after
   * its copy was made: a checkpoint follows the re-protection to carry them.
   */
  clientFrames?(): number;
}

export class Replicator implements Stage {
  readonly stageName = 'replicate';
  state: ReplicationState;
  epoch = 0;
  readonly requested: Record<CheckpointReason, number> = { mismatch: 0, timeout: 0, queue: 0, periodic: 0, manual: 0 };
  coalesced = 0;
  completed = 0;
  /** State the agent said its checkpoints moved, in bytes and (where it counts them) memory pages. */
  bytesMoved = 0;
  pagesMoved = 0;
  failures = 0;
  reprotects = 0;
  reprotectFailures = 0;
  /** Checkpoints and re-protections this replicator took part in because another data-plane worker asked (joinBarrier). */
  joined = 0;
  /** Checkpoints asked for right after a re-protection, for what the survivor took meanwhile. */
  afterReprotect = 0;
  /** Client frames seen when the re-protection in flight was asked for (events.clientFrames). */
  private clientFramesAtReprotect = 0;
  /** No backup (failover or backup death): re-protection is needed before any checkpoint. */
  needsReprotect = false;
  /** Every checkpoint, most recent last (bounded: the oldest are dropped past `historyLimit`). */
  readonly history: CheckpointRecord[] = [];
  /** How long successful checkpoints took (not re-protections), for the metrics' histogram. */
  readonly durations = new DurationHistogram();
  private outstanding: CheckpointRecord | null = null;
  private lastCheckpointUs: number;
  private retryDelayMs: number;
  private retryAtUs = 0;
  private agentUp: boolean;
  /** What a retry from DEGRADED asks for: the reason of the checkpoint that failed. */
  private retryReason: CheckpointReason = 'manual';
  private retryFlow: string | undefined;

  private readonly budget: CheckpointBudget;

  constructor(
    private readonly config: ReplicatorConfig,
    private readonly events: ReplicatorEvents,
    nowUs: number,
    agentConnected: boolean,
    private readonly historyLimit = 10000,
    budget: CheckpointBudgetConfig = { perSource: 0, windowMs: 10_000 },
  ) {
    this.budget = new CheckpointBudget(budget);
    this.agentUp = agentConnected;
    this.state = agentConnected ? 'COMPARING' : 'DEGRADED';
    this.lastCheckpointUs = nowUs;
    this.retryDelayMs = config.retryInitialMs;
  }

  /** The pair lost a replica: no backup until re-protection. (Checkpoint events start here, nothing to do.) */
  handleEvent(ev: StageEvent, nowUs: number): void {
    if (ev.type === 'failover') this.failedOver(nowUs, `${ev.record.cause}: ${ev.record.detail}`);
    else if (ev.type === 'backup-lost') this.backupLost(nowUs, `backup lost: ${ev.cause}`);
  }

  counters(): Record<string, number> {
    const c: Record<string, number> = {
      checkpoints_done: this.completed,
      checkpoints_failed: this.failures,
      checkpoints_coalesced: this.coalesced,
      checkpoint_bytes_moved: this.bytesMoved,
      checkpoint_pages_moved: this.pagesMoved,
      reprotects_done: this.reprotects,
      reprotects_failed: this.reprotectFailures,
      barriers_joined: this.joined,
      after_reprotect: this.afterReprotect,
      budget_allowed: this.budget.allowed,
      budget_denied: this.budget.denied,
    };
    for (const reason of CHECKPOINT_REASONS) c[`requested_${reason}`] = this.requested[reason];
    return c;
  }

  /** Whether the bridge must hold client ingress now. */
  get holdingIngress(): boolean {
    return this.state === 'CHECKPOINTING';
  }

  /** Whether VM output is being compared (else the primary's output flows unchecked). */
  get comparing(): boolean {
    return this.state === 'COMPARING' || this.state === 'CHECKPOINTING';
  }

  /** Whether a sync agent is connected (an answer to the checkpoint in flight can still come). */
  get agentIsUp(): boolean {
    return this.agentUp;
  }

  get pending(): CheckpointRecord | null {
    return this.outstanding;
  }

  /**
   * A flow's trigger fired (mismatch, timeout, queue). Like `request`, but a
   * new checkpoint counts against the budget of the flow's client source:
   * `over-budget` means none was asked for, and the caller lets the flow go
   * on unprotected.
   */
  requestForFlow(reason: CheckpointReason, flow: string, source: string, nowUs: number): 'sent' | 'coalesced' | 'refused' | 'over-budget' {
    if (this.state === 'CHECKPOINTING' && this.outstanding) {
      this.request(reason, flow, nowUs);
      return 'coalesced';
    }
    if (this.needsReprotect || this.state === 'FAILED_OVER') return 'refused';
    if (this.state === 'DEGRADED' && (!this.agentUp || nowUs < this.retryAtUs)) return 'refused';
    if (!this.budget.allow(source, nowUs)) return 'over-budget';
    return this.request(reason, flow, nowUs) ? 'sent' : 'refused';
  }

  /** A trigger fired. Returns true if a new checkpoint was sent, false if coalesced or refused. */
  request(reason: CheckpointReason, flow: string | undefined, nowUs: number): boolean {
    if (this.state === 'CHECKPOINTING' && this.outstanding) {
      this.outstanding.coalesced++;
      this.coalesced++;
      return false;
    }
    if (this.needsReprotect || this.state === 'FAILED_OVER') return false;
    if (this.state === 'DEGRADED' && (!this.agentUp || nowUs < this.retryAtUs)) return false;
    this.requested[reason]++;
    const rec: CheckpointRecord = { kind: 'checkpoint', epoch: ++this.epoch, reason, flow, timeUs: nowUs, coalesced: 0, outcome: 'pending' };
    this.outstanding = rec;
    this.history.push(rec);
    if (this.history.length > this.historyLimit) this.history.shift();
    this.setState('CHECKPOINTING', `checkpoint ${rec.epoch} requested (${reason}${flow ? `, ${flow}` : ''})`);
    this.events.sendCheckpoint({ epoch: rec.epoch, reason, flow, timeUs: nowUs });
    return true;
  }

  /**
   * Another data-plane worker of the same bridge (`run --workers`) asked the
   * agent for a checkpoint or a re-protection: this one takes part, holding
   * its client ingress from now until the answer, whatever its own triggers
   * and back-off say. True when a request of that kind is outstanding
   * afterwards (sent now, or already). Not counted in `requested`: `joined`.
   */
  joinBarrier(kind: AgentRequestKind, reason: CheckpointReason, flow: string, nowUs: number): boolean {
    if (this.outstanding) return this.outstanding.kind === kind;
    if (kind === 'reprotect') {
      if (!this.needsReprotect || !this.agentUp) return false;
      this.retryAtUs = nowUs;
      if (!this.tryReprotect(nowUs)) return false;
    } else {
      if (this.needsReprotect || this.state === 'FAILED_OVER' || (this.state === 'DEGRADED' && !this.agentUp)) return false;
      const rec: CheckpointRecord = { kind: 'checkpoint', epoch: ++this.epoch, reason, flow, timeUs: nowUs, coalesced: 0, outcome: 'pending' };
      this.outstanding = rec;
      this.history.push(rec);
      if (this.history.length > this.historyLimit) this.history.shift();
      this.setState('CHECKPOINTING', `checkpoint ${rec.epoch} joined (${flow})`);
      this.events.sendCheckpoint({ epoch: rec.epoch, reason, flow, timeUs: nowUs });
    }
    this.joined++;
    return true;
  }

  done(epoch: number, nowUs: number, ms?: number, moved?: StateMoved): void {
    const rec = this.outstanding;
    if (!rec || rec.epoch !== epoch) return; // late answer to a checkpoint we gave up on
    this.outstanding = null;
    rec.outcome = 'done';
    rec.ms = ms ?? (nowUs - rec.timeUs) / 1000;
    if (rec.kind === 'reprotect') {
      this.reprotects++;
      this.needsReprotect = false;
      this.lastCheckpointUs = nowUs;
      this.retryDelayMs = this.config.retryInitialMs;
      this.events.reprotected?.(rec);
      this.setState('COMPARING', `new backup ready (reprotect ${epoch})`);
      // What the survivor did between the copy and now (requests on flows it served alone) is not in the new
      // backup: carry it over at once with a checkpoint, before a failover could need it.
      const gap = (this.events.clientFrames?.() ?? 0) - this.clientFramesAtReprotect;
      if (gap > 0 && this.request('manual', `${gap} client frame(s) the survivor took while reprotect ${epoch} copied it`, nowUs)) this.afterReprotect++;
      return;
    }
    this.completed++;
    this.durations.observe(rec.ms / 1000);
    if (moved) {
      rec.bytes = moved.bytes;
      this.bytesMoved += moved.bytes;
      if (moved.pages !== undefined) {
        rec.pages = moved.pages;
        this.pagesMoved += moved.pages;
      }
    }
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
    if (rec.kind === 'reprotect') {
      this.reprotectFailures++;
      this.retryAtUs = nowUs + this.retryDelayMs * 1000;
      this.retryDelayMs = Math.min(this.retryDelayMs * 2, this.config.retryMaxMs);
      this.events.stateChanged(this.state, this.state, `reprotect ${epoch} failed: ${error}; retry in ${Math.round((this.retryAtUs - nowUs) / 1000)} ms`);
      return;
    }
    this.failures++;
    this.retryReason = rec.reason;
    this.retryFlow = rec.flow;
    this.retryAtUs = nowUs + this.retryDelayMs * 1000;
    this.retryDelayMs = Math.min(this.retryDelayMs * 2, this.config.retryMaxMs);
    this.setState('DEGRADED', `checkpoint ${epoch} failed: ${error}`);
  }

  /** The backup was promoted: no backup now; comparison stops until a new one is built. */
  failedOver(nowUs: number, why: string): void {
    this.abandonOutstanding(why);
    this.needsReprotect = true;
    this.retryAtUs = nowUs;
    this.retryDelayMs = this.config.retryInitialMs;
    this.setState('FAILED_OVER', why);
    this.tryReprotect(nowUs);
  }

  /** The backup died: the primary's output flows unchecked until a new backup is built. */
  backupLost(nowUs: number, why: string): void {
    this.abandonOutstanding(why);
    this.needsReprotect = true;
    this.retryAtUs = nowUs;
    this.retryDelayMs = this.config.retryInitialMs;
    this.setState('DEGRADED', why);
    this.tryReprotect(nowUs);
  }

  private abandonOutstanding(why: string): void {
    const rec = this.outstanding;
    if (!rec) return;
    this.outstanding = null;
    rec.outcome = 'abandoned';
    rec.error = why;
  }

  private tryReprotect(nowUs: number): boolean {
    if (!this.needsReprotect || this.outstanding || !this.agentUp || nowUs < this.retryAtUs) return false;
    const rec: CheckpointRecord = { kind: 'reprotect', epoch: ++this.epoch, reason: 'manual', timeUs: nowUs, coalesced: 0, outcome: 'pending' };
    this.outstanding = rec;
    this.history.push(rec);
    if (this.history.length > this.historyLimit) this.history.shift();
    this.clientFramesAtReprotect = this.events.clientFrames?.() ?? 0;
    this.events.sendReprotect?.({ epoch: rec.epoch, reason: rec.reason, timeUs: nowUs });
    return true;
  }

  agentConnected(up: boolean, nowUs: number): void {
    this.agentUp = up;
    if (this.needsReprotect) {
      if (!up && this.outstanding) this.failed(this.outstanding.epoch, 'agent disconnected', nowUs);
      if (up) {
        this.retryAtUs = nowUs;
        this.tryReprotect(nowUs);
      }
      return;
    }
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
    const timeoutMs = rec?.kind === 'reprotect' ? this.config.reprotectTimeoutMs : this.config.checkpointTimeoutMs;
    if (rec && nowUs - rec.timeUs > timeoutMs * 1000) {
      this.failed(rec.epoch, `no answer within ${timeoutMs} ms`, nowUs);
      return;
    }
    if (this.needsReprotect) {
      this.tryReprotect(nowUs);
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
