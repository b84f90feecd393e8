/**
 * ShadowPipeline: the stages of the data path, wired. Pure: frames and
 * times come in, frames go out through `outputs`; no sockets, no clock of
 * its own (the live bridge and the replay both drive it).
 *
 *   client frame ──► IngressStage ──► active replica (as is), standby (translated)
 *   VM frame ──► EgressStage: decode ─► flow ─► normalize ─► compare ─► HeldQueues (release) ─► client
 *   time ──► Replicator (checkpoint triggers, timeouts), FailoverStage (silence), FlowRegistry (expiry)
 *
 * Which port slot is primary, backup, promoted or dead is data (ReplicaSet):
 * a failover is a role change plus one event. Events (checkpoint-begin,
 * checkpoint-done, degraded, failover, backup-lost, reprotect) reach every
 * stage through its one hook, in data-path order; each stage reports its
 * counters in one shape (`stageCounters`).
 */
import { SlabPool } from '../packet/slab';
import { ReplicaSet, SlotId } from '../failover/roles';
import { FailoverStage } from '../failover/failover-stage';
import { CheckpointReason, CheckpointRequest, ReplicationState, Replicator, StateMoved } from '../replicate/replicator';
import { HeldQueues } from '../release/held';
import { VirtioNetHeader } from '../io/port';
import { PipelineConfig } from './config';
import { FailoverCause, FailoverRecord, Stage, StageEvent } from './events';
import { FlowRegistry } from './flows';
import { FrameCounts, Counts, Origin } from './frame-counts';
import { IngressStage } from './ingress-stage';
import { Divergence, EgressStage } from './egress-stage';
import { FlowReport, ShadowFlow } from './shadow-flow';
import { FlowTable } from '../flow/flow-table';
export type { FailoverCause, FailoverRecord, StageEvent, Stage } from './events';
export type { Divergence } from './egress-stage';
export { MAX_DIVERGENCES } from './egress-stage';
export type { Origin } from './frame-counts';
export type { HeldIngress } from './ingress-stage';

/** `released` lines per flow per interval, below the logger's default 20 lines per event per second. */
const RELEASE_LOG_FLOWS = 16;

/** Outputs take the frame's virtio-net header along (GSO, partial checksum), when it came with one. */
export interface PipelineOutputs {
  /** To the VM in this port slot. */
  toReplica(slot: SlotId, frame: Buffer, vnet?: VirtioNetHeader): void;
  toClient(frame: Buffer, vnet?: VirtioNetHeader): void;
  /** Ask the sync agent for a checkpoint (protocol v1 `checkpoint`). */
  sendCheckpoint(req: CheckpointRequest): void;
  /** Ask the sync agent to build a new backup (protocol v1 `reprotect`). */
  sendReprotect?(req: CheckpointRequest, slot: SlotId): void;
  /** Every stage event, after the stages have handled it; a failover before (the bridge tells the agent about failovers). */
  event?(ev: StageEvent): void;
  log(level: 'info' | 'warn', event: string, fields: Record<string, unknown>): void;
}

/** A failover waiting for the answer to the checkpoint in flight. */
export interface DeferredFailover {
  cause: FailoverCause;
  detail: string;
  detectedUs: number;
  /** The checkpoint whose answer decides which backup is promoted. */
  epoch: number;
  /** When the failover was decided (it waits `failover.checkpointWaitMs` at most from then). */
  decidedUs: number;
}

/** Whether `failoverNow` promoted, refused, or waits for the checkpoint in flight. */
export type FailoverDecision = 'promoted' | 'refused' | 'deferred';

/** How many times `maxUnmatchedAgeMs` a trailing but progressing backup (or a flow stalled on the client's window) may take before a `timeout` checkpoint. */
export const TRAILING_GRACE = 10;
/**
 * How many times `maxUnmatchedAgeMs` a backup may be quiet, while its output waits, on a stream whose primary went
 * quiet of its own accord for a quarter of that (a server that paces its output by the clock:
 * TcpConnectionState.primaryPauseMs) before a `timeout` checkpoint. Quiet counts from the later of the oldest held
 * frame's arrival and the backup's last new bytes on the stream.
 */
export const PACED_GRACE = 20;
/**
 * How many times `maxUnmatchedAgeMs` output may wait in all on a paced stream whose backup keeps saying more.
 * nginx lets a paced answer send what whole seconds since the request allow, up to `sendfile_max_chunk` (2 MiB) at
 * once, then sleeps as long as that took at the rate: one replica may send two seconds' worth in one go while the
 * other sends it piece by piece, a second boundary later (2.0 s held in CI, backup progressing 1.1 s into it).
 */
export const PACED_MAX_AGE = 50;

export class ShadowPipeline {
  readonly replicator: Replicator;
  readonly replicas: ReplicaSet;
  readonly held: HeldQueues;
  readonly flowRegistry: FlowRegistry;
  readonly ingress: IngressStage;
  readonly egress: EgressStage;
  readonly failoverStage: FailoverStage;
  /** The stages, in the order events reach them (data-path order; the replicator last, so it sees the others' work done). */
  readonly stages: readonly Stage[];
  /** Running totals since start (monotonic, unlike sums over `reports`, which is bounded). */
  readonly totals = { matchedBytes: 0, mismatches: 0, outOfOrderDropped: 0, datagramsReordered: 0, httpDateNormalized: 0, httpDateRejected: 0 };
  private readonly counts: FrameCounts;
  /** Copies of held primary frames: reused once released and flushed (see `endBreath`). */
  private readonly heldPool: SlabPool;
  private readonly standbyCopies = new SlabPool(true, true);
  private nowUs = 0;
  /**
   * A failover decided by the bridge (carrier, silence, manual) while a
   * checkpoint was in flight, waiting for the agent's answer (see
   * `failoverNow`).
   */
  private deferredFailover: DeferredFailover | null = null;
  /** When the last `released` lines were written. */
  private releasesLoggedUs: number;

  constructor(
    readonly config: PipelineConfig,
    private readonly outputs: PipelineOutputs,
    startUs: number,
    agentConnected: boolean,
    reportLimit = config.flowReports,
    slotNames: [string, string] = ['primary', 'backup'],
  ) {
    const log = (level: 'info' | 'warn', event: string, fields: Record<string, unknown>) => outputs.log(level, event, fields);
    // Divergence capture keeps frames beyond their release: no slab reuse then.
    this.heldPool = new SlabPool(!config.captureDivergence);
    this.replicas = new ReplicaSet(slotNames);
    this.counts = new FrameCounts(log);
    this.held = new HeldQueues((frame, vnet) => outputs.toClient(frame, vnet), this.heldPool, () => this.nowUs);
    this.held.trackReleases = config.releaseLogMs > 0;
    this.replicator = new Replicator(config.replicator, {
      sendCheckpoint: (req) => {
        this.dispatch({ type: 'checkpoint-begin', epoch: req.epoch });
        outputs.sendCheckpoint(req);
      },
      checkpointDone: (rec) => {
        outputs.log('info', 'checkpoint-done', {
          epoch: rec.epoch, reason: rec.reason, flow: rec.flow ?? null, ms: rec.ms, coalesced: rec.coalesced,
          ...(rec.bytes !== undefined ? { bytes: rec.bytes } : {}), ...(rec.pages !== undefined ? { pages: rec.pages } : {}),
        });
        this.dispatch({ type: 'checkpoint-done', epoch: rec.epoch });
      },
      stateChanged: (from, to, why) => {
        log(to === 'DEGRADED' || to === 'FAILED_OVER' ? 'warn' : 'info', 'state', { from, to, why });
        if (to === 'DEGRADED' && from !== to) this.dispatch({ type: 'degraded', why });
      },
      sendReprotect: (req) => {
        const dead = this.replicas.dead;
        if (dead) outputs.sendReprotect?.(req, dead.id);
      },
      clientFrames: () => this.ingress.frames,
      reprotected: (rec) => {
        const dead = this.replicas.dead;
        if (!dead) return;
        const slot = this.replicas.makeBackup(dead.id);
        log('info', 'reprotected', { epoch: rec.epoch, backup: slot.name, roles: this.replicas.describe(), note: 'flows born before stay unprotected; new flows are compared' });
        this.dispatch({ type: 'reprotect', epoch: rec.epoch, slot: slot.id });
      },
    }, startUs, agentConnected, undefined, config.checkpointBudget);
    this.flowRegistry = new FlowRegistry({
      config, replicas: this.replicas, held: this.held, backupCopies: new SlabPool(true, false), standbyCopies: this.standbyCopies,
      totals: this.totals, reportLimit,
      evictedWithHeldOutput: (flow, why) => {
        // Its held output stays in the global queue; a checkpoint releases it.
        log('warn', 'flow-evicted-with-held-output', { flow: flow.name, why, frames: flow.held.length });
        this.request('queue', flow.name, this.nowUs);
      },
      evictedResumed: (flow, heldReleased) => log('warn', 'flow-unprotected', { flow: flow.name, why: 'evicted from a full flow table while open, now speaking again: its replicas\' offsets are lost', heldReleased }),
    });
    const toReplica = (slot: SlotId, frame: Buffer, vnet?: VirtioNetHeader) => outputs.toReplica(slot, frame, vnet);
    this.ingress = new IngressStage({
      config, replicas: this.replicas, replicator: this.replicator, flows: this.flowRegistry, counts: this.counts, toReplica, log,
      toClient: (frame) => outputs.toClient(frame),
    });
    this.failoverStage = new FailoverStage({
      config: config.failover, replicas: this.replicas, toReplica,
      toClient: (frame) => outputs.toClient(frame),
      declareDead: (detail, sinceUs) => {
        if (this.failoverNow('silence', detail, this.nowUs, sinceUs) === 'refused') this.failoverStage.silence.reset(this.nowUs);
      },
    });
    this.egress = new EgressStage({
      config, replicas: this.replicas, replicator: this.replicator, flows: this.flowRegistry, held: this.held, counts: this.counts,
      totals: this.totals, heldPool: this.heldPool, liveness: this.failoverStage,
      toClient: (frame, vnet) => outputs.toClient(frame, vnet),
      toReplica: (slot, frame) => outputs.toReplica(slot, frame),
      backupDeltaKnown: (flow) => this.ingress.flushFlow(flow),
      log,
    });
    this.stages = [this.held, this.flowRegistry, this.egress, this.ingress, this.failoverStage, this.replicator];
    this.nowUs = startUs;
    this.releasesLoggedUs = startUs;
    if (!this.replicator.comparing) this.flowRegistry.untracked();
    if (!agentConnected) log('warn', 'degraded', { why: 'no sync agent connected: primary output flows unchecked' });
  }

  get state(): ReplicationState {
    return this.replicator.state;
  }

  fromClient(frame: Buffer, nowUs: number, vnet?: VirtioNetHeader): void {
    this.nowUs = nowUs;
    this.ingress.fromClient(frame, nowUs, vnet);
  }

  /** A frame from the VM in port slot `slot`; its role decides what happens to it. */
  fromVm(slot: SlotId, frame: Buffer, nowUs: number, vnet?: VirtioNetHeader): void {
    this.nowUs = nowUs;
    this.egress.fromVm(slot, frame, nowUs, vnet);
  }

  /** Advance time: checkpoint timeouts, the unmatched-age trigger, the silence detector, idle flows. */
  tick(nowUs: number): void {
    this.nowUs = nowUs;
    const waiting = this.deferredFailover;
    if (waiting) {
      const expired = nowUs - waiting.decidedUs >= this.config.failover.checkpointWaitMs * 1000;
      if (expired || this.replicator.pending?.epoch !== waiting.epoch) this.runDeferredFailover(nowUs, expired ? 'expired' : 'answered');
    }
    this.replicator.tick(nowUs);
    if (this.replicator.comparing && this.replicas.standby) this.failoverStage.tick(nowUs);
    if (this.replicator.state === 'COMPARING') {
      const oldest = this.held.oldest();
      const limitUs = this.config.maxUnmatchedAgeMs * 1000;
      if (oldest && nowUs - oldest.heldAtUs > limitUs) {
        const flow = oldest.queue.flow as ShadowFlow | null;
        // A backup that trails on this stream but keeps saying more (what overlaps was compared and agreed)
        // is slow, not stuck: two servers filling a large client window at different paces. It gets up to
        // TRAILING_GRACE times the limit; the queue limits bound what waits meanwhile.
        // So is one held back, like the primary, by the client's full window (ShadowFlow.stalledOnClientWindow).
        // A frame the backup has said the beginning of: that beginning goes now, and the backup gets the
        // limit again from there to say more (see releaseMatchedPrefix).
        if (flow) this.egress.releaseMatchedPrefix(flow, oldest, nowUs);
        const windowStalled = flow?.stalledOnClientWindow(nowUs, limitUs) ?? false;
        const sincePrefix = oldest.prefixAtUs >= 0 && nowUs - oldest.prefixAtUs <= limitUs;
        // A server that paces its output by the clock goes quiet on this stream of its own accord (nginx
        // limit_rate sends a chunk, then sleeps as long as the chunk takes at the rate); its backup, whose chunks
        // and timers fall a little differently, may say the same bytes up to a sleep later, whatever the
        // primary's own sleeps were so far (the paced-server test: 530 ms late after a primary pause of 428 ms,
        // 216 ms after one of 72). Once the primary has paused so for a quarter of the limit on the flow (the
        // pause that ends with the held output counts), its backup may be quiet PACED_GRACE times the limit while
        // the output waits, and the output may wait PACED_MAX_AGE times the limit in all.
        const paced = (flow?.tcp?.primaryPauseMs ?? 0) * 4000 >= limitUs;
        const ageUs = nowUs - oldest.heldAtUs;
        const pacedQuietUs = flow ? nowUs - Math.max(oldest.heldAtUs, flow.backupProgressUs) : ageUs;
        if (flow?.stream && (nowUs - flow.backupProgressUs <= limitUs || windowStalled || sincePrefix) && ageUs <= limitUs * TRAILING_GRACE) {
          if (windowStalled) this.egress.noteWindowStalled(oldest);
          else this.egress.noteTrailing(oldest);
        } else if (flow?.stream && paced && pacedQuietUs <= limitUs * PACED_GRACE && ageUs <= limitUs * PACED_MAX_AGE) {
          this.egress.notePaced(oldest);
        }
        else if (flow) this.egress.unmatchedTooLong(flow, nowUs, oldest.heldAtUs, oldest);
        else this.request('timeout', oldest.queue.flowName, nowUs);
      }
    }
    this.flowRegistry.expire(nowUs);
    this.logReleases(nowUs);
  }

  /**
   * One `released` line per flow that released something in the last
   * `releaseLogMs` (bounded; the rest summed in one line). `now`: whatever
   * the interval (the end of a replay).
   */
  logReleases(nowUs: number, now = false): void {
    const every = this.config.releaseLogMs;
    if (every <= 0 || (!now && nowUs - this.releasesLoggedUs < every * 1000)) return;
    const windowMs = (nowUs - this.releasesLoggedUs) / 1000;
    this.releasesLoggedUs = nowUs;
    const progress = this.held.takeReleaseProgress(RELEASE_LOG_FLOWS);
    for (const f of progress.flows) this.outputs.log('info', 'released', { ...f, windowMs });
    const o = progress.others;
    if (o.flows > 0) this.outputs.log('info', 'released', { flow: null, ...o, windowMs });
  }

  /** When `tick` must run next for the silence detector to decide on time (null: the regular tick will do). */
  silenceDeadlineUs(): number | null {
    return this.replicator.comparing && this.replicas.standby ? this.failoverStage.silence.deadlineUs() : null;
  }

  /**
   * The end of one breath: the driver has flushed every port, so no send
   * queue still points at a released frame and its memory may be reused.
   */
  endBreath(): void {
    this.heldPool.endBreath();
    this.standbyCopies.endBreath();
    this.ingress.endBreath();
    this.egress.endBreath();
  }

  /** Ask for a checkpoint (triggers and the control socket). */
  request(reason: CheckpointReason, flow: string | undefined, nowUs: number): boolean {
    return this.replicator.request(reason, flow, nowUs);
  }

  checkpointDone(epoch: number, nowUs: number, ms?: number, moved?: StateMoved): void {
    this.nowUs = nowUs;
    this.replicator.done(epoch, nowUs, ms, moved);
    // The backup holds the primary's state as of this checkpoint: a failover that waited for it goes to that backup.
    if (this.deferredFailover?.epoch === epoch) this.runDeferredFailover(nowUs, 'done');
  }

  checkpointFailed(epoch: number, error: string, nowUs: number): void {
    this.nowUs = nowUs;
    // The backup is the one from before the checkpoint, untouched: promote it before the failure makes it stale.
    if (this.deferredFailover?.epoch === epoch) this.runDeferredFailover(nowUs, 'failed');
    this.replicator.failed(epoch, error, nowUs);
  }

  agentConnected(up: boolean, nowUs: number): void {
    this.nowUs = nowUs;
    // No answer will come: promote before the loss of the agent fails the checkpoint in flight.
    if (!up && this.deferredFailover) this.runDeferredFailover(nowUs, 'agent-lost');
    this.replicator.agentConnected(up, nowUs);
  }

  /** `run --workers`: this pipeline runs in worker `shard.index` of `shard.count` (its liveness probes must be answered to it). */
  setShard(shard: { count: number; index: number }): void {
    this.failoverStage.shard = shard;
  }

  /** The failover waiting for the checkpoint in flight, if any (status, tests). */
  get failoverWaiting(): DeferredFailover | null {
    return this.deferredFailover;
  }

  /**
   * The primary is dead: promote the backup. Refused when there is no
   * backup, or when it is stale (DEGRADED: it missed a checkpoint, so it may
   * not have said what the clients received). Deferred when the bridge
   * itself decided it while a checkpoint is in flight (the agent's answer
   * says which state the backup holds; `runDeferredFailover`).
   *
   * `peer`: another data-plane worker of the same bridge promoted the backup
   * (`run --workers`): the VM is the survivor for every flow, so this worker
   * follows at once, without deferring or judging the backup stale.
   */
  failoverNow(cause: FailoverCause, detail: string, nowUs: number, detectedUs = nowUs, peer = false): FailoverDecision {
    this.nowUs = nowUs;
    if (peer) return this.promote(cause, detail, nowUs, detectedUs, true);
    const pending = this.replicator.pending;
    const waitMs = this.config.failover.checkpointWaitMs;
    if (cause !== 'agent' && waitMs > 0 && pending?.kind === 'checkpoint' && this.replicator.agentIsUp && this.replicas.standby) {
      // The agent may be loading the primary's state into the backup right now (a COLO secondary is
      // overwritten in place; a full copy has a new backup about to be named). Promoting before its answer
      // could promote a VM whose state the bridge does not know. The agent's answer decides; bounded.
      if (!this.deferredFailover) {
        this.deferredFailover = { cause, detail, detectedUs, epoch: pending.epoch, decidedUs: nowUs };
        this.failoverStage.deferred++;
        this.outputs.log('warn', 'failover-deferred', { cause, detail, epoch: pending.epoch, waitMs, why: 'a checkpoint is in flight: its answer says which state the backup holds' });
      }
      return 'deferred';
    }
    return this.promote(cause, detail, nowUs, detectedUs);
  }

  /**
   * The failover that waited: `done` (promote the backup the checkpoint made),
   * `failed` (promote the old one), `agent-lost` or `expired` (promote what is
   * there), `answered` (the checkpoint ended another way). A silence that
   * began while the primary was paused for the checkpoint is judged afresh
   * once the checkpoint is over, rather than believed.
   */
  private runDeferredFailover(nowUs: number, why: 'done' | 'failed' | 'agent-lost' | 'expired' | 'answered'): void {
    const d = this.deferredFailover;
    if (!d) return;
    this.deferredFailover = null;
    const waitedMs = (nowUs - d.decidedUs) / 1000;
    if (d.cause === 'silence' && (why === 'done' || why === 'failed' || why === 'answered')) {
      this.failoverStage.silence.reset(nowUs);
      this.outputs.log('info', 'failover-deferral-cleared', { cause: d.cause, epoch: d.epoch, outcome: why, waitedMs, note: 'the primary was paused for the checkpoint; silence is judged again from now' });
      return;
    }
    this.outputs.log(why === 'expired' ? 'warn' : 'info', 'failover-deferral-ended', { cause: d.cause, epoch: d.epoch, outcome: why, waitedMs });
    if (this.replicas.standby) this.promote(d.cause, d.detail, nowUs, d.detectedUs);
  }

  private promote(cause: FailoverCause, detail: string, nowUs: number, detectedUs: number, peer = false): FailoverDecision {
    this.deferredFailover = null;
    const standby = this.replicas.standby;
    // A peer's failover (another data-plane worker promoted this backup: the whole VM) is not this worker's to judge.
    const why = !standby ? 'no backup' : !peer && !this.replicator.comparing ? `the backup is stale (state ${this.replicator.state})` : null;
    if (why) {
      this.failoverStage.refused++;
      this.outputs.log('warn', 'failover-refused', { cause, detail, why });
      return 'refused';
    }
    const dead = this.replicas.active;
    const survivor = this.replicas.promote();
    const record: FailoverRecord = {
      epoch: this.replicas.generation, cause, detail, detectedUs, promotedUs: nowUs, dead: dead.name, survivor: survivor.name,
      flowsCarried: 0, flowsLost: 0, backlogFrames: 0, discardedFrames: 0,
    };
    this.dispatch({ type: 'failover', survivor: survivor.id, record });
    this.outputs.log('warn', 'failover', {
      cause, detail, dead: dead.name, survivor: survivor.name, detectionMs: (nowUs - detectedUs) / 1000,
      flowsCarried: record.flowsCarried, flowsLost: record.flowsLost, backlogFrames: record.backlogFrames, discardedFrames: record.discardedFrames,
    });
    return 'promoted';
  }

  /**
   * The backup is dead: the primary's output is released unchecked from now
   * on, and every flow continues unprotected until a new backup is built.
   */
  backupLost(cause: string, nowUs: number): boolean {
    this.nowUs = nowUs;
    const lost = this.replicas.loseStandby();
    if (!lost) return false;
    if (this.deferredFailover) {
      this.outputs.log('warn', 'failover-deferral-ended', { cause: this.deferredFailover.cause, epoch: this.deferredFailover.epoch, outcome: 'backup-lost', note: 'nothing left to promote' });
      this.deferredFailover = null;
    }
    this.dispatch({ type: 'backup-lost', slot: lost.id, cause });
    this.outputs.log('warn', 'backup-lost', { slot: lost.name, cause, flowsUnprotected: this.flowRegistry.unprotected });
    return true;
  }

  /**
   * Every stage event goes through here: each stage's own hook, in order,
   * then the driver. A failover reaches the driver first: the agent must hear
   * `failover` (who is primary now) before the `reprotect` that the
   * replicator asks for while it handles the same event.
   */
  private dispatch(ev: StageEvent): void {
    if (ev.type === 'failover') this.outputs.event?.(ev);
    for (const stage of this.stages) stage.handleEvent(ev, this.nowUs);
    if (ev.type !== 'failover') this.outputs.event?.(ev);
  }

  /** Every stage's counters in one shape (stage → counter → value), for status and metrics. */
  stageCounters(): Record<string, Record<string, number>> {
    const out: Record<string, Record<string, number>> = {};
    for (const stage of this.stages) out[stage.stageName] = stage.counters();
    return out;
  }

  // Read-only views for reports, status and tests.
  get flows(): FlowTable<ShadowFlow> { return this.flowRegistry.table; }
  /** Flow reports, in birth order: the newest `flowReports` (made when read). */
  get reports(): FlowReport[] { return this.flowRegistry.reports; }
  /** The newest `limit` flows whose name holds `match`, in birth order (see FlowRegistry.reportList). */
  reportList(limit: number, match?: string): FlowReport[] { return this.flowRegistry.reportList(limit, match); }
  /** reportList in slices, letting frames through between them (see FlowRegistry.reportListSliced). */
  reportListSliced(limit: number, match?: string): Promise<FlowReport[]> { return this.flowRegistry.reportListSliced(limit, match); }
  get divergences(): Divergence[] { return this.egress.divergences; }
  get failoverHistory(): FailoverRecord[] { return this.failoverStage.history; }
  get silence() { return this.failoverStage.silence; }
  get malformed(): Record<string, Counts> { return this.counts.malformedByReason; }
  get policyActions(): Record<string, number> { return this.counts.policyActions; }
  get frames(): Record<Origin, number> { return { client: this.ingress.frames, primary: this.egress.frames.primary, backup: this.egress.frames.backup }; }
  get backupFramesSuppressed(): number { return this.egress.backupFramesSuppressed; }
  get badTcpOptions(): number { return this.egress.badTcpOptions + this.ingress.badTcpOptions; }
  get ingressHeldFrames(): number { return this.ingress.heldFrames; }
  get ingressHoldDropped(): number { return this.ingress.holdDropped; }
  get flowsCreated(): number { return this.flowRegistry.created; }
  /** Failover counters across the stages that keep them. */
  get failover() {
    const e = this.egress, f = this.failoverStage;
    return {
      failovers: f.failovers, refused: f.refused, backupsLost: f.backupsLost,
      flowsCarried: e.flowsCarried, flowsLost: e.flowsLost, flowsUnprotected: this.flowRegistry.unprotected,
      backlogFrames: e.backlogFrames, discardedFrames: this.held.discardedFrames,
      duplicatesDropped: e.duplicatesDropped, trimmed: e.trimmed, translatedFrames: e.translatedFrames, deadSlotFrames: e.deadSlotFrames,
      probesSent: f.probesSent, probeReplies: f.probeReplies, silenceFalseAlarms: f.silence.falseAlarms, announcements: f.announcements,
    };
  }
}

