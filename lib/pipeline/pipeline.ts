/**
 * ShadowPipeline: the stages of the data path joined for one frame at a
 * time. Pure: frames and times come in, frames go out through `outputs`;
 * no sockets, no clock of its own (the live bridge and the replay both
 * drive it).
 *
 *   client frame ──► ingress: to the primary as is, to the backup translated
 *   VM frame ──► decode ─► flow ─► normalize ─► compare ─► release ─► client
 *
 * Counters for everything that is not a plain pass: malformed input by
 * reason and side, policy actions, held and dropped ingress, evictions.
 */
import { MalformedReason, TcpFlag } from '../packet/constants';
import { DecodedFrame, decodeFrame } from '../packet/frame';
import { SlabCopier, SlabPool } from '../packet/slab';
import { TcpOptions } from '../packet/tcp-options';
import { FlowEntry, FlowTable } from '../flow/flow-table';
import { describeFlow, flowProtocolOf } from '../flow/key';
import { FlowLookup } from '../flow/key-cache';
import { BACKUP, PRIMARY, Side, StreamSegment } from '../compare/tcp-stream';
import { datagramContent } from '../normalize/datagram';
import { learnFromSyn, newStreamSegment, normalizeTcp, segmentEnd } from '../normalize/tcp';
import { refersToVmSpace, translateForBackup } from '../rewrite/ingress';
import { HeldQueues } from '../release/held';
import { CheckpointReason, CheckpointRecord, CheckpointRequest, ReplicationState, Replicator } from '../replicate/replicator';
import { FrameAction, PipelineConfig } from './config';
import { VIRTIO_NET_HDR_F_NEEDS_CSUM, VirtioNetHeader } from '../io/port';
import { FlowReport, RecentFrame, ShadowFlow } from './shadow-flow';

/** Outputs take the frame's virtio-net header along (GSO, partial checksum), when it came with one. */
export interface PipelineOutputs {
  toPrimary(frame: Buffer, vnet?: VirtioNetHeader): void;
  toBackup(frame: Buffer, vnet?: VirtioNetHeader): void;
  toClient(frame: Buffer, vnet?: VirtioNetHeader): void;
  /** Ask the sync agent for a checkpoint (protocol v1 `checkpoint`). */
  sendCheckpoint(req: CheckpointRequest): void;
  log(level: 'info' | 'warn', event: string, fields: Record<string, unknown>): void;
}

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

export class ShadowPipeline {
  readonly replicator: Replicator;
  readonly flows: FlowTable<ShadowFlow>;
  readonly held: HeldQueues;
  /** Every flow seen, for reports (most recent `reportLimit`). */
  readonly reports: FlowReport[] = [];
  readonly divergences: Divergence[] = [];

  readonly frames: Counts = zeroCounts();
  readonly malformed: Record<string, Counts> = {};
  /** Policy actions taken, by "class/action", e.g. "arp/forward-primary". */
  readonly policyActions: Record<string, number> = {};
  /** Running totals since start (monotonic, unlike sums over `reports`, which is bounded). */
  readonly totals = { matchedBytes: 0, mismatches: 0 };
  backupFramesSuppressed = 0;
  badTcpOptions = 0;
  ingressHeldFrames = 0;
  ingressHoldDropped = 0;
  flowsCreated = 0;

  private readonly frame = new DecodedFrame();
  /** Lookups that remember their last flow: one per direction and side. */
  private readonly ingressLookup: FlowLookup<ShadowFlow>;
  private readonly egressLookup: [FlowLookup<ShadowFlow>, FlowLookup<ShadowFlow>];
  private readonly opts = new TcpOptions();
  private readonly segment: StreamSegment = newStreamSegment();
  /** Copies nobody releases explicitly (held ingress, divergence captures). */
  private readonly copier = new SlabCopier();
  /** The backup's bytes comparators keep until the primary catches up; never sent anywhere. */
  private readonly backupCopies: SlabPool;
  /** Translated client frames for the backup: they only have to last until the ports are flushed. */
  private readonly ingressCopies = new SlabPool(true, true);
  /** Copies of held primary frames: reused once released and flushed (see `endBreath`). */
  private readonly heldPool: SlabPool;
  private readonly nonIpFlows = new Map<string, ShadowFlow>();
  private ingressHold: HeldIngress[] = [];
  private ingressHoldBytes = 0;
  private nextExpiryUs = 0;
  /** Checkpoints completed: a flow whose `epoch` is behind is resynchronized before its next frame. */
  private checkpointEpoch = 0;
  private nowUs = 0;

  constructor(
    readonly config: PipelineConfig,
    private readonly outputs: PipelineOutputs,
    startUs: number,
    agentConnected: boolean,
    private readonly reportLimit = 100_000,
  ) {
    // Divergence capture keeps frames beyond their release: no slab reuse then.
    this.heldPool = new SlabPool(!config.captureDivergence);
    this.backupCopies = new SlabPool(true, false);
    this.held = new HeldQueues((frame, vnet) => outputs.toClient(frame, vnet), this.heldPool);
    this.flows = new FlowTable<ShadowFlow>(config.maxFlows, (e, why) => this.onEvict(e, why));
    this.ingressLookup = new FlowLookup(this.flows, 'ingress');
    this.egressLookup = [new FlowLookup(this.flows, 'egress'), new FlowLookup(this.flows, 'egress')];
    this.replicator = new Replicator(config.replicator, {
      sendCheckpoint: (req) => outputs.sendCheckpoint(req),
      checkpointDone: (rec) => this.onCheckpointDone(rec),
      stateChanged: (from, to, why) => this.onStateChanged(from, to, why),
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
    const f = decodeFrame(frame, this.frame);
    if (f.error) {
      this.countMalformed(f.error, 'client');
      if (this.config.policy.malformedFromClient === 'drop') return;
      this.outputs.toPrimary(frame, vnet);
      this.outputs.toBackup(frame, vnet);
      return;
    }
    this.outputs.toPrimary(frame, vnet);
    if (f.l4 !== 'tcp' || f.fragment) {
      this.outputs.toBackup(frame, vnet);
      return;
    }
    const isSyn = (f.tcp.flags & TcpFlag.SYN) !== 0;
    const entry = this.ingressLookup.find(f, nowUs, isSyn ? () => this.newFlow(f, 'ingress') : undefined);
    if (!entry) {
      // A flow no VM has spoken in: nothing to translate (the delta is zero).
      this.outputs.toBackup(frame, vnet);
      return;
    }
    const flow = this.settle(entry.state);
    const tcp = flow.tcp;
    if (!tcp) {
      this.outputs.toBackup(frame, vnet);
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
    this.sendToBackup(f, frame, flow, vnet);
  }

  private sendToBackup(f: DecodedFrame, frame: Buffer, flow: ShadowFlow, vnet: VirtioNetHeader | undefined): void {
    const tcp = flow.tcp!;
    const seqDelta = tcp.seqDelta, tsDelta = tcp.tsDelta;
    if ((seqDelta === 0 && tsDelta === 0) || !(f.tcp.flags & TcpFlag.ACK)) {
      this.outputs.toBackup(frame, vnet);
      return;
    }
    const copy = this.ingressCopies.copy(frame);
    const slab = this.ingressCopies.lastSlab;
    f.rebind(copy);
    // A partial checksum (left for the device) does not cover the fields we change: leave it.
    const partial = vnet !== undefined && (vnet.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) !== 0;
    if (!translateForBackup(f, seqDelta, tsDelta, this.opts, partial)) this.badTcpOptions++;
    this.outputs.toBackup(copy, vnet);
    this.ingressCopies.release(slab); // reusable after the next flush (`endBreath`)
  }

  private flushFlowIngress(flow: ShadowFlow): void {
    const waiting = flow.ingressHeld;
    flow.ingressHeld = [];
    for (const held of waiting) {
      const f = decodeFrame(held.frame, this.frame);
      this.sendToBackup(f, held.frame, flow, held.vnet);
    }
  }

  // ───────────────────────── VM output ─────────────────────────

  fromVm(side: Side, frame: Buffer, nowUs: number, vnet?: VirtioNetHeader): void {
    this.nowUs = nowUs;
    const origin: Origin = side === PRIMARY ? 'primary' : 'backup';
    this.frames[origin]++;
    const f = decodeFrame(frame, this.frame);
    if (f.error) {
      this.countMalformed(f.error, origin);
      if (side === PRIMARY && this.config.policy.malformedFromVm === 'forward-primary') this.outputs.toClient(frame, vnet);
      else if (side === BACKUP) this.backupFramesSuppressed++;
      return;
    }
    if (!this.replicator.comparing) {
      // DEGRADED: the backup is stale; the primary's output flows unchecked (counted).
      if (side === PRIMARY) {
        this.countPolicy('degraded', 'forward-primary');
        this.outputs.toClient(frame, vnet);
      } else {
        this.backupFramesSuppressed++;
      }
      return;
    }
    if (f.l3 === 'ipv4' || f.l3 === 'ipv6') {
      const flow = this.settle(this.egressLookup[side].find(f, nowUs, () => this.newFlow(f, 'egress'))!.state);
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
    if (this.replicator.state !== 'COMPARING') {
      // Checkpointing: all held output goes when it is done; comparison restarts past what is said meanwhile.
      stream.noteExtent(side, seg);
      return;
    }
    if (stream.append(side, seg)) this.onMismatch(flow, nowUs);
    if (side === BACKUP && flow.ingressHeld.length > 0 && tcp.backupDeltaKnown) this.flushFlowIngress(flow);
    this.afterCompare(flow, nowUs);
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
  }

  private afterCompare(flow: ShadowFlow, nowUs: number): void {
    if (flow.mismatch) return; // held until the checkpoint answers
    flow.held.releaseReady(flow);
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

  // ───────────────────────── time and checkpoints ─────────────────────────

  /** Advance time: checkpoint timeouts, the unmatched-age trigger, idle flows. */
  tick(nowUs: number): void {
    this.nowUs = nowUs;
    this.replicator.tick(nowUs);
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

  /**
   * The end of one breath: the driver has flushed every port, so no send
   * queue still points at a released frame and its memory may be reused.
   */
  endBreath(): void {
    this.heldPool.endBreath();
    this.ingressCopies.endBreath();
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

  private onCheckpointDone(rec: CheckpointRecord): void {
    // The backup now holds the state that produced the primary's output: let it all go.
    this.held.releaseAll();
    // Every flow restarts comparison; each does so lazily, on its next frame (see `settle`).
    this.checkpointEpoch++;
    this.outputs.log('info', 'checkpoint-done', { epoch: rec.epoch, reason: rec.reason, ms: rec.ms, coalesced: rec.coalesced });
    this.flushIngressHold();
  }

  private flushIngressHold(): void {
    const held = this.ingressHold;
    this.ingressHold = [];
    this.ingressHoldBytes = 0;
    for (const h of held) this.forwardIngress(h.frame, this.nowUs, h.vnet);
  }

  private onStateChanged(from: ReplicationState, to: ReplicationState, why: string): void {
    this.outputs.log(to === 'DEGRADED' ? 'warn' : 'info', 'state', { from, to, why });
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
      flow.resync(this.config.resync);
    }
    return flow;
  }

  private newFlow(f: DecodedFrame, dir: 'ingress' | 'egress'): ShadowFlow {
    this.flowsCreated++;
    const flow = new ShadowFlow(describeFlow(f, dir), flowProtocolOf(f), this.held, this.backupCopies, this.totals, this.config.captureDivergence);
    flow.epoch = this.checkpointEpoch;
    this.addReport(flow.report);
    return flow;
  }

  private nonIpFlow(f: DecodedFrame, cls: 'arp' | 'ethertype'): ShadowFlow {
    const name = cls === 'arp' ? `arp vlan ${f.vlanKey}` : `ethertype 0x${f.etherType.toString(16).padStart(4, '0')} vlan ${f.vlanKey}`;
    let flow = this.nonIpFlows.get(name);
    if (!flow) {
      flow = new ShadowFlow(name, cls, this.held, this.backupCopies, this.totals, this.config.captureDivergence);
      flow.epoch = this.checkpointEpoch;
      this.nonIpFlows.set(name, flow);
      this.addReport(flow.report);
    }
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

  /** Brings every flow's report up to date (call before reading `reports`). */
  syncReports(): void {
    for (const e of this.flows.entries()) e.state.syncReport();
    for (const flow of this.nonIpFlows.values()) flow.syncReport();
  }
}

