/**
 * ShadowPipeline: the stages of the data path joined for one frame at a
 * time. Pure: frames and times come in, frames go out through `outputs`;
 * no sockets, no clock of its own (the live bridge and the replay both
 * drive it).
 *
 *   client frame ──► ingress: to the active replica as is, to the standby translated
 *   VM frame ──► decode ─► flow ─► normalize ─► compare ─► release ─► client
 *
 * Which port slot is primary, backup, promoted or dead is data (ReplicaSet):
 * a frame comes in from a slot and is compared on the side that slot's role
 * gives it. Failover (`failover`) is a role change plus one routing change;
 * every live flow is then carried over: the dead primary's unconfirmed output
 * is dropped, the promoted replica's backlog beyond what the client received
 * goes out at once, and its later output is translated into the sequence and
 * timestamp spaces the client knows.
 *
 * Counters for everything that is not a plain pass: malformed input by
 * reason and side, policy actions, held and dropped ingress, evictions.
 */
import { MalformedReason, TcpFlag } from '../packet/constants';
import { DecodedFrame, decodeFrame } from '../packet/frame';
import { Slab, SlabCopier, SlabPool } from '../packet/slab';
import { TcpOptions } from '../packet/tcp-options';
import { FlowEntry, FlowTable } from '../flow/flow-table';
import { describeFlow, flowProtocolOf } from '../flow/key';
import { FlowLookup } from '../flow/key-cache';
import { BACKUP, PRIMARY, Side, StreamSegment } from '../compare/tcp-stream';
import { datagramContent } from '../normalize/datagram';
import { learnFromSyn, newStreamSegment, normalizeTcp, segmentEnd } from '../normalize/tcp';
import { refersToVmSpace, translateForBackup } from '../rewrite/ingress';
import { translateForClient, trimmedTcpCopy } from '../rewrite/egress';
import { HeldQueues } from '../release/held';
import { StandbyFrame } from '../release/standby-log';
import { seqLe, seqLt, seqDiff } from '../packet/seq';
import { ReplicaSet, SlotId, STANDBY_SIDE } from '../failover/roles';
import { SilenceDetector } from '../failover/liveness';
import { buildAnnouncement, buildEchoProbe, isProbeReply } from '../failover/frames';
import { CheckpointReason, CheckpointRecord, CheckpointRequest, ReplicationState, Replicator } from '../replicate/replicator';
import { FrameAction, PipelineConfig } from './config';
import { VIRTIO_NET_HDR_F_NEEDS_CSUM, VirtioNetHeader } from '../io/port';
import { FlowReport, RecentFrame, ShadowFlow } from './shadow-flow';

/** Outputs take the frame's virtio-net header along (GSO, partial checksum), when it came with one. */
export interface PipelineOutputs {
  /** To the VM in this port slot. */
  toReplica(slot: SlotId, frame: Buffer, vnet?: VirtioNetHeader): void;
  toClient(frame: Buffer, vnet?: VirtioNetHeader): void;
  /** Ask the sync agent for a checkpoint (protocol v1 `checkpoint`). */
  sendCheckpoint(req: CheckpointRequest): void;
  /** Ask the sync agent to build a new backup (protocol v1 `reprotect`). */
  sendReprotect?(req: CheckpointRequest, slot: SlotId): void;
  /** Every stage event, after the stages have handled it (the bridge tells the agent about failovers). */
  event?(ev: StageEvent): void;
  log(level: 'info' | 'warn', event: string, fields: Record<string, unknown>): void;
}

/** Why the primary is taken for dead. */
export type FailoverCause = 'agent' | 'carrier' | 'silence' | 'manual';

/** One failover, as status, metrics and logs show it. */
export interface FailoverRecord {
  epoch: number;
  cause: FailoverCause;
  /** Free text: the agent's reason, the interface, the silence measured. */
  detail: string;
  /** When the cause was first seen, and when the backup was promoted (pipeline clock, µs). */
  detectedUs: number;
  promotedUs: number;
  survivor: string;
  flowsCarried: number;
  flowsLost: number;
  /** The promoted replica's frames sent at once (its backlog beyond what the client had). */
  backlogFrames: number;
  /** The dead primary's frames that were held and are never sent. */
  discardedFrames: number;
}

export type StageEvent =
  | { type: 'checkpoint-begin'; epoch: number }
  | { type: 'checkpoint-done'; epoch: number }
  | { type: 'failover'; epoch: number; survivor: SlotId; record: FailoverRecord }
  | { type: 'backup-lost'; slot: SlotId; cause: string }
  | { type: 'reprotect'; epoch: number; slot: SlotId };

export type Origin = 'client' | 'primary' | 'backup';

export interface Divergence {
  flow: string;
  mismatch: FlowReport['mismatchList'][number];
  frames: RecentFrame[];
}

export const MAX_DIVERGENCES = 256;
const MAX_INGRESS_HELD_PER_FLOW = 256;
const EXPIRY_INTERVAL_US = 1_000_000;

type Counts = Record<Origin, number>;

/** A client frame kept for later (during a checkpoint, or until a flow's backup delta is known). */
export interface HeldIngress {
  frame: Buffer;
  vnet: VirtioNetHeader | undefined;
}
const zeroCounts = (): Counts => ({ client: 0, primary: 0, backup: 0 });

export const MAX_FAILOVER_HISTORY = 100;

export interface FailoverCounters {
  failovers: number;
  /** Failovers asked for but not made: no backup, or a stale one. */
  refused: number;
  backupsLost: number;
  flowsCarried: number;
  flowsLost: number;
  /** Flows that continue without a replica (born while there was no backup, or whose backup died). */
  flowsUnprotected: number;
  backlogFrames: number;
  discardedFrames: number;
  /** Promoted-replica frames the client had already received from the old primary (dropped). */
  duplicatesDropped: number;
  /** Promoted-replica frames cut down to the part the client had not received. */
  trimmed: number;
  translatedFrames: number;
  /** Frames from a dead slot (dropped). */
  deadSlotFrames: number;
  probesSent: number;
  probeReplies: number;
  /** Silences that ended because the primary spoke after all (no failover). */
  silenceFalseAlarms: number;
  announcements: number;
}

/** How often the VM frames kept as templates for probes and announcements are renewed. */
const TEMPLATE_REFRESH_US = 1_000_000;

export class ShadowPipeline {
  readonly replicator: Replicator;
  readonly replicas: ReplicaSet;
  readonly flows: FlowTable<ShadowFlow>;
  readonly held: HeldQueues;
  /** Every flow seen, for reports (most recent `reportLimit`). */
  readonly reports: FlowReport[] = [];
  readonly divergences: Divergence[] = [];
  readonly failoverHistory: FailoverRecord[] = [];

  readonly frames: Counts = zeroCounts();
  readonly malformed: Record<string, Counts> = {};
  /** Policy actions taken, by "class/action", e.g. "arp/forward-primary". */
  readonly policyActions: Record<string, number> = {};
  /** Running totals since start (monotonic, unlike sums over `reports`, which is bounded). */
  readonly totals = { matchedBytes: 0, mismatches: 0, outOfOrderDropped: 0 };
  readonly failover: FailoverCounters = {
    failovers: 0, refused: 0, backupsLost: 0, flowsCarried: 0, flowsLost: 0, flowsUnprotected: 0,
    backlogFrames: 0, discardedFrames: 0, duplicatesDropped: 0, trimmed: 0, translatedFrames: 0, deadSlotFrames: 0,
    probesSent: 0, probeReplies: 0, silenceFalseAlarms: 0, announcements: 0,
  };
  readonly silence: SilenceDetector;
  /** Recent standby frames (VM → client) per IP version: addresses and MACs for probes and announcements. */
  private readonly vmTemplates: { v4: Buffer | null; v6: Buffer | null; atUs: number } = { v4: null, v6: null, atUs: -Infinity };
  backupFramesSuppressed = 0;
  badTcpOptions = 0;
  ingressHeldFrames = 0;
  ingressHoldDropped = 0;
  flowsCreated = 0;

  private readonly frame = new DecodedFrame();
  private readonly trimScratch = new DecodedFrame();
  /** Lookups that remember their last flow: one per direction and side. */
  private readonly ingressLookup: FlowLookup<ShadowFlow>;
  private readonly egressLookup: [FlowLookup<ShadowFlow>, FlowLookup<ShadowFlow>];
  private readonly opts = new TcpOptions();
  private readonly segment: StreamSegment = newStreamSegment();
  /** Copies nobody releases explicitly (held ingress, divergence captures). */
  private readonly copier = new SlabCopier();
  /** The backup's bytes comparators keep until the primary catches up; never sent anywhere. */
  private readonly backupCopies: SlabPool;
  /** Translated client frames for the standby and translated output of a promoted replica: they only have to last until the ports are flushed. */
  private readonly ingressCopies = new SlabPool(true, true);
  /** Copies of held primary frames: reused once released and flushed (see `endBreath`). */
  private readonly heldPool: SlabPool;
  /** Copies of the standby's frames kept for failover (see StandbyLog). */
  private readonly standbyCopies = new SlabPool(true, true);
  private readonly nonIpFlows = new Map<string, ShadowFlow>();
  private ingressHold: HeldIngress[] = [];
  private ingressHoldBytes = 0;
  private nextExpiryUs = 0;
  /** Checkpoints completed: a flow whose `epoch` is behind is resynchronized before its next frame. */
  private checkpointEpoch = 0;
  /** Carried-over flows alive: while there are none, the unchecked path needs no flow lookup. */
  private carriedFlows = 0;
  private nowUs = 0;

  constructor(
    readonly config: PipelineConfig,
    private readonly outputs: PipelineOutputs,
    startUs: number,
    agentConnected: boolean,
    private readonly reportLimit = 100_000,
    slotNames: [string, string] = ['primary', 'backup'],
  ) {
    // Divergence capture keeps frames beyond their release: no slab reuse then.
    this.heldPool = new SlabPool(!config.captureDivergence);
    this.backupCopies = new SlabPool(true, false);
    this.replicas = new ReplicaSet(slotNames);
    this.silence = new SilenceDetector(config.failover);
    this.held = new HeldQueues((frame, vnet) => outputs.toClient(frame, vnet), this.heldPool);
    this.flows = new FlowTable<ShadowFlow>(config.maxFlows, (e, why) => this.onEvict(e, why));
    this.ingressLookup = new FlowLookup(this.flows, 'ingress');
    this.egressLookup = [new FlowLookup(this.flows, 'egress'), new FlowLookup(this.flows, 'egress')];
    this.replicator = new Replicator(config.replicator, {
      sendCheckpoint: (req) => {
        this.dispatch({ type: 'checkpoint-begin', epoch: req.epoch });
        outputs.sendCheckpoint(req);
      },
      checkpointDone: (rec) => this.dispatch({ type: 'checkpoint-done', epoch: rec.epoch }),
      stateChanged: (from, to, why) => this.onStateChanged(from, to, why),
      sendReprotect: (req) => {
        const dead = this.replicas.dead;
        if (dead) outputs.sendReprotect?.(req, dead.id);
      },
      reprotected: (rec) => {
        const dead = this.replicas.dead;
        if (dead) this.dispatch({ type: 'reprotect', epoch: rec.epoch, slot: dead.id });
      },
    }, startUs, agentConnected);
    this.nowUs = startUs;
    if (!agentConnected) this.outputs.log('warn', 'degraded', { why: 'no sync agent connected: primary output flows unchecked' });
  }

  get state(): ReplicationState {
    return this.replicator.state;
  }

  // ───────────────────────── ingress ─────────────────────────

  fromClient(frame: Buffer, nowUs: number, vnet?: VirtioNetHeader): void {
    this.nowUs = nowUs;
    this.frames.client++;
    if (this.replicator.holdingIngress) {
      this.holdIngress(frame, vnet);
      return;
    }
    this.forwardIngress(frame, nowUs, vnet);
  }

  private holdIngress(frame: Buffer, vnet: VirtioNetHeader | undefined): void {
    const limit = this.config.ingressHold;
    if (this.ingressHold.length >= limit.frames || this.ingressHoldBytes + frame.length > limit.bytes) {
      this.ingressHoldDropped++;
      return;
    }
    this.ingressHold.push({ frame: this.copier.copy(frame), vnet });
    this.ingressHoldBytes += frame.length;
    this.ingressHeldFrames++;
  }

  private forwardIngress(frame: Buffer, nowUs: number, vnet: VirtioNetHeader | undefined): void {
    const active = this.replicas.active.id;
    const standby = this.replicas.standby;
    const f = decodeFrame(frame, this.frame);
    if (f.error) {
      this.countMalformed(f.error, 'client');
      if (this.config.policy.malformedFromClient === 'drop') return;
      this.outputs.toReplica(active, frame, vnet);
      if (standby) this.outputs.toReplica(standby.id, frame, vnet);
      return;
    }
    if (f.l4 !== 'tcp' || f.fragment) {
      this.outputs.toReplica(active, frame, vnet);
      if (standby) this.outputs.toReplica(standby.id, frame, vnet);
      return;
    }
    const isSyn = (f.tcp.flags & TcpFlag.SYN) !== 0;
    const entry = this.ingressLookup.find(f, nowUs, isSyn ? () => this.newFlow(f, 'ingress') : undefined);
    if (!entry) {
      // A flow no VM has spoken in: nothing to translate (the delta is zero).
      this.outputs.toReplica(active, frame, vnet);
      if (standby) this.outputs.toReplica(standby.id, frame, vnet);
      return;
    }
    const flow = this.settle(entry.state);
    if (flow.mode === 'carried') {
      this.toCarried(f, frame, flow, vnet);
      return;
    }
    this.outputs.toReplica(active, frame, vnet);
    const tcp = flow.tcp;
    if (flow.mode === 'solo' || !standby || !tcp) {
      if (standby && !tcp) this.outputs.toReplica(standby.id, frame, vnet);
      return;
    }
    if (isSyn && !(f.tcp.flags & TcpFlag.ACK)) learnFromSyn(f, tcp.client, this.opts);
    if (refersToVmSpace(f) && (!tcp.backupDeltaKnown || flow.ingressHeld.length > 0)) {
      if (flow.ingressHeld.length >= MAX_INGRESS_HELD_PER_FLOW) {
        flow.ingressHeld.shift();
        this.ingressHoldDropped++;
      }
      flow.ingressHeld.push({ frame: this.copier.copy(frame), vnet });
      return;
    }
    this.sendTranslated(f, frame, standby.id, tcp.seqDelta, tcp.tsDelta, vnet);
  }

  /** A client frame of a carried-over flow: to the promoted replica, in its space. */
  private toCarried(f: DecodedFrame, frame: Buffer, flow: ShadowFlow, vnet: VirtioNetHeader | undefined): void {
    const c = flow.carried!;
    this.sendTranslated(f, frame, c.slot, c.seqDelta, c.tsDelta, vnet);
  }

  private sendTranslated(f: DecodedFrame, frame: Buffer, slot: SlotId, seqDelta: number, tsDelta: number, vnet: VirtioNetHeader | undefined): void {
    if ((seqDelta === 0 && tsDelta === 0) || !(f.tcp.flags & TcpFlag.ACK)) {
      this.outputs.toReplica(slot, frame, vnet);
      return;
    }
    const copy = this.ingressCopies.copy(frame);
    const slab = this.ingressCopies.lastSlab;
    f.rebind(copy);
    // A partial checksum (left for the device) does not cover the fields we change: leave it.
    const partial = vnet !== undefined && (vnet.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) !== 0;
    if (!translateForBackup(f, seqDelta, tsDelta, this.opts, partial)) this.badTcpOptions++;
    this.outputs.toReplica(slot, copy, vnet);
    this.ingressCopies.release(slab); // reusable after the next flush (`endBreath`)
  }

  private flushFlowIngress(flow: ShadowFlow): void {
    const waiting = flow.ingressHeld;
    flow.ingressHeld = [];
    for (const held of waiting) {
      const f = decodeFrame(held.frame, this.frame);
      if (flow.mode === 'carried') {
        this.toCarried(f, held.frame, flow, held.vnet);
        continue;
      }
      const standby = this.replicas.standby;
      if (standby && flow.tcp) this.sendTranslated(f, held.frame, standby.id, flow.tcp.seqDelta, flow.tcp.tsDelta, held.vnet);
    }
  }

  // ───────────────────────── VM output ─────────────────────────

  /** A frame from the VM in port slot `slot`; its role decides what happens to it. */
  fromVm(slot: SlotId, frame: Buffer, nowUs: number, vnet?: VirtioNetHeader): void {
    this.nowUs = nowUs;
    const side = this.replicas.sideOf(slot);
    if (side === -1) {
      this.failover.deadSlotFrames++;
      return;
    }
    const origin: Origin = side === PRIMARY ? 'primary' : 'backup';
    this.frames[origin]++;
    if (side === PRIMARY) this.silence.noteActive(nowUs);
    const f = decodeFrame(frame, this.frame);
    if (f.error) {
      this.countMalformed(f.error, origin);
      if (side === PRIMARY && this.config.policy.malformedFromVm === 'forward-primary') this.outputs.toClient(frame, vnet);
      else if (side === BACKUP) this.backupFramesSuppressed++;
      return;
    }
    const ip = f.l3 === 'ipv4' || f.l3 === 'ipv6';
    if (side === PRIMARY && (f.l4 === 'icmp' || f.l4 === 'icmpv6') && isProbeReply(f)) {
      this.failover.probeReplies++;
      return;
    }
    if (!this.replicator.comparing) {
      // DEGRADED or FAILED_OVER: the active replica's output flows unchecked (counted),
      // translated on flows carried over from before a failover.
      if (side !== PRIMARY) {
        this.backupFramesSuppressed++;
        return;
      }
      if (this.carriedFlows > 0 && ip) {
        const entry = this.egressLookup[PRIMARY].find(f, nowUs);
        if (entry && entry.state.mode === 'carried') {
          this.fromCarried(f, frame, entry.state, vnet);
          return;
        }
      }
      this.countPolicy(this.replicator.state === 'FAILED_OVER' ? 'failed-over' : 'degraded', 'forward-primary');
      this.outputs.toClient(frame, vnet);
      return;
    }
    if (ip) {
      const flow = this.settle(this.egressLookup[side].find(f, nowUs, () => this.newFlow(f, 'egress'))!.state);
      if (flow.mode !== 'compare') {
        if (side !== PRIMARY) this.backupFramesSuppressed++;
        else if (flow.mode === 'carried') this.fromCarried(f, frame, flow, vnet);
        else this.outputs.toClient(frame, vnet);
        return;
      }
      if (flow.stream) this.egressTcp(side, f, frame, flow, nowUs, vnet);
      else this.egressDatagram(side, f, frame, flow, nowUs, vnet);
      return;
    }
    const cls = f.l3 === 'arp' ? 'arp' : 'ethertype';
    const action: FrameAction = f.l3 === 'arp' ? this.config.policy.arp : this.config.policy.otherEtherTypes;
    this.countPolicy(cls === 'arp' ? 'arp' : `ethertype-0x${f.etherType.toString(16).padStart(4, '0')}`, action);
    if (action === 'compare') {
      const flow = this.settle(this.nonIpFlow(f, cls));
      this.egressDatagram(side, f, frame, flow, nowUs, vnet);
      return;
    }
    if (side === BACKUP) this.backupFramesSuppressed++;
    else if (action === 'forward-primary') this.outputs.toClient(frame, vnet);
  }

  private egressTcp(side: Side, f: DecodedFrame, frame: Buffer, flow: ShadowFlow, nowUs: number, vnet: VirtioNetHeader | undefined): void {
    const tcp = flow.tcp!;
    const stream = flow.stream!;
    const ep = tcp.replicas[side];
    if ((f.tcp.flags & TcpFlag.SYN) && ep.synSeen && ep.seqBase !== f.tcp.seq && (flow.closed[0] || flow.closed[1])) {
      this.restartConnection(flow);
    }
    let bytes = frame;
    if (side === PRIMARY) {
      bytes = this.heldPool.copy(frame);
      f.rebind(bytes);
    }
    const seg = this.segment;
    if (!normalizeTcp(f, ep, this.opts, seg)) this.badTcpOptions++;
    if (seg.fin || seg.rst) flow.closed[side] = true;
    if (flow.recent) flow.remember(side, side === PRIMARY ? bytes : this.copier.copy(frame), nowUs);
    if (side === PRIMARY) {
      const hasAck = (f.tcp.flags & TcpFlag.ACK) !== 0;
      flow.held.hold(bytes, this.heldPool.lastSlab, segmentEnd(seg), seg.rst, hasAck, f.tcp.ack, seg.payload.length, nowUs, vnet);
    } else {
      this.backupFramesSuppressed++;
    }
    const start = seg.position;
    const end = segmentEnd(seg);
    if (this.replicator.state !== 'COMPARING') {
      // Checkpointing: all held output goes when it is done; comparison restarts past what is said meanwhile.
      stream.noteExtent(side, seg);
    } else {
      if (stream.append(side, seg)) this.onMismatch(flow, nowUs);
      if (side === BACKUP && flow.ingressHeld.length > 0 && tcp.backupDeltaKnown) this.flushFlowIngress(flow);
      this.afterCompare(flow, nowUs);
    }
    if (side === BACKUP && end !== start) {
      this.logStandby(flow, frame, start, end, vnet);
      this.silence.noteStandby(nowUs);
      if (nowUs - this.vmTemplates.atUs > TEMPLATE_REFRESH_US) this.keepTemplate(f, frame, nowUs);
    }
  }

  private keepTemplate(f: DecodedFrame, frame: Buffer, nowUs: number): void {
    // Whole frames (decodable), once a second at most.
    if (f.l3 === 'ipv4') this.vmTemplates.v4 = Buffer.from(frame);
    else this.vmTemplates.v6 = Buffer.from(frame);
    this.vmTemplates.atUs = nowUs;
  }

  /** Keeps a standby frame the client has not received in any form, for failover. */
  private logStandby(flow: ShadowFlow, frame: Buffer, start: number, end: number, vnet: VirtioNetHeader | undefined): void {
    const released = flow.held.releasedEnd;
    if (released !== null && (flow.stream ? seqLe(end, released) : end <= released)) return;
    flow.standbyLog.add(frame, start, end, vnet);
  }

  private egressDatagram(side: Side, f: DecodedFrame, frame: Buffer, flow: ShadowFlow, nowUs: number, vnet: VirtioNetHeader | undefined): void {
    const cmp = flow.datagrams!;
    let bytes = frame;
    if (side === PRIMARY) {
      bytes = this.heldPool.copy(frame);
      f.rebind(bytes);
    }
    const content = f.l3 === 'ipv4' || f.l3 === 'ipv6' ? datagramContent(f) : f.buf.subarray(f.l3Offset, f.l3End);
    if (flow.recent) flow.remember(side, side === PRIMARY ? bytes : this.copier.copy(frame), nowUs);
    if (side === PRIMARY) {
      flow.held.hold(bytes, this.heldPool.lastSlab, cmp.sent[PRIMARY] + 1, false, false, 0, content.length, nowUs, vnet);
    } else {
      this.backupFramesSuppressed++;
    }
    if (this.replicator.state !== 'COMPARING') return;
    if (cmp.append(side, content)) this.onMismatch(flow, nowUs);
    this.afterCompare(flow, nowUs);
    if (side === BACKUP && flow.report.protocol !== 'arp' && flow.report.protocol !== 'ethertype') {
      this.logStandby(flow, frame, cmp.sent[BACKUP] - 1, cmp.sent[BACKUP], vnet);
      this.silence.noteStandby(nowUs);
    }
  }

  private afterCompare(flow: ShadowFlow, nowUs: number): void {
    if (flow.mismatch) return; // held until the checkpoint answers
    flow.held.releaseReady(flow);
    const released = flow.held.releasedEnd;
    if (released !== null && flow.standbyLog.length > 0) flow.standbyLog.prune(released);
    const hw = this.config.flowHighWater;
    if (flow.held.bytes > hw.bytes || flow.held.length > hw.frames || flow.unmatchedBytes > hw.bytes) {
      this.replicator.request('queue', flow.name, nowUs);
      return;
    }
    const total = this.config.totalHighWater;
    if (this.held.bytes > total.bytes || this.held.frames > total.frames) this.replicator.request('queue', flow.name, nowUs);
  }

  private onMismatch(flow: ShadowFlow, nowUs: number): void {
    const m = flow.mismatch!;
    flow.noteMismatch(m, nowUs);
    this.totals.mismatches++;
    this.outputs.log('warn', 'mismatch', { flow: flow.name, kind: m.kind, offset: m.offset, primary: m.primary, backup: m.backup });
    if (flow.recent && this.divergences.length < MAX_DIVERGENCES) {
      this.divergences.push({ flow: flow.name, mismatch: flow.report.mismatchList[flow.report.mismatchList.length - 1] ?? { ...m, timeUs: nowUs }, frames: [...flow.recent] });
    }
    this.request('mismatch', flow.name, nowUs);
  }

  // ───────────────────────── after failover ─────────────────────────

  /**
   * A frame of a carried-over flow from the promoted replica: what the client
   * already received from the old primary is not sent again; the rest goes
   * out in the client's space.
   */
  private fromCarried(f: DecodedFrame, frame: Buffer, flow: ShadowFlow, vnet: VirtioNetHeader | undefined): void {
    const c = flow.carried!;
    if (!flow.stream) {
      c.datagramsSeen++;
      if (c.releasedEnd !== null && c.datagramsSeen <= c.releasedEnd) {
        this.failover.duplicatesDropped++;
        return;
      }
      this.outputs.toClient(frame, vnet);
      return;
    }
    const seg = this.segment;
    const ep = flow.tcp!.replicas[c.side];
    if (!normalizeTcp(f, ep, this.opts, seg)) this.badTcpOptions++;
    const start = seg.position;
    const end = segmentEnd(seg);
    let out: Buffer;
    if (c.releasedEnd !== null && end !== start && seqLt(start, c.releasedEnd)) {
      if (seqLe(end, c.releasedEnd)) {
        this.failover.duplicatesDropped++;
        return;
      }
      // Part of it reached the client from the old primary: send the rest only.
      const synUnit = seg.syn ? 1 : 0;
      const skip = Math.min(seqDiff(start, c.releasedEnd) - synUnit, f.payloadLength);
      out = trimmedTcpCopy(f, Math.max(0, skip), seg.syn ? TcpFlag.SYN : 0, this.trimScratch);
      this.failover.trimmed++;
      decodeFrame(out, this.trimScratch);
      this.translateOut(this.trimScratch, out, c, vnet, null);
      return;
    }
    out = this.ingressCopies.copy(frame);
    const slab = this.ingressCopies.lastSlab;
    f.rebind(out);
    this.translateOut(f, out, c, vnet, slab);
  }

  private translateOut(f: DecodedFrame, out: Buffer, c: NonNullable<ShadowFlow['carried']>, vnet: VirtioNetHeader | undefined, slab: Slab | null): void {
    const partial = vnet !== undefined && (vnet.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) !== 0;
    if (!translateForClient(f, c.seqDelta, c.tsDelta, this.opts, partial)) this.badTcpOptions++;
    this.failover.translatedFrames++;
    this.outputs.toClient(out, vnet);
    if (slab) this.ingressCopies.release(slab);
  }

  /**
   * The primary is dead: promote the backup. Refused (false) when there is
   * no backup, or when it is stale (DEGRADED: it missed a checkpoint, so it
   * may not have said what the clients received).
   */
  failoverNow(cause: FailoverCause, detail: string, nowUs: number, detectedUs = nowUs): boolean {
    this.nowUs = nowUs;
    const standby = this.replicas.standby;
    const why = !standby ? 'no backup' : !this.replicator.comparing ? `the backup is stale (state ${this.replicator.state})` : null;
    if (why) {
      this.failover.refused++;
      this.outputs.log('warn', 'failover-refused', { cause, detail, why });
      return false;
    }
    const dead = this.replicas.active;
    const survivor = this.replicas.promote();
    const record: FailoverRecord = {
      epoch: this.replicas.generation, cause, detail, detectedUs, promotedUs: nowUs, survivor: survivor.name,
      flowsCarried: 0, flowsLost: 0, backlogFrames: 0, discardedFrames: 0,
    };
    const wasHolding = this.replicator.holdingIngress;
    this.replicator.failedOver(nowUs, `${cause}: ${detail}`);
    // The dead primary's unconfirmed output never reaches a client.
    record.discardedFrames = this.held.discardAll();
    for (const e of this.flows.entries()) this.carry(e.state, survivor.id, record);
    for (const flow of this.nonIpFlows.values()) flow.mode = 'solo';
    this.failover.failovers++;
    this.failover.discardedFrames += record.discardedFrames;
    this.failover.flowsCarried += record.flowsCarried;
    this.failover.flowsLost += record.flowsLost;
    this.failover.backlogFrames += record.backlogFrames;
    this.failoverHistory.push(record);
    if (this.failoverHistory.length > MAX_FAILOVER_HISTORY) this.failoverHistory.shift();
    // Client frames held by a checkpoint in progress go to the survivor (carried flows translated).
    if (wasHolding || this.ingressHold.length > 0) this.flushIngressHold();
    this.silence.reset(nowUs);
    if (this.config.failover.announce) this.announce();
    this.outputs.log('warn', 'failover', {
      cause, detail, dead: dead.name, survivor: survivor.name, detectionMs: (nowUs - detectedUs) / 1000,
      flowsCarried: record.flowsCarried, flowsLost: record.flowsLost, backlogFrames: record.backlogFrames, discardedFrames: record.discardedFrames,
    });
    this.outputs.event?.({ type: 'failover', epoch: record.epoch, survivor: survivor.id, record });
    return true;
  }

  /** Turns a compared flow into one the survivor serves alone, translated; sends its backlog. */
  private carry(flow: ShadowFlow, survivor: SlotId, record: FailoverRecord): void {
    if (flow.mode !== 'compare') {
      if (flow.mode === 'carried') this.carriedFlows--;
      // Only the dead replica had it.
      flow.mode = 'solo';
      record.flowsLost++;
      return;
    }
    this.settle(flow);
    const releasedEnd = flow.held.releasedEnd;
    let seqDelta = 0, tsDelta = 0, seen = 0;
    if (flow.tcp) {
      // Nothing released: the client never saw the primary's ISN or TSvals, so none to translate into.
      if (releasedEnd !== null) {
        seqDelta = flow.tcp.seqDelta;
        tsDelta = flow.tcp.tsDelta;
      }
    } else {
      seen = flow.datagrams!.sent[STANDBY_SIDE];
    }
    flow.carried = { slot: survivor, side: STANDBY_SIDE, seqDelta, tsDelta, releasedEnd, datagramsSeen: seen };
    flow.mode = 'carried';
    this.carriedFlows++;
    record.flowsCarried++;
    const backlog = flow.standbyLog.drain();
    for (const b of backlog) this.sendBacklog(flow, b);
    record.backlogFrames += backlog.length;
    flow.standbyLog.forget(backlog);
    if (flow.ingressHeld.length > 0) this.flushFlowIngress(flow);
  }

  private sendBacklog(flow: ShadowFlow, b: StandbyFrame): void {
    if (!flow.stream) {
      const c = flow.carried!;
      if (c.releasedEnd === null || b.end > c.releasedEnd) this.outputs.toClient(b.frame, b.vnet);
      return;
    }
    const f = decodeFrame(b.frame, this.frame);
    if (f.error || f.l4 !== 'tcp') return;
    // Its copy is ours: translated in place (fromCarried copies again; backlogs are short).
    this.fromCarried(f, b.frame, flow, b.vnet);
  }

  /**
   * The backup is dead: the primary's output is released unchecked from now
   * on, and every flow continues unprotected until a new backup is built.
   */
  backupLost(cause: string, nowUs: number): boolean {
    this.nowUs = nowUs;
    const lost = this.replicas.loseStandby();
    if (!lost) return false;
    this.failover.backupsLost++;
    for (const e of this.flows.entries()) this.makeSolo(e.state);
    for (const flow of this.nonIpFlows.values()) this.makeSolo(flow);
    this.replicator.backupLost(nowUs, `backup lost: ${cause}`);
    this.held.releaseAll();
    this.flushIngressHold();
    this.outputs.log('warn', 'backup-lost', { slot: lost.name, cause, flowsUnprotected: this.failover.flowsUnprotected });
    this.outputs.event?.({ type: 'backup-lost', slot: lost.id, cause });
    return true;
  }

  /** Tells the client side where the VM's addresses are now (the survivor's MAC). */
  private announce(): void {
    for (const t of [this.vmTemplates.v4, this.vmTemplates.v6]) {
      const frame = t && buildAnnouncement(t);
      if (frame) {
        this.outputs.toClient(frame);
        this.failover.announcements++;
      }
    }
  }

  private makeSolo(flow: ShadowFlow): void {
    if (flow.mode !== 'compare') return;
    flow.mode = 'solo';
    flow.standbyLog.clear();
    this.failover.flowsUnprotected++;
  }

  // ───────────────────────── time and checkpoints ─────────────────────────

  /** Advance time: checkpoint timeouts, the unmatched-age trigger, idle flows. */
  tick(nowUs: number): void {
    this.nowUs = nowUs;
    this.replicator.tick(nowUs);
    if (this.replicator.comparing && this.replicas.standby) this.checkSilence(nowUs);
    if (this.replicator.state === 'COMPARING') {
      const oldest = this.held.oldest();
      if (oldest && nowUs - oldest.heldAtUs > this.config.maxUnmatchedAgeMs * 1000) {
        this.request('timeout', oldest.queue.flowName, nowUs);
      }
    }
    if (nowUs >= this.nextExpiryUs) {
      this.nextExpiryUs = nowUs + EXPIRY_INTERVAL_US;
      const c = this.config;
      const shortest = Math.min(c.closedTcpLingerMs, c.datagramIdleMs, c.tcpIdleMs) * 1000;
      this.flows.expire(nowUs, (flow) => {
        if (flow.held.length > 0) return Infinity;
        if (!flow.stream) return c.datagramIdleMs * 1000;
        return (flow.closed[0] && flow.closed[1]) || flow.stream.rstAgreed ? c.closedTcpLingerMs * 1000 : c.tcpIdleMs * 1000;
      }, shortest);
    }
  }

  private checkSilence(nowUs: number): void {
    const template = this.vmTemplates.v4 ?? this.vmTemplates.v6;
    const verdict = this.silence.tick(nowUs, template !== null);
    this.failover.silenceFalseAlarms = this.silence.falseAlarms;
    if (verdict === 'probe') {
      const probe = buildEchoProbe(template!, this.failover.probesSent++);
      if (probe) this.outputs.toReplica(this.replicas.active.id, probe);
      return;
    }
    if (verdict === 'dead') {
      const since = this.silence.silentSinceUs;
      const ms = ((nowUs - since) / 1000).toFixed(1);
      this.failoverNow('silence', `primary ${this.replicas.active.name} silent for ${ms} ms while the backup answered${this.failover.probesSent ? '; probe unanswered' : ''}`, nowUs, since);
    }
  }

  /**
   * The end of one breath: the driver has flushed every port, so no send
   * queue still points at a released frame and its memory may be reused.
   */
  endBreath(): void {
    this.heldPool.endBreath();
    this.ingressCopies.endBreath();
    this.standbyCopies.endBreath();
  }

  /** Ask for a checkpoint (triggers and the control socket). */
  request(reason: CheckpointReason, flow: string | undefined, nowUs: number): boolean {
    return this.replicator.request(reason, flow, nowUs);
  }

  checkpointDone(epoch: number, nowUs: number, ms?: number): void {
    this.nowUs = nowUs;
    this.replicator.done(epoch, nowUs, ms);
  }

  checkpointFailed(epoch: number, error: string, nowUs: number): void {
    this.nowUs = nowUs;
    this.replicator.failed(epoch, error, nowUs);
  }

  agentConnected(up: boolean, nowUs: number): void {
    this.nowUs = nowUs;
    this.replicator.agentConnected(up, nowUs);
  }

  /**
   * Every stage event goes through here, to each stage's own handling, in
   * data-path order, then to the driver.
   */
  private dispatch(ev: StageEvent): void {
    switch (ev.type) {
      case 'checkpoint-begin':
        // Ingress is held from now on (Replicator.holdingIngress); nothing else changes yet.
        break;
      case 'checkpoint-done':
        // The backup now holds the state that produced the primary's output: let it all go.
        this.held.releaseAll();
        // Every flow restarts comparison; each does so lazily, on its next frame (see `settle`).
        this.checkpointEpoch++;
        this.outputs.log('info', 'checkpoint-done', { epoch: ev.epoch });
        this.flushIngressHold();
        break;
      case 'reprotect': {
        const slot = this.replicas.makeBackup(ev.slot);
        this.outputs.log('info', 'reprotected', { epoch: ev.epoch, backup: slot.name, roles: this.replicas.describe(), note: 'flows born before stay unprotected; new flows are compared' });
        break;
      }
      default:
        break;
    }
    this.outputs.event?.(ev);
  }

  private flushIngressHold(): void {
    const held = this.ingressHold;
    this.ingressHold = [];
    this.ingressHoldBytes = 0;
    for (const h of held) this.forwardIngress(h.frame, this.nowUs, h.vnet);
  }

  private onStateChanged(from: ReplicationState, to: ReplicationState, why: string): void {
    this.outputs.log(to === 'DEGRADED' || to === 'FAILED_OVER' ? 'warn' : 'info', 'state', { from, to, why });
    if (to === 'DEGRADED') {
      // Primary output flows unchecked while degraded; what was held goes now, in order.
      this.held.releaseAll();
      this.flushIngressHold();
    }
  }

  // ───────────────────────── flows ─────────────────────────

  /** Brings a flow up to the last checkpoint before it handles a frame. */
  private settle(flow: ShadowFlow): ShadowFlow {
    if (flow.epoch !== this.checkpointEpoch) {
      flow.epoch = this.checkpointEpoch;
      if (flow.mode === 'compare') flow.resync(this.config.resync);
    }
    return flow;
  }

  private newFlow(f: DecodedFrame, dir: 'ingress' | 'egress'): ShadowFlow {
    this.flowsCreated++;
    const flow = new ShadowFlow(describeFlow(f, dir), flowProtocolOf(f), this.held, this.backupCopies, this.totals, this.config.captureDivergence, this.standbyCopies);
    flow.epoch = this.checkpointEpoch;
    if (!this.replicas.standby) {
      flow.mode = 'solo';
      this.failover.flowsUnprotected++;
    }
    this.addReport(flow.report);
    return flow;
  }

  private nonIpFlow(f: DecodedFrame, cls: 'arp' | 'ethertype'): ShadowFlow {
    const name = cls === 'arp' ? `arp vlan ${f.vlanKey}` : `ethertype 0x${f.etherType.toString(16).padStart(4, '0')} vlan ${f.vlanKey}`;
    let flow = this.nonIpFlows.get(name);
    if (!flow) {
      flow = new ShadowFlow(name, cls, this.held, this.backupCopies, this.totals, this.config.captureDivergence, this.standbyCopies);
      flow.epoch = this.checkpointEpoch;
      this.nonIpFlows.set(name, flow);
      this.addReport(flow.report);
    }
    if (flow.mode !== 'compare' && this.replicas.standby) flow.mode = 'compare';
    return flow;
  }

  private addReport(r: FlowReport): void {
    this.reports.push(r);
    if (this.reports.length > this.reportLimit) this.reports.shift();
  }

  /** A new connection on the 4-tuple of a closed one (port reuse): start its state afresh. */
  private restartConnection(flow: ShadowFlow): void {
    const tcp = flow.tcp!;
    for (const ep of [tcp.replicas[0], tcp.replicas[1], tcp.client]) {
      ep.synSeen = false; ep.tsSeen = false; ep.ackSeen = false; ep.seqBase = 0; ep.tsBase = 0;
    }
    flow.stream!.started = false;
    flow.closed[0] = flow.closed[1] = false;
  }

  private onEvict(e: FlowEntry<ShadowFlow>, why: 'lru' | 'idle'): void {
    const flow = e.state;
    flow.syncReport();
    if (flow.mode === 'carried') this.carriedFlows--;
    flow.standbyLog.clear();
    if (flow.held.length > 0) {
      // Its held output stays in the global queue; a checkpoint releases it.
      this.outputs.log('warn', 'flow-evicted-with-held-output', { flow: flow.name, why, frames: flow.held.length });
      this.request('queue', flow.name, this.nowUs);
    }
  }

  private countMalformed(reason: MalformedReason, origin: Origin): void {
    const c = (this.malformed[reason] ??= zeroCounts());
    if (c[origin]++ === 0) this.outputs.log('warn', 'malformed-frame', { reason, from: origin, note: 'first of its kind; further ones are counted' });
  }

  private countPolicy(cls: string, action: string): void {
    const k = `${cls}/${action}`;
    this.policyActions[k] = (this.policyActions[k] ?? 0) + 1;
  }

  /**
   * Every stage's counters in one shape (stage → counter → value), for
   * status and metrics: nothing reads a stage's fields directly.
   */
  stageCounters(): Record<string, Record<string, number>> {
    const r = this.replicator;
    return {
      ingress: {
        client_frames: this.frames.client,
        held_during_checkpoint: this.ingressHeldFrames,
        hold_dropped: this.ingressHoldDropped,
      },
      compare: {
        primary_frames: this.frames.primary,
        backup_frames: this.frames.backup,
        matched_bytes: this.totals.matchedBytes,
        mismatches: this.totals.mismatches,
        out_of_order_dropped: this.totals.outOfOrderDropped,
        bad_tcp_options: this.badTcpOptions,
        flows_created: this.flowsCreated,
        flows_evicted: this.flows.evictions,
      },
      release: {
        released_frames: this.held.releasedFrames,
        released_payload_bytes: this.held.releasedPayloadBytes,
        backup_frames_suppressed: this.backupFramesSuppressed,
        discarded_frames: this.held.discardedFrames,
      },
      replicate: {
        checkpoints_done: r.completed,
        checkpoints_failed: r.failures,
        checkpoints_coalesced: r.coalesced,
        reprotects_done: r.reprotects,
        reprotects_failed: r.reprotectFailures,
      },
      failover: { ...this.failover },
    };
  }

  /** Brings every flow's report up to date (call before reading `reports`). */
  syncReports(): void {
    for (const e of this.flows.entries()) e.state.syncReport();
    for (const flow of this.nonIpFlows.values()) flow.syncReport();
  }
}
