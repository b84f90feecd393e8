/**
 * What one replica (or the client) has shown of its side of a TCP
 * connection: the base its sequence numbers count from, the TSval base, the
 * highest ACK it sent. Learnt from the handshake; a flow picked up in the
 * middle counts from zero, which is right after a checkpoint (the backup is
 * then an exact copy of the primary).
 */
import { seqDiff, seqGe, seqGt } from '../packet/seq';

const SYN_SEEN = 1;
const TS_SEEN = 2;
const ACK_SEEN = 4;
const SND_NXT_SEEN = 8;

/**
 * Sequence numbers and TSvals are unsigned 32-bit values. Each is kept as
 * the signed 32-bit integer with the same bits (`v | 0`), which V8 stores in
 * the object itself, and read back unsigned (`>>> 0`): stored as they are,
 * half of them (those at or above 2^31) would each cost a 16-byte number box
 * per connection, and the flags a field each.
 */
export class TcpEndpointState {
  private seqBase32 = 0;
  private tsBase32 = 0;
  private maxAck32 = 0;
  private sndNxt32 = 0;
  private flags = 0;

  /** Sequence number of this endpoint's SYN; relative positions count from it. */
  get seqBase(): number { return this.seqBase32 >>> 0; }
  set seqBase(v: number) { this.seqBase32 = v | 0; }
  get synSeen(): boolean { return (this.flags & SYN_SEEN) !== 0; }
  set synSeen(v: boolean) { this.flags = v ? this.flags | SYN_SEEN : this.flags & ~SYN_SEEN; }
  /** TSval of the SYN (or first segment seen), for translating echoes. */
  get tsBase(): number { return this.tsBase32 >>> 0; }
  set tsBase(v: number) { this.tsBase32 = v | 0; }
  get tsSeen(): boolean { return (this.flags & TS_SEEN) !== 0; }
  set tsSeen(v: boolean) { this.flags = v ? this.flags | TS_SEEN : this.flags & ~TS_SEEN; }
  /** Highest ACK this endpoint has sent (client sequence space), valid when ackSeen. */
  get maxAck(): number { return this.maxAck32 >>> 0; }
  set maxAck(v: number) { this.maxAck32 = v | 0; }
  get ackSeen(): boolean { return (this.flags & ACK_SEEN) !== 0; }
  set ackSeen(v: boolean) { this.flags = v ? this.flags | ACK_SEEN : this.flags & ~ACK_SEEN; }
  /** The end of the highest segment seen from this endpoint (its snd_nxt as far as we know; its own space), null: none yet. */
  get sndNxt(): number | null { return this.flags & SND_NXT_SEEN ? this.sndNxt32 >>> 0 : null; }
  set sndNxt(v: number | null) {
    if (v === null) this.flags &= ~SND_NXT_SEEN;
    else {
      this.sndNxt32 = v | 0;
      this.flags |= SND_NXT_SEEN;
    }
  }

  noteSent(seq: number, length: number): void {
    const end = (seq + length) >>> 0;
    const nxt = this.sndNxt;
    if (nxt === null || seqGt(end, nxt)) this.sndNxt = end;
  }

  noteAck(ack: number): void {
    if (!this.ackSeen || seqGt(ack, this.maxAck)) {
      this.maxAck = ack;
      this.ackSeen = true;
    }
  }
}

/** "Never" for a time kept in whole ms (far in the past, still a small integer). */
export const NEVER_MS = -1e9;

/** primaryPauseMs beyond this is kept as this (a small integer; the grace is capped far below it anyway). */
const MAX_PRIMARY_PAUSE_MS = 3_600_000;

/** A client window with less than this left (bytes) past the primary's stream end counts as full: one MSS. */
export const WINDOW_FULL_SLACK = 1460;

/** The endpoints of one TCP connection: the client side and each replica. */
export class TcpConnectionState {
  readonly client = new TcpEndpointState();
  readonly primary = new TcpEndpointState();
  readonly backup = new TcpEndpointState();
  /**
   * The window field of the client's highest ACK (raw, unscaled: bits 0-15)
   * and its scale plus one (bits 16-19; 0: unknown), in one small integer.
   */
  private window32 = 0;

  /** The window field of the client's highest ACK (raw, unscaled). */
  get clientWindow(): number { return this.window32 & 0xffff; }
  /**
   * Its scale: the client SYN's window shift, or 0 when the client or the
   * primary's SYN-ACK did not offer scaling; -1 unknown (no SYN seen).
   */
  get clientWindowShift(): number { return ((this.window32 >>> 16) & 0xf) - 1; }
  set clientWindowShift(shift: number) { this.window32 = (this.window32 & 0xffff) | (((Math.min(Math.max(shift, -1), 14) + 1) & 0xf) << 16); }

  /**
   * When the client last opened a full window (its right edge moved while the
   * primary stood at it), in whole ms of the data path's clock: a small
   * integer, kept in the object (a µs float would cost a boxed number per
   * connection). NEVER_MS: not yet.
   */
  windowOpenedMs = NEVER_MS;

  /**
   * While the client has acknowledged everything the primary sent and has nothing of its own to be answered:
   * when it last sent an ACK, whole ms; NEVER_MS while data is in flight, a client's data waits for an answer
   * or the window is full. See primaryPauseMs.
   */
  private quietSinceMs = NEVER_MS;
  /**
   * The longest the primary stayed quiet of its own accord, whole ms: with nothing in flight (the client had
   * acknowledged all it sent), nothing from the client to answer and at least a segment of window, from the
   * client's last ACK until the primary's next new data. A sender held by ACKs or by the client's window goes
   * on as soon as they come (about 0 here); a server that paces its output by the clock (nginx limit_rate)
   * sleeps on its own timer. See the pipeline's PACED_GRACE.
   */
  primaryPauseMs = 0;

  /**
   * A client ACK without data (primary's sequence space), after noteClientAck. `primaryEnd`: the primary's
   * stream end (a position from its SYN), null if unknown.
   */
  noteClientPureAck(ack: number, nowUs: number, primaryEnd: number | null): void {
    // Less than a segment of window left: the primary waits on the reader (or its persist timer), not on itself.
    if (primaryEnd !== null && this.windowFull(primaryEnd, WINDOW_FULL_SLACK)) {
      this.quietSinceMs = NEVER_MS;
      return;
    }
    const ms = Math.floor(nowUs / 1000);
    if (this.quietSinceMs !== NEVER_MS) {
      this.quietSinceMs = ms; // a later ACK (a window update): the primary's own quiet counts from it
      return;
    }
    const p = this.primary;
    const sent = p.sndNxt;
    // Everything acknowledged, and data among it (not a bare SYN-ACK: a server that speaks first is not pacing).
    if (sent !== null && seqGe(ack, sent) && (!p.synSeen || seqDiff(p.seqBase, sent) > 1)) this.quietSinceMs = ms;
  }

  /** Data from the client: the primary's next bytes answer it, so the wait until then is none of its own. */
  noteClientData(): void {
    this.quietSinceMs = NEVER_MS;
  }

  /** The primary sent new data now. */
  notePrimaryData(nowUs: number): void {
    // A pause ended by the client opening a full window was the reader's doing, not the server's.
    if (this.quietSinceMs !== NEVER_MS && this.windowOpenedMs < this.quietSinceMs) {
      const pause = Math.floor(nowUs / 1000) - this.quietSinceMs;
      if (pause > this.primaryPauseMs) this.primaryPauseMs = Math.min(pause, MAX_PRIMARY_PAUSE_MS);
    }
    this.quietSinceMs = NEVER_MS;
  }

  /**
   * A client ACK (primary's sequence space) and its window. `primaryEnd`:
   * the primary's stream end (a position from its SYN), null if unknown.
   */
  noteClientAck(ack: number, window: number, nowUs: number, primaryEnd: number | null): void {
    const c = this.client;
    if (c.ackSeen && seqGt(c.maxAck, ack)) return; // an older ACK: it says nothing about the window now
    if (primaryEnd !== null && this.windowFull(primaryEnd, WINDOW_FULL_SLACK) && seqGt(this.rightEdge(ack, window), this.rightEdge(c.maxAck, this.clientWindow))) {
      this.windowOpenedMs = Math.floor(nowUs / 1000);
    }
    c.maxAck = ack;
    c.ackSeen = true;
    this.window32 = (this.window32 & ~0xffff) | (window & 0xffff);
  }

  /** The right edge of a client window (primary's sequence space); an unknown scale counts as none. */
  private rightEdge(ack: number, window: number): number {
    return (ack + window * 2 ** Math.max(this.clientWindowShift, 0)) >>> 0;
  }

  /**
   * The client's window is (nearly) full: the primary has sent (`primaryEnd`,
   * a stream position: from its SYN) up to within `slack` bytes of its right
   * edge, so neither replica may say more until the client opens it. False
   * when the window's scale is unknown.
   */
  windowFull(primaryEnd: number, slack: number): boolean {
    const c = this.client;
    if (this.clientWindowShift < 0 || !c.ackSeen) return false;
    // The right edge, counted like the stream's positions: from the primary's SYN.
    return seqDiff(primaryEnd, (this.rightEdge(c.maxAck, this.clientWindow) - this.primary.seqBase) >>> 0) < slack;
  }

  /** A replica's side by comparison index (0: primary, 1: backup). */
  replica(side: number): TcpEndpointState {
    return side === 0 ? this.primary : this.backup;
  }

  /** Both replicas' sides, index 0 the primary (a new pair each time: use `replica` on hot paths). */
  get replicas(): [TcpEndpointState, TcpEndpointState] {
    return [this.primary, this.backup];
  }

  /**
   * Whether client frames can be translated for the backup: either both
   * replicas' SYNs were seen (the delta is known), or neither (mid-stream
   * pick-up or after a checkpoint: the delta is zero).
   */
  get backupDeltaKnown(): boolean {
    return this.primary.synSeen === this.backup.synSeen;
  }

  /** backup sequence number = primary sequence number + seqDelta (mod 2^32). */
  get seqDelta(): number {
    return (this.backup.seqBase - this.primary.seqBase) >>> 0;
  }

  get tsDelta(): number {
    const p = this.primary, b = this.backup;
    return p.tsSeen && b.tsSeen ? (b.tsBase - p.tsBase) >>> 0 : 0;
  }
}
