/**
 * ShadowFlow: everything the pipeline knows about one flow, joined from the
 * stages that own each part: flow state (flow/), the comparator (compare/),
 * the held output (release/), and the report counters.
 */
import { FlowProtocol, describeKey } from '../flow/key';
import { NEVER_MS, TcpConnectionState, TcpEndpointState, WINDOW_FULL_SLACK } from '../flow/tcp-replica';
import { DatagramComparator, DEFAULT_DATAGRAM_WINDOW } from '../compare/datagram';
import { MatchTotals, Mismatch, NO_STREAM_NOISE, StreamNoise, TcpStreamComparator, PRIMARY, BACKUP } from '../compare/tcp-stream';
import { FlowHeldQueue, HeldQueues, ReleaseGate } from '../release/held';
import { StandbyLog } from '../release/standby-log';
import type { SlotId } from '../failover/roles';
import { flowSource } from '../replicate/budget';
import { seqDiff, seqMax } from '../packet/seq';
import { SlabPool } from '../packet/slab';
import type { VirtioNetHeader } from '../io/port';
import type { FlowPolicyAction } from './flow-policy';

export interface FlowReport {
  /** "tcp 10.0.0.1:40000 > 10.0.0.2:80": client side first, VM second. */
  key: string;
  protocol: FlowProtocol | 'arp' | 'ethertype';
  releasedFrames: number;
  /** Payload bytes of the primary's frames released to the client. */
  releasedBytes: number;
  /** Bytes (TCP) or datagram content bytes both replicas said alike. */
  matchedBytes: number;
  mismatches: number;
  /** The mismatches, first ones first (at most MAX_REPORTED_MISMATCHES). */
  mismatchList: (Mismatch & { timeUs: number })[];
  /** Present when the policy table took the flow out of comparison (`flowPolicy`): it is unprotected. */
  policy?: Exclude<FlowPolicyAction, 'compare'>;
}

export const MAX_REPORTED_MISMATCHES = 16;
export const DIVERGENCE_FRAMES_PER_SIDE = 8;

export interface RecentFrame {
  side: 0 | 1;
  frame: Buffer;
  timeUs: number;
}

/**
 * What a flow is to the bridge now. `compare`: both replicas serve it and
 * the primary's output waits for the backup's. `carried`: born before a
 * failover, served by the promoted replica alone, translated into the space
 * the client knows. `solo`: only one replica has it (born while there was
 * no backup, or its backup died, or the policy table said `pass` or
 * `drop-backup-only`): output passes unchecked, counted as unprotected.
 */
export type FlowMode = 'compare' | 'carried' | 'solo';

/** A carried-over flow's translation: promoted-replica value = client-known value + delta. */
export interface CarriedFlow {
  slot: SlotId;
  /** The index of the survivor's state in this flow's per-replica state (its comparison side at birth). */
  side: 0 | 1;
  seqDelta: number;
  tsDelta: number;
  /** What the client received before failover (stream position or datagram count); null: nothing. */
  releasedEnd: number | null;
  /** Datagrams the survivor has sent on this flow since the last checkpoint. */
  datagramsSeen: number;
  /**
   * The start (stream position) of the last segment the survivor sent that the
   * client had already received in full, and how many times in a row it sent
   * one starting there (EgressStage.survivorDuplicate). -1: none yet.
   */
  duplicateStart: number;
  duplicateRepeats: number;
}

/**
 * The `ingressHeld` of every flow with nothing waiting: one shared, frozen
 * empty array (a push to it throws rather than corrupts; holders replace it
 * with their own first). Most flows never hold a client frame.
 */
export const NOTHING_HELD = Object.freeze([]) as unknown as { frame: Buffer; vnet: VirtioNetHeader | undefined }[];

/** A frame (and its virtio-net header) kept for later. */
type HeldClientFrame = { frame: Buffer; vnet: VirtioNetHeader | undefined };

/**
 * The parts of a flow that most flows never have: one object, made when the
 * first is set, instead of a field each in every flow.
 */
class FlowRarities {
  ingressHeld: HeldClientFrame[] = NOTHING_HELD;
  recent: RecentFrame[] | null = null;
  mismatchList: FlowReport['mismatchList'] | null = null;
  carried: CarriedFlow | null = null;
  standbyLog: StandbyLog | null = null;
  standbyAck: HeldClientFrame | null = null;
}

/** What `standbyLog` is while a flow has logged nothing: empty, and never added to (its frames array is frozen). */
const EMPTY_STANDBY_LOG = new StandbyLog(new SlabPool(false, false, 0), true);

/** `closedSides` when both have ended their half. */
export const BOTH_CLOSED = 3;
const RESET_AFTER_FAILOVER = 4;
const PASS_FED = 8;

export class ShadowFlow implements ReleaseGate {
  readonly tcp: TcpConnectionState | null;
  readonly stream: TcpStreamComparator | null;
  readonly datagrams: DatagramComparator | null;
  readonly held: FlowHeldQueue;
  /** What few flows ever have (see FlowRarities): null until one of them is set. */
  private rare: FlowRarities | null = null;
  /** The last checkpoint this flow has been resynchronized to (done lazily, on its next frame). */
  epoch = 0;
  /** The checkpoint epoch the flow was born in. */
  bornEpoch = 0;
  /** When the backup last said something new on this stream (its stream end moved): a trailing backup is not a stuck one. */
  backupProgressUs = -Infinity;
  /** When the client last reset this connection (an RST the ingress forwarded to both replicas), whole ms (see TcpConnectionState.windowOpenedMs). */
  clientResetMs = NEVER_MS;
  /** Which flow this is: its birth order in the registry (reports are listed in it). */
  serial = 0;
  readonly protocol: FlowReport['protocol'];
  mismatches = 0;
  mode: FlowMode = 'compare';
  /** What the policy table said when the flow was born (`solo` mode unless `compare`). */
  policy: FlowPolicyAction = 'compare';
  /** Which sides have ended their half (bits 0 and 1, 1 << side), RESET_AFTER_FAILOVER, PASS_FED: one field for all. */
  private bits = 0;

  constructor(
    /** The flow table's key (IP flows) or the name itself (ARP and other ethertypes, which have no key). */
    readonly key: string, protocol: FlowReport['protocol'], queues: HeldQueues, backupCopies: SlabPool, totals: MatchTotals, keepRecent: boolean,
    private readonly standbyCopies: SlabPool,
    datagramWindow = DEFAULT_DATAGRAM_WINDOW,
    noise: StreamNoise = NO_STREAM_NOISE,
  ) {
    const stream = protocol === 'tcp';
    this.tcp = stream ? new TcpConnectionState() : null;
    this.stream = stream ? new TcpStreamComparator(backupCopies, totals, noise) : null;
    this.datagrams = stream ? null : new DatagramComparator(backupCopies, totals, datagramWindow);
    this.held = new FlowHeldQueue(queues, this, stream);
    this.held.flow = this;
    if (keepRecent) this.recent = [];
    this.protocol = protocol;
  }

  /**
   * "tcp 10.0.0.1:40000 > 10.0.0.2:80": made from the key each time it is
   * asked (log lines, reports, budgets), never kept: a flood of flows then
   * costs no name strings.
   */
  get name(): string {
    return this.protocol === 'arp' || this.protocol === 'ethertype' ? this.key : describeKey(this.key);
  }

  /** What this flow has done so far: made when asked (a flow keeps counters, not a report). */
  get report(): FlowReport {
    const r: FlowReport = {
      key: this.name, protocol: this.protocol,
      releasedFrames: this.held.releasedFrames,
      releasedBytes: this.held.releasedPayloadBytes,
      matchedBytes: this.stream ? this.stream.matchedBytes : this.datagrams!.matchedBytes,
      mismatches: this.mismatches,
      mismatchList: this.mismatchList ? this.mismatchList.slice() : [],
    };
    if (this.policy !== 'compare') r.policy = this.policy;
    return r;
  }

  /** Client frames waiting until the backup's sequence delta is known (the shared empty array while none wait: see NOTHING_HELD). */
  get ingressHeld(): HeldClientFrame[] { return this.rare?.ingressHeld ?? NOTHING_HELD; }
  set ingressHeld(v: HeldClientFrame[]) { if (v !== NOTHING_HELD || this.rare) this.rarities().ingressHeld = v; }

  /** Recent frames of each side, kept only when divergence capture is on (null otherwise). */
  get recent(): RecentFrame[] | null { return this.rare?.recent ?? null; }
  set recent(v: RecentFrame[] | null) { if (v !== null || this.rare) this.rarities().recent = v; }

  /** The first MAX_REPORTED_MISMATCHES mismatches; null while there was none (most flows). */
  get mismatchList(): FlowReport['mismatchList'] | null { return this.rare?.mismatchList ?? null; }
  set mismatchList(v: FlowReport['mismatchList'] | null) { if (v !== null || this.rare) this.rarities().mismatchList = v; }

  /** A carried-over flow's translation (mode `carried`), else null. */
  get carried(): CarriedFlow | null { return this.rare?.carried ?? null; }
  set carried(v: CarriedFlow | null) { if (v !== null || this.rare) this.rarities().carried = v; }

  /**
   * The standby's latest pure ACK that acknowledges more than the client has
   * been told: at failover it tells the client what the survivor has (else a
   * client with unacknowledged data waits for its retransmission timeout).
   */
  get standbyAck(): HeldClientFrame | null { return this.rare?.standbyAck ?? null; }
  set standbyAck(v: HeldClientFrame | null) { if (v !== null || this.rare) this.rarities().standbyAck = v; }

  /** The backup's frames the client has not received in any form: sent at failover. Empty (and shared) until the first is added. */
  get standbyLog(): StandbyLog {
    return this.rare?.standbyLog ?? EMPTY_STANDBY_LOG;
  }

  /** The standby log to add to: this flow's own, made on first use. */
  standbyLogToAdd(): StandbyLog {
    const r = this.rarities();
    return (r.standbyLog ??= new StandbyLog(this.standbyCopies, this.stream !== null));
  }

  private rarities(): FlowRarities {
    return (this.rare ??= new FlowRarities());
  }

  /** Which sides have ended their half (FIN) or reset, a bit per side (1 << side): for idle expiry. */
  get closedSides(): number { return this.bits & BOTH_CLOSED; }
  set closedSides(v: number) { this.bits = (this.bits & ~BOTH_CLOSED) | (v & BOTH_CLOSED); }

  /**
   * A `pass` TCP flow whose primary died: the survivor's side of it was never
   * compared, so it cannot be carried over; the bridge resets both ends
   * (see EgressStage.carry).
   */
  get resetAfterFailover(): boolean { return (this.bits & RESET_AFTER_FAILOVER) !== 0; }
  set resetAfterFailover(v: boolean) { this.bits = v ? this.bits | RESET_AFTER_FAILOVER : this.bits & ~RESET_AFTER_FAILOVER; }

  /** A `pass` flow whose backup (the one alive at its birth) still gets its client frames. */
  get passFed(): boolean { return (this.bits & PASS_FED) !== 0; }
  set passFed(v: boolean) { this.bits = v ? this.bits | PASS_FED : this.bits & ~PASS_FED; }

  /** Both sides have ended their half or reset. */
  get bothClosed(): boolean {
    return this.closedSides === BOTH_CLOSED;
  }

  /** Whether the backup gets this flow's client frames: compared flows, and `pass` flows (kept warm, never judged). */
  get backupFed(): boolean {
    return this.mode === 'compare' || this.passFed;
  }

  /**
   * A `pass` flow after a checkpoint by copy: the backup now holds the
   * primary's connection, so its sequence and TS bases are the primary's.
   */
  resyncPassed(): void {
    const tcp = this.tcp;
    if (!tcp) return;
    const p = tcp.primary, b = tcp.backup;
    b.seqBase = p.seqBase;
    b.synSeen = p.synSeen;
    b.tsBase = p.tsBase;
    b.tsSeen = p.tsSeen;
  }

  /** The client-side address: whose budget this flow's checkpoints count against. */
  get source(): string {
    return flowSource(this.name);
  }

  // ReleaseGate
  get isStream(): boolean { return this.stream !== null; }
  get matchedEnd(): number {
    return this.stream ? this.stream.releasable : this.datagrams!.matched;
  }
  get rstAgreed(): boolean {
    return this.stream ? this.stream.rstAgreed : false;
  }
  get backupAck(): number | null {
    const b = this.tcp?.backup;
    return b && b.ackSeen ? b.maxAck : null;
  }

  /** A TCP flow whose client has not acknowledged anything yet (a SYN, maybe spoofed, and nothing after). */
  get halfOpen(): boolean {
    return this.tcp !== null && !this.tcp.client.ackSeen && this.held.length === 0;
  }

  get mismatch(): Mismatch | null {
    return this.stream ? this.stream.mismatch : this.datagrams!.mismatch;
  }

  /** Bytes the leading side has said that the other has not (yet). */
  get unmatchedBytes(): number {
    return this.stream ? this.stream.pendingBytes : this.datagrams!.pendingBytes;
  }

  /**
   * Whether the client already has the equal of the backup's datagram at
   * `position` (failover: the backup's other datagrams are its backlog).
   */
  backupDatagramDelivered(position: number): boolean {
    const released = this.held.releasedEnd;
    if (released === null) return false;
    const cmp = this.datagrams!;
    // Released beyond what was compared (DEGRADED let everything go): positions are all there is to go by.
    if (released !== cmp.matched) return position <= released;
    return cmp.backupDelivered(position);
  }

  noteMismatch(m: Mismatch, timeUs: number): void {
    this.mismatches++;
    const list = (this.mismatchList ??= []);
    if (list.length < MAX_REPORTED_MISMATCHES) list.push({ ...m, timeUs });
  }

  /**
   * The client's full window stops both replicas (a reader slower than the
   * servers), and all the primary has past the match is less than one
   * segment: the backup cut its segments elsewhere and says those bytes when
   * the window opens, as the primary says more. Also true for `limitUs` after
   * the client opens such a window. Not when more is held: a full window is
   * then the hold's doing, not the reader's.
   */
  stalledOnClientWindow(nowUs: number, limitUs: number): boolean {
    const tcp = this.tcp, stream = this.stream;
    if (!tcp || !stream?.started) return false;
    const end = stream.endOf(PRIMARY);
    if (seqDiff(stream.matched, end) >= WINDOW_FULL_SLACK) return false;
    return tcp.windowFull(end, WINDOW_FULL_SLACK) || nowUs - tcp.windowOpenedMs * 1000 <= limitUs;
  }

  /** A new connection on the 4-tuple of a closed one (port reuse): start its state afresh. */
  restartConnection(): void {
    const tcp = this.tcp!;
    for (const ep of [tcp.primary, tcp.backup, tcp.client]) {
      ep.synSeen = false; ep.tsSeen = false; ep.ackSeen = false; ep.seqBase = 0; ep.tsBase = 0; ep.sndNxt = null;
    }
    this.stream!.started = false;
    this.closedSides = 0;
    // Where the old connection's output stood means nothing in the new one's
    // positions: kept, it made the standby log skip the new connection's frames
    // and, after a failover, its survivor's frames count as already received.
    this.held.newConnection();
    this.standbyLog.clear();
    this.standbyAck = null;
    // The old connection's reset and window say nothing about this one.
    this.clientResetMs = NEVER_MS;
    tcp.windowOpenedMs = NEVER_MS;
  }

  remember(side: 0 | 1, frame: Buffer, timeUs: number): void {
    const recent = this.recent!;
    recent.push({ side, frame, timeUs });
    let count = 0;
    for (const r of recent) if (r.side === side) count++;
    if (count > DIVERGENCE_FRAMES_PER_SIDE) recent.splice(recent.findIndex((r) => r.side === side), 1);
  }

  /**
   * After a checkpoint: comparison starts again from a clean slate. `copy`:
   * the backup is now an exact copy of the primary, so its sequence and TS
   * bases become the primary's and both stand where the primary stood.
   * `align` (recorded backups, which never received the primary's state):
   * each side keeps its own positions and comparison restarts from the
   * furthest point either has reached; what the other side says below it
   * was already settled by the checkpoint.
   */
  resync(mode: 'copy' | 'align'): void {
    this.closedSides = 0;
    // A copy replaces the standby's state: what it said before no longer stands. Datagram counts restart.
    if (mode === 'copy' || this.datagrams) this.standbyLog.clear();
    if (mode === 'copy') this.standbyAck = null;
    if (this.datagrams) {
      this.datagrams.reset();
      this.held.restartCount();
      return;
    }
    const tcp = this.tcp!;
    const stream = this.stream!;
    const p = tcp.primary, b = tcp.backup;
    if (p.ackSeen) b.noteAck(p.maxAck);
    if (!stream.started) return;
    // The furthest a side has sent, gaps included. Its contiguous end can lag: a frame its ring had no room
    // for, or output forwarded unchecked while DEGRADED (a bridge restarted under traffic). What the primary
    // sent beyond went to the client with the checkpoint; restarted at the lagging end, comparison would
    // wait for the gap's bytes forever, and time out at every checkpoint.
    const sent = (ep: TcpEndpointState, end: number) => (ep.sndNxt !== null ? seqMax(end, (ep.sndNxt - ep.seqBase) >>> 0) : end);
    if (mode === 'copy') {
      // Before the backup takes the primary's bases: its sndNxt is in its own sequence space.
      const from = sent(p, stream.endOf(PRIMARY));
      b.seqBase = p.seqBase;
      b.tsBase = p.tsBase;
      b.tsSeen = p.tsSeen;
      b.synSeen = p.synSeen;
      // The copy sends from where the primary was: its own record of what it sent is the primary's now.
      b.sndNxt = p.sndNxt;
      stream.reset(from);
    } else {
      stream.reset(seqMax(sent(p, stream.endOf(PRIMARY)), sent(b, stream.endOf(BACKUP))));
    }
  }
}
