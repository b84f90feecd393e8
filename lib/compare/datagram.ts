/**
 * DatagramComparator: UDP, ICMP and other datagram flows, compared one
 * datagram at a time in the order each replica sent them. What is compared
 * is the normalized content (see normalize/datagram.ts): IP ID, TTL and
 * checksums never count.
 *
 * In:  `append(side, content)` per datagram.
 * Out: `matched`, how many datagrams of the primary have an equal backup
 *      datagram; `mismatch` on the first difference (then input is ignored
 *      until `reset`).
 */
import { Slab, SlabPool } from '../packet/slab';
import { EXCERPT_AFTER, EXCERPT_BEFORE, MatchTotals, Mismatch, Side } from './tcp-stream';

export class DatagramComparator {
  /** Datagrams both sides sent identically, counted from the last reset. */
  matched = 0;
  matchedBytes = 0;
  mismatch: Mismatch | null = null;
  /** Count of datagrams each side sent since the last reset. */
  readonly sent = [0, 0];
  private leader: Side | -1 = -1;
  private pending: Buffer[] = [];
  /** Slabs of the backup copies in `pending` (null for the primary's, which live in held frames). */
  private pendingSlabs: (Slab | null)[] = [];
  pendingBytes = 0;

  constructor(private readonly copies: SlabPool, private readonly totals: MatchTotals = { matchedBytes: 0 }) {}

  /** The side whose datagrams wait for the other's, -1 when neither. */
  get leading(): Side | -1 {
    return this.leader;
  }

  reset(): void {
    this.matched = 0;
    this.sent[0] = this.sent[1] = 0;
    this.mismatch = null;
    this.dropPending();
  }

  private dropPending(): void {
    for (const slab of this.pendingSlabs) this.copies.release(slab);
    this.leader = -1;
    this.pending = [];
    this.pendingSlabs = [];
    this.pendingBytes = 0;
  }

  /** Returns true when this datagram revealed the first mismatch. */
  append(side: Side, content: Buffer): boolean {
    if (this.mismatch) return false;
    this.sent[side]++;
    if (this.leader === -1 || this.leader === side) {
      this.leader = side;
      const kept = side === 1 ? this.copies.copy(content) : content;
      this.pending.push(kept);
      this.pendingSlabs.push(side === 1 ? this.copies.lastSlab : null);
      this.pendingBytes += kept.length;
      return false;
    }
    const theirs = this.pending.shift()!;
    const theirSlab = this.pendingSlabs.shift()!;
    this.pendingBytes -= theirs.length;
    if (this.pending.length === 0) this.leader = -1;
    if (!theirs.equals(content)) {
      let at = 0;
      while (at < theirs.length && at < content.length && theirs[at] === content[at]) at++;
      const from = Math.max(0, at - EXCERPT_BEFORE);
      const show = (b: Buffer) => JSON.stringify(b.subarray(from, at + EXCERPT_AFTER).toString('latin1'));
      this.mismatch = {
        kind: 'datagram',
        position: this.matched,
        offset: at,
        excerptOffset: from,
        primary: show(side === 0 ? content : theirs),
        backup: show(side === 0 ? theirs : content),
      };
      this.copies.release(theirSlab);
      this.dropPending();
      return true;
    }
    this.copies.release(theirSlab);
    this.matched++;
    this.matchedBytes += content.length;
    this.totals.matchedBytes += content.length;
    return false;
  }
}
