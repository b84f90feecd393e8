/**
 * What one replica (or the client) has shown of its side of a TCP
 * connection: the base its sequence numbers count from, the TSval base, the
 * highest ACK it sent. Learnt from the handshake; a flow picked up in the
 * middle counts from zero, which is right after a checkpoint (the backup is
 * then an exact copy of the primary).
 */
import { seqGt } from '../packet/seq';

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

/** The endpoints of one TCP connection: the client side and each replica. */
export class TcpConnectionState {
  readonly client = new TcpEndpointState();
  readonly primary = new TcpEndpointState();
  readonly backup = new TcpEndpointState();

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
