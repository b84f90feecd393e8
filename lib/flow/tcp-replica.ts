/**
 * What one replica (or the client) has shown of its side of a TCP
 * connection: the base its sequence numbers count from, the TSval base, the
 * highest ACK it sent. Learnt from the handshake; a flow picked up in the
 * middle counts from zero, which is right after a checkpoint (the backup is
 * then an exact copy of the primary).
 */
import { seqGt } from '../packet/seq';

export class TcpEndpointState {
  /** Sequence number of this endpoint's SYN; relative positions count from it. */
  seqBase = 0;
  synSeen = false;
  /** TSval of the SYN (or first segment seen), for translating echoes. */
  tsBase = 0;
  tsSeen = false;
  /** Highest ACK this endpoint has sent (client sequence space), valid when ackSeen. */
  maxAck = 0;
  ackSeen = false;
  /** The end of the highest segment seen from this endpoint (its snd_nxt as far as we know; its own space), null: none yet. */
  sndNxt: number | null = null;

  noteSent(seq: number, length: number): void {
    const end = (seq + length) >>> 0;
    if (this.sndNxt === null || seqGt(end, this.sndNxt)) this.sndNxt = end;
  }

  noteAck(ack: number): void {
    if (!this.ackSeen || seqGt(ack, this.maxAck)) {
      this.maxAck = ack >>> 0;
      this.ackSeen = true;
    }
  }
}

/** The endpoints of one TCP connection: the client side and each replica. */
export class TcpConnectionState {
  readonly client = new TcpEndpointState();
  /** Index 0: primary, 1: backup. */
  readonly replicas: [TcpEndpointState, TcpEndpointState] = [new TcpEndpointState(), new TcpEndpointState()];

  /**
   * Whether client frames can be translated for the backup: either both
   * replicas' SYNs were seen (the delta is known), or neither (mid-stream
   * pick-up or after a checkpoint: the delta is zero).
   */
  get backupDeltaKnown(): boolean {
    return this.replicas[0].synSeen === this.replicas[1].synSeen;
  }

  /** backup sequence number = primary sequence number + seqDelta (mod 2^32). */
  get seqDelta(): number {
    return (this.replicas[1].seqBase - this.replicas[0].seqBase) >>> 0;
  }

  get tsDelta(): number {
    const [p, b] = this.replicas;
    return p.tsSeen && b.tsSeen ? (b.tsBase - p.tsBase) >>> 0 : 0;
  }
}
