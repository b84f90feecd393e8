/**
 * EgressStage: what the VMs say, compared.
 *
 *   VM frame ─► decode ─► role of its slot ─► flow ─► normalize ─► compare ─► held (release stage) ─► client
 *                                                   └─ standby: copy kept in the flow's StandbyLog for failover
 *   carried-over flow (promoted replica) ─► trim what the client has ─► seq/TSval into the client's space ─► client
 *
 * Events: failover carries every compared flow over to the survivor (its
 * backlog beyond the released point goes out at once, translated; flows only
 * the dead replica had are lost and counted; `pass` TCP flows are reset, see
 * `carry`); backup-lost leaves every flow with one replica (`solo`).
 *
 * Flows the policy table took out of comparison (`pass`, `drop-backup-only`)
 * take the `solo` path: the primary's frames go out as they come, the
 * backup's are dropped. A `pass` flow's handshake still teaches the flow
 * both replicas' bases, so the client's frames reach the backup translated. Checkpoints need nothing here: flows resync
 * lazily (FlowRegistry).
 */
import { MalformedReason, TcpFlag } from '../packet/constants';
import { DecodedFrame, decodeFrame } from '../packet/frame';
import { Slab, SlabCopier, SlabPool } from '../packet/slab';
import { TcpOptions } from '../packet/tcp-options';
import { seqDiff, seqGt, seqLe, seqLt } from '../packet/seq';
import { BACKUP, MISMATCH_KINDS, MismatchKind, PRIMARY, Side, StreamSegment, mismatchCounter } from '../compare/tcp-stream';
import { datagramContent } from '../normalize/datagram';
import { learnFromSyn, newStreamSegment, normalizeTcp, segmentEnd } from '../normalize/tcp';
import { prefixTcpCopy, translateForClient, trimmedTcpCopy } from '../rewrite/egress';
import { HeldFrame, HeldQueues, ackMayGo } from '../release/held';
import { StandbyFrame } from '../release/standby-log';
import type { TcpEndpointState } from '../flow/tcp-replica';
import { ReplicaSet, SlotId } from '../failover/roles';
import { buildTcpAck, buildTcpReset, isProbeReply } from '../failover/frames';
import type { CheckpointReason, Replicator } from '../replicate/replicator';
import { VIRTIO_NET_HDR_F_NEEDS_CSUM, VirtioNetHeader } from '../io/port';
import { FrameAction, PipelineConfig } from './config';
import { FailoverRecord, Stage, StageEvent } from './events';
import { FlowRegistry } from './flows';
import { FrameCounts } from './frame-counts';
import { CarriedFlow, FlowReport, NOTHING_HELD, RecentFrame, ShadowFlow } from './shadow-flow';

export interface Divergence {
  flow: string;
  mismatch: FlowReport['mismatchList'][number];
  frames: RecentFrame[];
}

export const MAX_DIVERGENCES = 256;

/** What the failover stage learns from the VMs' frames (liveness, addresses). */
export interface LivenessTap {
  noteActive(nowUs: number): void;
  /** `segments`: the frames it is on the wire (a GSO super-frame's segments). */
  noteStandby(nowUs: number, f: DecodedFrame, frame: Buffer, segments?: number): void;
  probeAnswered(): void;
}

export interface EgressDeps {
  config: PipelineConfig;
  replicas: ReplicaSet;
  replicator: Replicator;
  flows: FlowRegistry;
  held: HeldQueues;
  counts: FrameCounts;
  totals: { matchedBytes: number; mismatches: number; outOfOrderDropped: number; datagramsReordered: number; httpDateNormalized: number; httpDateRejected: number };
  /** Copies of held primary frames (released by the release stage). */
  heldPool: SlabPool;
  liveness: LivenessTap;
  toClient(frame: Buffer, vnet?: VirtioNetHeader): void;
  /** To the VM in this port slot (resets of `pass` flows after a failover). */
  toReplica(slot: SlotId, frame: Buffer): void;
  /** A flow's backup delta just became known: its waiting client frames can go. */
  backupDeltaKnown(flow: ShadowFlow): void;
  log(level: 'info' | 'warn', event: string, fields: Record<string, unknown>): void;
}

/** At most one `client-reset-released` line this often. */
const CLIENT_RESET_LOG_US = 10_000_000;
/**
 * How many times a survivor may resend the same acknowledged bytes, each
 * answered with the client's ACK, before its flow counts as wedged: one
 * resend may cross the ACK in flight; a third is a refusal. With Linux's
 * doubling retransmission timer (200 ms at least) that is about 1.5 s.
 */
const WEDGED_AFTER = 3;
/** `carried-flow-wedged` lines: the first ones, then one per thousand. */
const WEDGED_LOGGED = 10;

export class EgressStage implements Stage {
  readonly stageName = 'compare';
  readonly frames = { primary: 0, backup: 0 };
  readonly divergences: Divergence[] = [];
  backupFramesSuppressed = 0;
  badTcpOptions = 0;
  deadSlotFrames = 0;
  probeReplies = 0;
  /** After failover: promoted-replica frames the client had already acknowledged (dropped). */
  duplicatesDropped = 0;
  /** … cut down to the part the client had not acknowledged. */
  trimmed = 0;
  /**
   * … resending bytes released to the client but not acknowledged by it
   * (sent: the client may never have received them).
   */
  resentUnacked = 0;
  translatedFrames = 0;
  flowsCarried = 0;
  /** Resets of no connection (answers to stray segments), released from the primary uncompared. */
  statelessResets = 0;
  /** Held frames older than `maxUnmatchedAgeMs` let wait because the backup trailed but kept progressing. */
  backupTrailingWaits = 0;
  private lastTrailing: HeldFrame | null = null;
  /** Held frames older than `maxUnmatchedAgeMs` let wait because the client's window was full (or had just opened). */
  windowStalledWaits = 0;
  private lastWindowStalled: HeldFrame | null = null;
  /** Held frames older than `maxUnmatchedAgeMs` let wait because the stream's primary pauses of its own accord (a paced server: PACED_GRACE). */
  pacedWaits = 0;
  private lastPaced: HeldFrame | null = null;
  flowsLost = 0;
  backlogFrames = 0;
  /** Flows left unprotected because their client's checkpoint budget was spent. */
  overBudget = 0;
  /** Held output released without a checkpoint because the client had reset the flow (and the frames in it). */
  clientResetReleases = 0;
  clientResetFramesReleased = 0;
  private clientResetLoggedUs = -Infinity;
  private clientResetReleasesLogged = 0;
  /** `pass` TCP flows found at a failover (to be reset), and the promoted replica's frames on them dropped. */
  passFlowsReset = 0;
  passSurvivorFramesDropped = 0;
  /** ACKs sent to a survivor on the client's behalf, for bytes it resent that the client had acknowledged. */
  private survivorAcks = 0;
  /** Carried flows reset because the survivor refused the client's ACK (survivorDuplicate). */
  private carriedWedged = 0;
  private readonly frame = new DecodedFrame();
  private readonly trimScratch = new DecodedFrame();
  private readonly prefixScratch = new DecodedFrame();
  private prefixReleases = 0;
  private prefixReleasedBytes = 0;
  private readonly opts = new TcpOptions();
  private readonly segment: StreamSegment = newStreamSegment();
  /** Copies nobody releases explicitly (divergence captures). */
  private readonly copier = new SlabCopier();
  /** Translated output of a promoted replica: it only has to last until the ports are flushed. */
  private readonly outCopies = new SlabPool(true, true);

  /** Mismatches by what differed. */
  private readonly mismatchesByKind = Object.fromEntries(MISMATCH_KINDS.map((k) => [k, 0])) as Record<MismatchKind, number>;

  constructor(private readonly d: EgressDeps) {}

  counters(): Record<string, number> {
    return {
      primary_frames: this.frames.primary,
      backup_frames: this.frames.backup,
      matched_bytes: this.d.totals.matchedBytes,
      mismatches: this.d.totals.mismatches,
      out_of_order_dropped: this.d.totals.outOfOrderDropped,
      datagrams_reordered: this.d.totals.datagramsReordered,
      http_date_normalized: this.d.totals.httpDateNormalized,
      http_date_rejected: this.d.totals.httpDateRejected,
      bad_tcp_options: this.badTcpOptions,
      backup_frames_suppressed: this.backupFramesSuppressed,
      dead_slot_frames: this.deadSlotFrames,
      probe_replies: this.probeReplies,
      carried_translated: this.translatedFrames,
      carried_duplicates_dropped: this.duplicatesDropped,
      carried_trimmed: this.trimmed,
      carried_resent_unacked: this.resentUnacked,
      carried_survivor_acks: this.survivorAcks,
      carried_flows_wedged: this.carriedWedged,
      flows_carried: this.flowsCarried,
      flows_lost: this.flowsLost,
      backlog_frames: this.backlogFrames,
      flows_over_checkpoint_budget: this.overBudget,
      client_reset_releases: this.clientResetReleases,
      client_reset_frames_released: this.clientResetFramesReleased,
      policy_pass_flows_reset: this.passFlowsReset,
      policy_pass_survivor_frames_dropped: this.passSurvivorFramesDropped,
      stateless_resets: this.statelessResets,
      backup_trailing_waits: this.backupTrailingWaits,
      window_stalled_waits: this.windowStalledWaits,
      paced_waits: this.pacedWaits,
      prefix_releases: this.prefixReleases,
      prefix_released_bytes: this.prefixReleasedBytes,
      ...Object.fromEntries(MISMATCH_KINDS.map((k) => [mismatchCounter(k), this.mismatchesByKind[k]])),
    };
  }

  endBreath(): void {
    this.outCopies.endBreath();
  }

  handleEvent(ev: StageEvent): void {
    if (ev.type === 'failover') this.carryAll(ev.survivor, ev.record);
    else if (ev.type === 'backup-lost') for (const flow of this.d.flows.all()) this.makeSolo(flow);
  }

  /** A frame from the VM in port slot `slot`; its role decides what happens to it. */
  fromVm(slot: SlotId, frame: Buffer, nowUs: number, vnet?: VirtioNetHeader): void {
    const d = this.d;
    const side = d.replicas.sideOf(slot);
    if (side === -1) {
      this.deadSlotFrames++;
      return;
    }
    const origin = side === PRIMARY ? 'primary' : 'backup';
    this.frames[origin]++;
    if (side === PRIMARY) d.liveness.noteActive(nowUs);
    const f = decodeFrame(frame, this.frame);
    if (f.error) {
      d.counts.malformed(f.error as MalformedReason, origin);
      if (side === PRIMARY && d.config.policy.malformedFromVm === 'forward-primary') d.toClient(frame, vnet);
      else if (side === BACKUP) this.backupFramesSuppressed++;
      return;
    }
    const ip = f.l3 === 'ipv4' || f.l3 === 'ipv6';
    if (side === PRIMARY && (f.l4 === 'icmp' || f.l4 === 'icmpv6') && isProbeReply(f)) {
      this.probeReplies++;
      d.liveness.probeAnswered();
      return;
    }
    if (!d.replicator.comparing) {
      // DEGRADED or FAILED_OVER: the active replica's output flows unchecked (counted),
      // translated on flows carried over from before a failover.
      if (d.replicator.state === 'DEGRADED' && d.config.resync === 'align' && f.l4 === 'tcp' && (f.tcp.flags & TcpFlag.SYN)) this.learnWhileDegraded(side, f, nowUs);
      if (side !== PRIMARY) {
        this.backupFramesSuppressed++;
        return;
      }
      if ((d.flows.carried > 0 || d.flows.awaitingReset > 0) && ip) {
        const entry = d.flows.egressLookup[PRIMARY].find(f, nowUs);
        if (entry && entry.state.mode === 'carried') {
          this.fromCarried(f, frame, entry.state, vnet);
          return;
        }
        if (entry && entry.state.resetAfterFailover && f.l4 === 'tcp') {
          this.survivorOnResetFlow(slot, f);
          return;
        }
      }
      d.counts.policy(d.replicator.state === 'FAILED_OVER' ? 'failed-over' : 'degraded', 'forward-primary');
      d.toClient(frame, vnet);
      return;
    }
    if (ip) {
      const flows = d.flows;
      if (f.l4 === 'tcp' && (f.tcp.flags & TcpFlag.RST) && this.statelessReset(side, f, nowUs, frame, vnet)) return;
      const flow = flows.settle(flows.egressLookup[side].find(f, nowUs, (key) => flows.newFlow(key, f, 'egress'))!.state);
      if (flow.mode !== 'compare') {
        // A `pass` flow's SYNs give the bases that translate the client's frames for the backup.
        if (flow.policy === 'pass' && flow.tcp && (f.tcp.flags & TcpFlag.SYN)) {
          learnFromSyn(f, flow.tcp.replica(side), this.opts);
          if (side === BACKUP && flow.ingressHeld.length > 0 && flow.tcp.backupDeltaKnown) d.backupDeltaKnown(flow);
        }
        if (side !== PRIMARY) this.backupFramesSuppressed++;
        else if (flow.mode === 'carried') this.fromCarried(f, frame, flow, vnet);
        else if (flow.resetAfterFailover && f.l4 === 'tcp') this.survivorOnResetFlow(slot, f);
        else {
          flow.held.notePassed(f.payloadLength);
          d.toClient(frame, vnet);
        }
        return;
      }
      if (flow.stream) this.egressTcp(side, f, frame, flow, nowUs, vnet);
      else this.egressDatagram(side, f, frame, flow, nowUs, vnet);
      return;
    }
    const cls = f.l3 === 'arp' ? 'arp' : 'ethertype';
    const action: FrameAction = f.l3 === 'arp' ? d.config.policy.arp : d.config.policy.otherEtherTypes;
    d.counts.policy(cls === 'arp' ? 'arp' : `ethertype-0x${f.etherType.toString(16).padStart(4, '0')}`, action);
    if (action === 'compare') {
      this.egressDatagram(side, f, frame, d.flows.nonIpFlow(f, cls), nowUs, vnet);
      return;
    }
    if (side === BACKUP) this.backupFramesSuppressed++;
    else if (action === 'forward-primary') d.toClient(frame, vnet);
  }

  /**
   * A reset that answers a stray segment rather than ends this side's
   * stream: one on no connection this side has opened (a closed port), or
   * one whose sequence number is not where this side's stream stands (the
   * answer to an unacceptable ACK, RFC 9293 3.10.7: its sequence number is
   * the client's ACK). It changes no state and the replicas derive it from
   * the client's segment alone, so the primary's goes out at once and the
   * backup's is dropped, neither compared: a client that sends strays on
   * one 4-tuple, or sends them to the primary alone, cannot make the
   * replicas differ with them. Returns false for a reset at the stream's
   * end (an abort), which is compared as an event.
   */
  private statelessReset(side: Side, f: DecodedFrame, nowUs: number, frame: Buffer, vnet: VirtioNetHeader | undefined): boolean {
    const entry = this.d.flows.egressLookup[side].find(f, nowUs);
    if (entry) {
      const flow = entry.state;
      if (flow.mode !== 'compare' || !flow.tcp || f.payloadLength > 0) return false;
      const ep = flow.tcp.replica(side);
      const stream = flow.stream!;
      if (ep.synSeen || stream.started) {
        if (!stream.started || ((f.tcp.seq - ep.seqBase) >>> 0) === stream.endOf(side)) return false;
      } else {
        flow.closedSides |= 1 << side; // e.g. a SYN to a closed port: the flow lingers as a closed one
      }
    }
    if (side === PRIMARY) {
      this.statelessResets++;
      this.d.toClient(frame, vnet);
    } else {
      this.backupFramesSuppressed++;
    }
    return true;
  }

  /**
   * DEGRADED with `resync: align` (agents that cannot copy): the backup keeps
   * serving the connections, so it needs the client's frames in its own
   * sequence space. Nothing is compared, but each side's SYN still teaches
   * the flow its origin, and frames that waited for the backup's are sent.
   */
  private learnWhileDegraded(side: Side, f: DecodedFrame, nowUs: number): void {
    const flow = this.d.flows.egressLookup[side].find(f, nowUs)?.state;
    if (!flow?.tcp) return;
    learnFromSyn(f, flow.tcp.replica(side), this.opts);
    if (flow.ingressHeld.length > 0 && flow.tcp.backupDeltaKnown) this.d.backupDeltaKnown(flow);
  }

  private egressTcp(side: Side, f: DecodedFrame, frame: Buffer, flow: ShadowFlow, nowUs: number, vnet: VirtioNetHeader | undefined): void {
    const d = this.d;
    const tcp = flow.tcp!;
    const stream = flow.stream!;
    const ep = tcp.replica(side);
    if ((f.tcp.flags & TcpFlag.SYN) && ep.synSeen && ep.seqBase !== f.tcp.seq && flow.closedSides !== 0) {
      flow.restartConnection();
    }
    let bytes = frame;
    if (side === PRIMARY) {
      bytes = d.heldPool.copy(frame);
      f.rebind(bytes);
    }
    const seg = this.segment;
    if (!normalizeTcp(f, ep, this.opts, seg)) this.badTcpOptions++;
    // A SYN-ACK without window scaling turns it off for the client's window too (RFC 7323).
    if (side === PRIMARY && seg.syn && this.opts.windowScale < 0) tcp.clientWindowShift = 0;
    if (side === BACKUP && !seg.rst) {
      const sentBefore = ep.sndNxt;
      ep.noteSent(f.tcp.seq, seg.payload.length + (seg.syn ? 1 : 0) + (seg.fin ? 1 : 0));
      // New bytes in the backup's own sequence space are progress, even where comparison has nothing to
      // set them against: after an aligning checkpoint (resync align) a trailing backup catches up below
      // the aligned point, and not counting that made each new primary segment time out in turn.
      if (ep.sndNxt !== sentBefore) flow.backupProgressUs = nowUs;
    } else if (side === PRIMARY && !seg.rst) {
      // The furthest the primary has sent, gaps included (a frame its ring had no room for leaves the
      // comparator's contiguous end behind it): what a client may acknowledge (IngressStage.unaccepted).
      const sentBefore = ep.sndNxt;
      ep.noteSent(f.tcp.seq, seg.payload.length + (seg.syn ? 1 : 0) + (seg.fin ? 1 : 0));
      // New data (not a resend): how long the primary paused before it tells a server that paces its output.
      if (seg.payload.length > 0 && ep.sndNxt !== sentBefore) tcp.notePrimaryData(nowUs);
    }
    if (seg.fin || seg.rst) flow.closedSides |= 1 << side;
    if (flow.recent) flow.remember(side, side === PRIMARY ? bytes : this.copier.copy(frame), nowUs);
    const start = seg.position;
    const end = segmentEnd(seg);
    if (side === PRIMARY) {
      const hasAck = (f.tcp.flags & TcpFlag.ACK) !== 0;
      flow.held.hold(bytes, d.heldPool.lastSlab, end, seg.rst, hasAck, f.tcp.ack, seg.payload.length, nowUs, vnet);
    } else {
      this.backupFramesSuppressed++;
    }
    if (d.replicator.state !== 'COMPARING') {
      // Checkpointing: all held output goes when it is done; comparison restarts past what is said meanwhile.
      stream.noteExtent(side, seg);
    } else {
      const backupEnd = stream.endOf(BACKUP);
      if (stream.append(side, seg)) this.onMismatch(flow, nowUs);
      if (side === BACKUP && stream.endOf(BACKUP) !== backupEnd) flow.backupProgressUs = nowUs;
      if (side === BACKUP && flow.ingressHeld.length > 0 && tcp.backupDeltaKnown) d.backupDeltaKnown(flow);
      this.afterCompare(flow, nowUs);
    }
    if (side === BACKUP && end !== start) {
      this.logStandby(flow, frame, start, end, vnet);
      // Silence counts only what the backup said *ahead* of the primary; trailing it is normal.
      if (stream.leading === BACKUP || seqGt(stream.endOf(BACKUP), stream.endOf(PRIMARY))) {
        // A super-frame counts as its segments: with offloads on, the backup's whole burst is one frame.
        const segments = vnet && vnet.gsoType !== 0 && vnet.gsoSize > 0 ? Math.max(1, Math.ceil(seg.payload.length / vnet.gsoSize)) : 1;
        d.liveness.noteStandby(nowUs, f, frame, segments);
      }
    } else if (side === BACKUP && (f.tcp.flags & TcpFlag.ACK) && !seg.rst) {
      const told = flow.held.releasedMaxAck;
      if (told === null || seqGt(f.tcp.ack, told)) flow.standbyAck = { frame: Buffer.from(frame), vnet };
    }
  }

  private egressDatagram(side: Side, f: DecodedFrame, frame: Buffer, flow: ShadowFlow, nowUs: number, vnet: VirtioNetHeader | undefined): void {
    const d = this.d;
    const cmp = flow.datagrams!;
    let bytes = frame;
    if (side === PRIMARY) {
      bytes = d.heldPool.copy(frame);
      f.rebind(bytes);
    }
    const content = f.l3 === 'ipv4' || f.l3 === 'ipv6' ? datagramContent(f) : f.buf.subarray(f.l3Offset, f.l3End);
    if (flow.recent) flow.remember(side, side === PRIMARY ? bytes : this.copier.copy(frame), nowUs);
    if (side === PRIMARY) {
      flow.held.hold(bytes, d.heldPool.lastSlab, cmp.sent[PRIMARY] + 1, false, false, 0, content.length, nowUs, vnet);
    } else {
      this.backupFramesSuppressed++;
    }
    if (d.replicator.state !== 'COMPARING') return;
    if (cmp.append(side, content)) this.onMismatch(flow, nowUs);
    this.afterCompare(flow, nowUs);
    if (side === BACKUP && flow.protocol !== 'arp' && flow.protocol !== 'ethertype') {
      this.logStandby(flow, frame, cmp.sent[BACKUP] - 1, cmp.sent[BACKUP], vnet);
      if (cmp.leading === BACKUP) d.liveness.noteStandby(nowUs, f, frame);
    }
  }

  /** Keeps a standby frame the client has not received in any form, for failover. */
  private logStandby(flow: ShadowFlow, frame: Buffer, start: number, end: number, vnet: VirtioNetHeader | undefined): void {
    if (flow.stream) {
      const released = flow.held.releasedEnd;
      if (released !== null && seqLe(end, released)) return;
    } else if (flow.backupDatagramDelivered(end)) {
      return;
    }
    flow.standbyLogToAdd().add(frame, start, end, vnet);
  }

  private afterCompare(flow: ShadowFlow, nowUs: number): void {
    if (flow.mismatch) return; // held until the checkpoint answers
    const d = this.d;
    flow.held.releaseReady(flow);
    const released = flow.held.releasedEnd;
    if (released !== null && flow.standbyLog.length > 0) {
      if (flow.stream) flow.standbyLog.prune(released);
      else flow.standbyLog.pruneWhile((end) => flow.backupDatagramDelivered(end));
    }
    const hw = d.config.flowHighWater;
    const unmatchedFrames = flow.datagrams ? Math.max(flow.datagrams.unmatchedOf(PRIMARY), flow.datagrams.unmatchedOf(BACKUP)) : 0;
    if (flow.held.bytes > hw.bytes || flow.held.length > hw.frames || flow.unmatchedBytes > hw.bytes || unmatchedFrames > hw.frames) {
      this.checkpointFor(flow, 'queue', nowUs);
      return;
    }
    const total = d.config.totalHighWater;
    if (d.held.bytes > total.bytes || d.held.frames > total.frames) this.checkpointFor(flow, 'queue', nowUs);
  }

  private onMismatch(flow: ShadowFlow, nowUs: number): void {
    const m = flow.mismatch!;
    flow.noteMismatch(m, nowUs);
    this.d.totals.mismatches++;
    this.mismatchesByKind[m.kind]++;
    // The excerpts are bounded by the comparators (EXCERPT_BEFORE + EXCERPT_AFTER bytes, JSON-quoted).
    this.d.log('warn', 'mismatch', { flow: flow.name, kind: m.kind, offset: m.offset, excerptOffset: m.excerptOffset, primary: m.primary, backup: m.backup });
    if (flow.recent && this.divergences.length < MAX_DIVERGENCES) {
      this.divergences.push({ flow: flow.name, mismatch: flow.mismatchList?.[flow.mismatchList.length - 1] ?? { ...m, timeUs: nowUs }, frames: [...flow.recent] });
    }
    this.checkpointFor(flow, 'mismatch', nowUs);
  }

  /**
   * The flow's oldest held frame waited longer than `maxUnmatchedAgeMs`. A
   * datagram flow whose backup also sent datagrams nothing matched has
   * diverged: a mismatch, reported with both sides' bytes. Otherwise the
   * backup is slow: a checkpoint for `timeout`.
   */
  /** The oldest held frame waits on a backup that trails but progresses (counted once per frame). */
  noteTrailing(oldest: HeldFrame): void {
    if (this.lastTrailing === oldest) return;
    this.lastTrailing = oldest;
    this.backupTrailingWaits++;
  }

  /** The oldest held frame waits while the client's window holds both replicas back (counted once per frame). */
  noteWindowStalled(oldest: HeldFrame): void {
    if (this.lastWindowStalled === oldest) return;
    this.lastWindowStalled = oldest;
    this.windowStalledWaits++;
  }

  /** The oldest held frame waits on a paced stream's backup (counted once per frame). */
  notePaced(oldest: HeldFrame): void {
    if (this.lastPaced === oldest) return;
    this.lastPaced = oldest;
    this.pacedWaits++;
  }

  /**
   * The oldest held frame (`oldest`, the head of `flow`'s output) has waited
   * past the limit, and the backup has said only its beginning: the two cut
   * their segments at different places. When the client's window is nearly
   * full, that can hold both for good:
   *   - the client has nothing new to acknowledge, since what it was sent
   *     ends before the frame;
   *   - each replica can send no full segment into what is left of the
   *     window, so it only resends what it has in flight, or sends when its
   *     persist timer fires (200 ms, then doubling);
   *   - the backup never says the rest, the frame never goes, and a timeout
   *     checkpoint ends it.
   * So the matched beginning goes to the client now, as a copy (both
   * replicas said those bytes; the same ACK rule as any release). The
   * client acknowledges it, both replicas hear that ACK and go on, and the
   * frame itself goes once the backup says the rest (the client drops the
   * part it has). The backup then gets the limit again to say more (a
   * sender that resent after a timeout may send nothing new until that ACK
   * comes). GSO super-frames are left alone. Returns whether it sent one;
   * counted (`prefix_releases`, `prefix_released_bytes`).
   */
  releaseMatchedPrefix(flow: ShadowFlow, oldest: HeldFrame, nowUs: number): boolean {
    const stream = flow.stream, tcp = flow.tcp;
    if (!stream?.started || !tcp || flow.mismatch || oldest.released || oldest.rst) return false;
    if (oldest.vnet && oldest.vnet.gsoType !== 0) return false;
    const matched = stream.matched;
    const q = flow.held;
    if (q.releasedEnd !== null && !seqLt(q.releasedEnd, matched)) return false;
    if (!ackMayGo(oldest, flow)) return false;
    const f = decodeFrame(oldest.frame, this.prefixScratch);
    if (f.l4 !== 'tcp' || f.payloadLength === 0) return false;
    // The frame's first payload byte, as a stream position (from the primary's SYN).
    const start = (seqDiff(tcp.primary.seqBase, f.tcp.seq) + ((f.tcp.flags & TcpFlag.SYN) !== 0 ? 1 : 0)) >>> 0;
    const keep = seqDiff(start, matched);
    if (keep <= 0 || keep >= f.payloadLength) return false;
    const out = prefixTcpCopy(f, keep, this.trimScratch);
    q.notePrefixReleased(matched, oldest.hasAck ? oldest.ack : null);
    if (flow.standbyLog.length > 0) flow.standbyLog.prune(matched);
    oldest.prefixAtUs = nowUs;
    this.prefixReleases++;
    this.prefixReleasedBytes += keep;
    this.d.toClient(out);
    return true;
  }

  unmatchedTooLong(flow: ShadowFlow, nowUs: number, heldSinceUs: number, oldest?: HeldFrame): void {
    if (flow.datagrams?.expire()) {
      this.onMismatch(flow, nowUs);
      return;
    }
    const stream = flow.stream;
    // The client reset the connection while this output waited (a client that closed its socket answers
    // every further segment with a reset): the backup, reset too or stalled on a window nobody will open
    // again, says no more, and nothing on the flow is left to protect. The output goes as the primary said
    // it (the client resets it again), without a checkpoint. Only a reset the ingress accepted for the
    // flow counts, and only one since about when this output began to wait.
    if (flow.clientResetMs * 1000 >= heldSinceUs - (this.d.config.maxUnmatchedAgeMs + 1) * 1000) {
      this.clientResetReleases++;
      this.clientResetFramesReleased += flow.held.length;
      // Routine when clients hang up on a download: one line per 10 s at most, with the count meanwhile.
      if (nowUs - this.clientResetLoggedUs >= CLIENT_RESET_LOG_US) {
        this.d.log('info', 'client-reset-released', {
          flow: flow.name, heldFrames: flow.held.length, heldMs: Math.round((nowUs - heldSinceUs) / 100) / 10,
          ...(stream ? { primaryAheadBytes: seqDiff(stream.matched, stream.endOf(PRIMARY)) } : {}),
          releasesSinceLastLine: this.clientResetReleases - this.clientResetReleasesLogged,
          note: 'the client reset the flow while the backup trailed: its held output went out without a checkpoint',
        });
        this.clientResetLoggedUs = nowUs;
        this.clientResetReleasesLogged = this.clientResetReleases;
      }
      flow.held.releaseAll();
      return;
    }
    // Why it timed out, for whoever reads the log: how old the held output is, how long the backup has been
    // quiet on this flow, and how far each side is past what was matched.
    this.d.log('warn', 'backup-late', {
      flow: flow.name, heldMs: Math.round((nowUs - heldSinceUs) / 100) / 10,
      backupQuietMs: Number.isFinite(flow.backupProgressUs) ? Math.round((nowUs - flow.backupProgressUs) / 100) / 10 : null,
      ...(stream ? { primaryAheadBytes: seqDiff(stream.matched, stream.endOf(PRIMARY)), backupAheadBytes: seqDiff(stream.matched, stream.endOf(BACKUP)) } : {}),
      heldFrames: flow.held.length,
      // A side that lost a segment before the bridge: what it sent beyond the gap waits (up to MAX_OUT_OF_ORDER_SEGMENTS)
      // until its retransmission timer resends the segment. Nobody acknowledges past the gap, so nothing prompts it sooner.
      ...(stream && stream.waitingBeyondGap(BACKUP) > 0 ? { backupBeyondGap: stream.waitingBeyondGap(BACKUP) } : {}),
      ...(stream && stream.waitingBeyondGap(PRIMARY) > 0 ? { primaryBeyondGap: stream.waitingBeyondGap(PRIMARY) } : {}),
      // The primary's longest quiet spell of its own on the flow, when it made the flow count as paced.
      ...(flow.tcp && flow.tcp.primaryPauseMs * 4000 >= this.d.config.maxUnmatchedAgeMs * 1000 ? { primaryPauseMs: flow.tcp.primaryPauseMs } : {}),
      // What holds the oldest frame: how far it ends past what may be released, and whether only the ACK rule does.
      ...(stream && oldest ? { oldestPastMatch: seqDiff(stream.releasable, oldest.end), oldestAckGated: oldest.hasAck && !ackMayGo(oldest, flow) } : {}),
    });
    this.checkpointFor(flow, 'timeout', nowUs);
  }

  /**
   * A checkpoint for this flow's sake, within its client's budget. Over the
   * budget, the flow goes on unprotected instead: its held output is released
   * as the primary said it, and the pair stays protected for everyone else.
   */
  checkpointFor(flow: ShadowFlow, reason: CheckpointReason, nowUs: number): void {
    if (this.d.replicator.requestForFlow(reason, flow.name, flow.source, nowUs) !== 'over-budget') return;
    this.overBudget++;
    this.d.log('warn', 'checkpoint-budget-exceeded', { flow: flow.name, source: flow.source, reason, note: 'the flow goes on unprotected: its output is released unchecked' });
    this.d.flows.setMode(flow, 'solo');
    flow.held.releaseAll();
    flow.standbyLog.clear();
  }

  // ───────────────────────── after failover ─────────────────────────

  /**
   * A frame of a carried-over flow from the promoted replica, sent out in
   * the client's space. What the client has acknowledged is not sent again.
   * Bytes the old primary's output reached (released) but the client has
   * not acknowledged do go: the bridge knows only that it sent them, and a
   * frame lost on its way to the client leaves a hole that only the
   * survivor's resend can fill. Dropping them as already received stalled
   * such a connection for good. They are the bytes the client was sent
   * (matched, or settled by a checkpoint), so a copy the client has is a
   * plain duplicate to it. `backlog`: one of the standby frames sent at
   * the failover, cut at the released point (nothing the client was sent
   * is resent ahead of need).
   */
  private fromCarried(f: DecodedFrame, frame: Buffer, flow: ShadowFlow, vnet: VirtioNetHeader | undefined, backlog = false): void {
    const c = flow.carried!;
    if (!flow.stream) {
      c.datagramsSeen++;
      if (c.releasedEnd !== null && c.datagramsSeen <= c.releasedEnd) {
        this.duplicatesDropped++;
        return;
      }
      flow.held.notePassed(f.payloadLength);
      this.d.toClient(frame, vnet);
      return;
    }
    const seg = this.segment;
    const ep = flow.tcp!.replica(c.side);
    if (!normalizeTcp(f, ep, this.opts, seg)) this.badTcpOptions++;
    const start = seg.position;
    const end = segmentEnd(seg);
    if (c.releasedEnd !== null && end !== start && seqLt(start, c.releasedEnd)) {
      // Below `cut` the client has it: sent (the backlog), or acknowledged (a resend); null: none of it.
      const cut = backlog ? c.releasedEnd : this.ackedWithin(flow, ep, c, start);
      if (cut === null) {
        this.resentUnacked++;
        this.translateCopy(f, frame, flow, vnet);
        return;
      }
      if (seqLe(end, cut)) {
        this.duplicatesDropped++;
        this.survivorDuplicate(f, flow, c);
        return;
      }
      // Its beginning is there already: send the rest only.
      const synUnit = seg.syn ? 1 : 0;
      const skip = Math.min(seqDiff(start, cut) - synUnit, f.payloadLength);
      const partial = vnet !== undefined && (vnet.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) !== 0;
      const out = trimmedTcpCopy(f, Math.max(0, skip), seg.syn ? TcpFlag.SYN : 0, this.trimScratch, partial);
      this.trimmed++;
      decodeFrame(out, this.trimScratch);
      this.translateOut(this.trimScratch, out, flow, vnet, null);
      return;
    }
    this.translateCopy(f, frame, flow, vnet);
  }

  private translateCopy(f: DecodedFrame, frame: Buffer, flow: ShadowFlow, vnet: VirtioNetHeader | undefined): void {
    const out = this.outCopies.copy(frame);
    const slab = this.outCopies.lastSlab;
    f.rebind(out);
    this.translateOut(f, out, flow, vnet, slab);
  }

  /**
   * Where the client's acknowledgment stands in the survivor's stream (a
   * position), when it lies past `start`; null when the client has
   * acknowledged nothing of a segment starting there.
   */
  private ackedWithin(flow: ShadowFlow, ep: TcpEndpointState, c: CarriedFlow, start: number): number | null {
    const client = flow.tcp!.client;
    if (!client.ackSeen) return null;
    const acked = seqDiff(ep.seqBase, (client.maxAck + c.seqDelta) >>> 0) >>> 0;
    return seqLt(start, acked) ? acked : null;
  }

  /**
   * The survivor sent again bytes the client already has (the frame was
   * dropped). When the client has acknowledged them, the survivor had not
   * heard that ACK (it went to the dead primary, or the survivor was paused
   * by a checkpoint): it is told it now, in its own space, or it would
   * retransmit into the void. A survivor that keeps sending the same bytes
   * after WEDGED_AFTER such ACKs does not accept the client's ACK: its state
   * is not the one the bridge translates for (a COLO secondary that loaded a
   * checkpoint nobody reported), so the connection can never move again.
   * Both ends are reset at once, rather than the client hanging until its
   * own timeout.
   */
  private survivorDuplicate(f: DecodedFrame, flow: ShadowFlow, c: CarriedFlow): void {
    const tcp = flow.tcp;
    if (!tcp || !tcp.client.ackSeen || f.payloadLength === 0 || (f.tcp.flags & (TcpFlag.SYN | TcpFlag.RST))) return;
    const acked = (tcp.client.maxAck + c.seqDelta) >>> 0;
    // The client's ACK for these bytes may still be on its way: nothing to tell yet.
    if (!seqLe((f.tcp.seq + f.payloadLength) >>> 0, acked)) return;
    if (c.duplicateStart === f.tcp.seq) c.duplicateRepeats++;
    else {
      c.duplicateStart = f.tcp.seq;
      c.duplicateRepeats = 1;
    }
    if (c.duplicateRepeats > WEDGED_AFTER) {
      this.resetWedged(f, flow, c, acked);
      return;
    }
    const ack = buildTcpAck(f, f.tcp.ack, acked, tcp.clientWindow);
    if (!ack) return;
    this.survivorAcks++;
    this.d.toReplica(c.slot, ack);
  }

  private resetWedged(f: DecodedFrame, flow: ShadowFlow, c: CarriedFlow, acked: number): void {
    const tcp = flow.tcp!;
    this.carriedWedged++;
    // The survivor's ACK is exactly what it expects next from the client; the client's is what it expects from us.
    const toSurvivor = buildTcpReset(f, true, f.tcp.ack);
    if (toSurvivor) this.d.toReplica(c.slot, toSurvivor);
    const toClient = buildTcpReset(f, false, tcp.client.maxAck);
    if (toClient) this.d.toClient(toClient);
    // One line per wedged flow, but a promoted replica with the wrong state wedges all of them: bounded.
    if (this.carriedWedged <= WEDGED_LOGGED || this.carriedWedged % 1000 === 0) this.d.log('warn', 'carried-flow-wedged', {
      flow: flow.name, survivorSeq: f.tcp.seq, survivorAckedByClient: acked, repeats: c.duplicateRepeats, wedgedFlows: this.carriedWedged,
      note: 'after failover the survivor kept resending bytes the client had acknowledged, refusing that ACK: its state is not the one the bridge translates for; both ends were reset',
    });
    const flows = this.d.flows;
    flows.setMode(flow, 'solo');
    if (!flow.resetAfterFailover) {
      // Anything either end still says on it is answered with a reset (survivorOnResetFlow, the ingress).
      flow.resetAfterFailover = true;
      flow.ingressHeld = NOTHING_HELD;
      flows.awaitingReset++;
    }
  }

  private translateOut(f: DecodedFrame, out: Buffer, flow: ShadowFlow, vnet: VirtioNetHeader | undefined, slab: Slab | null): void {
    const c = flow.carried!;
    const partial = vnet !== undefined && (vnet.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) !== 0;
    if (!translateForClient(f, c.seqDelta, c.tsDelta, this.opts, partial)) this.badTcpOptions++;
    this.translatedFrames++;
    flow.held.notePassed(f.payloadLength);
    this.d.toClient(out, vnet);
    if (slab) this.outCopies.release(slab);
  }

  private carryAll(survivor: SlotId, record: FailoverRecord): void {
    for (const e of this.d.flows.table.entries()) this.carry(e.state, survivor, record);
    for (const flow of this.d.flows.nonIp.values()) this.d.flows.setMode(flow, 'solo');
    this.flowsCarried += record.flowsCarried;
    this.flowsLost += record.flowsLost;
    this.backlogFrames += record.backlogFrames;
  }

  /** Turns a compared flow into one the survivor serves alone, translated; sends its backlog. */
  private carry(flow: ShadowFlow, survivor: SlotId, record: FailoverRecord): void {
    const flows = this.d.flows;
    if (flow.mode !== 'compare') {
      // Only the dead replica had it (no backup at its birth, `drop-backup-only`): the survivor answers its next segment with a reset.
      flows.setMode(flow, 'solo');
      record.flowsLost++;
      // A `pass` flow: the survivor has the connection (it was fed the client's frames) but
      // nobody compared what it said; carried over, it could hand the client bytes that differ
      // from what the dead primary sent, in a sequence space nobody translated. It is lost too,
      // and since the survivor would otherwise keep it half alive, the bridge resets both ends:
      // on the client's next segment (a reset to the client at its ACK, one to the survivor at
      // its sequence number) and on the survivor's next segment (a reset to it at its ACK);
      // meanwhile the survivor's frames on it are dropped. Datagram flows have no state to
      // lose: the survivor answers their next datagrams unchecked.
      flow.passFed = false;
      if (flow.policy === 'pass' && flow.tcp && !flow.resetAfterFailover && !flow.bothClosed) {
        flow.resetAfterFailover = true;
        flow.ingressHeld = NOTHING_HELD;
        flows.awaitingReset++;
        this.passFlowsReset++;
      }
      return;
    }
    flows.settle(flow);
    const releasedEnd = flow.held.releasedEnd;
    let seqDelta = 0, tsDelta = 0, seen = 0;
    if (flow.tcp) {
      // Nothing released: the client never saw the primary's ISN or TSvals, so none to translate into.
      if (releasedEnd !== null) {
        seqDelta = flow.tcp.seqDelta;
        tsDelta = flow.tcp.tsDelta;
      }
    } else {
      seen = flow.datagrams!.sentOf(BACKUP);
    }
    flow.carried = { slot: survivor, side: BACKUP, seqDelta, tsDelta, releasedEnd, datagramsSeen: seen, duplicateStart: -1, duplicateRepeats: 0 };
    flows.setMode(flow, 'carried');
    record.flowsCarried++;
    const backlog = flow.standbyLog.drain();
    for (const b of backlog) this.sendBacklog(flow, b);
    record.backlogFrames += backlog.length;
    flow.standbyLog.forget(backlog);
    const ack = flow.standbyAck;
    flow.standbyAck = null;
    if (ack && flow.stream) {
      const f = decodeFrame(ack.frame, this.frame);
      const told = flow.held.releasedMaxAck;
      if (!f.error && f.l4 === 'tcp' && (told === null || seqGt(f.tcp.ack, told))) {
        this.fromCarried(f, ack.frame, flow, ack.vnet);
        record.backlogFrames++;
      }
    }
    if (flow.ingressHeld.length > 0) this.d.backupDeltaKnown(flow);
  }

  /** The promoted replica speaks on a `pass` flow it could not take over: dropped, and its end reset. */
  private survivorOnResetFlow(slot: SlotId, f: DecodedFrame): void {
    this.passSurvivorFramesDropped++;
    // Its ACK is exactly what it expects next from the client (both replicas share the client's space).
    if (!(f.tcp.flags & TcpFlag.ACK) || (f.tcp.flags & TcpFlag.RST)) return;
    const reset = buildTcpReset(f, true, f.tcp.ack);
    if (reset) this.d.toReplica(slot, reset);
  }

  private sendBacklog(flow: ShadowFlow, b: StandbyFrame): void {
    if (!flow.stream) {
      if (!flow.backupDatagramDelivered(b.end)) this.d.toClient(b.frame, b.vnet);
      return;
    }
    const f = decodeFrame(b.frame, this.frame);
    if (f.error || f.l4 !== 'tcp') return;
    this.fromCarried(f, b.frame, flow, b.vnet, true);
  }

  private makeSolo(flow: ShadowFlow): void {
    // A new backup, if one comes, never had this connection: it is not fed.
    flow.passFed = false;
    if (flow.mode !== 'compare') return;
    this.d.flows.setMode(flow, 'solo');
    flow.standbyLog.clear();
  }
}
