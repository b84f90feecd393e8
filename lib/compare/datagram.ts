/**
 * DatagramComparator: UDP, ICMP and other datagram flows. What is compared
 * is the normalized content (see normalize/datagram.ts): IP ID, TTL and
 * checksums never count. Replicas may send the same datagrams in a
 * different order (two DNS queries answered by two threads), so a datagram
 * matches any equal, still unmatched datagram of the other side within a
 * window of positions: with window W, datagram i of one side may pair with
 * datagram j of the other when |i - j| < W (W = 1: strict order). Among
 * equal candidates the earliest wins, so equal datagrams pair in order.
 *
 * In:  `append(side, content)` per datagram; `expire()` when the oldest
 *      unmatched primary datagram has waited too long.
 * Out: `matched`, how many of the primary's datagrams, counted from its
 *      first, all have an equal backup datagram (the release gate);
 *      `mismatch` once a datagram can no longer be matched: the other side
 *      has sent every datagram within the window of its position and none
 *      was equal (kind `datagram` with W = 1, `datagram-window` otherwise;
 *      then input is only counted until `reset`); `reordered`, matches made
 *      out of position.
 *
 * Release order: `matched` is a prefix, so a primary datagram matched out
 * of order waits for every earlier primary datagram to match. UDP makes no
 * promise of order, but the bridge does not add reordering the primary did
 * not make, and what the client has received stays "the first N datagrams",
 * which is what failover needs to tell the backup's backlog from what the
 * client already has (`backupDelivered`). The cost is head-of-line waiting,
 * bounded by the window and the unmatched-age trigger.
 *
 * Memory: the unmatched datagrams of each side (the primary's as views into
 * its held frames, the backup's copied), bounded by the flow's high-water
 * marks, plus small records of matched datagrams that wait behind an
 * unmatched one (fewer than 2·W per side: a datagram left unmatched that
 * long is a mismatch).
 */
import { Slab, SlabPool } from '../packet/slab';
import { BACKUP, EXCERPT_AFTER, EXCERPT_BEFORE, MatchTotals, Mismatch, PRIMARY, Side } from './tcp-stream';

export const DEFAULT_DATAGRAM_WINDOW = 8;
/** Each new datagram is checked against up to 2·W − 1 of the other side's: the window stays small. */
export const MAX_DATAGRAM_WINDOW = 256;

interface PendingDatagram {
  /** Normalized content while unmatched; null once matched (or after a mismatch). */
  content: Buffer | null;
  /** The slab of a backup copy, released when the content is dropped. */
  slab: Slab | null;
  /** Position (from 1) of the other side's equal datagram; 0 while unmatched. */
  partner: number;
}

/** One side's datagrams from `base` on: the ones not yet settled, in the order the side sent them. */
/** The shared empty list of every queue with nothing pending (frozen: a push to it throws rather than corrupts). */
const NO_ITEMS = Object.freeze([]) as unknown as PendingDatagram[];

class PendingQueue {
  private items: PendingDatagram[] = NO_ITEMS;
  private head = 0;
  /** Position (from 1) of the first item. */
  base = 1;

  get length(): number {
    return this.items.length - this.head;
  }

  /** The datagram at `position`, or undefined when it is settled or not yet sent. */
  at(position: number): PendingDatagram | undefined {
    const i = position - this.base;
    return i >= 0 && i < this.length ? this.items[this.head + i] : undefined;
  }

  get first(): PendingDatagram | undefined {
    return this.length > 0 ? this.items[this.head] : undefined;
  }

  push(d: PendingDatagram): void {
    if (this.items === NO_ITEMS) this.items = [];
    this.items.push(d);
  }

  shift(): void {
    this.head++;
    this.base++;
    if (this.head === this.items.length) {
      this.items = NO_ITEMS;
      this.head = 0;
    } else if (this.head > 64 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
  }

  forEach(fn: (d: PendingDatagram) => void): void {
    for (let i = this.head; i < this.items.length; i++) fn(this.items[i]);
  }

  clear(): void {
    this.items = NO_ITEMS;
    this.head = 0;
    this.base = 1;
  }
}

export class DatagramComparator {
  /** The primary's datagrams, from its first since the last reset, that all have an equal backup datagram. */
  matched = 0;
  matchedBytes = 0;
  mismatch: Mismatch | null = null;
  /** Count of datagrams each side sent since the last reset (fields, not a pair: a flow costs less; see sentOf). */
  private sentP = 0;
  private sentB = 0;
  /** Matches since the last reset where the two datagrams stood at different positions. */
  reordered = 0;
  /** Content bytes of the unmatched datagrams of both sides. */
  pendingBytes = 0;
  /** Unmatched datagrams of each side (see unmatchedOf). */
  private unmatchedP = 0;
  private unmatchedB = 0;
  private readonly queueP = new PendingQueue();
  private readonly queueB = new PendingQueue();

  constructor(
    private readonly copies: SlabPool,
    private readonly totals: MatchTotals = { matchedBytes: 0 },
    readonly window = DEFAULT_DATAGRAM_WINDOW,
  ) {
    if (!Number.isInteger(window) || window < 1 || window > MAX_DATAGRAM_WINDOW) {
      throw new RangeError(`datagram window must be an integer from 1 to ${MAX_DATAGRAM_WINDOW}, got ${window}`);
    }
  }

  /** Datagrams `side` sent since the last reset. */
  sentOf(side: Side): number { return side === PRIMARY ? this.sentP : this.sentB; }
  /** Both counts, primary first (a new pair each time). */
  get sent(): [number, number] { return [this.sentP, this.sentB]; }
  /** Unmatched datagrams of `side`. */
  unmatchedOf(side: Side): number { return side === PRIMARY ? this.unmatchedP : this.unmatchedB; }
  get unmatched(): [number, number] { return [this.unmatchedP, this.unmatchedB]; }
  private queue(side: Side): PendingQueue { return side === PRIMARY ? this.queueP : this.queueB; }
  private addUnmatched(side: Side, n: number): void {
    if (side === PRIMARY) this.unmatchedP += n;
    else this.unmatchedB += n;
  }

  /** Datagrams of both sides this comparator keeps a record of (unmatched, or matched and waiting to be settled). */
  get records(): number {
    return this.queueP.length + this.queueB.length;
  }

  /** The side that has sent more datagrams (the other's answers are still to come), -1 when neither. */
  get leading(): Side | -1 {
    const p = this.sentP, b = this.sentB;
    return p > b ? PRIMARY : b > p ? BACKUP : -1;
  }

  reset(): void {
    this.matched = 0;
    this.sentP = this.sentB = 0;
    this.reordered = 0;
    this.mismatch = null;
    this.dropContents();
    this.queueP.clear();
    this.queueB.clear();
  }

  /**
   * Whether the backup's datagram at `position` matched one of the first
   * `matched` primary datagrams (the ones the release gate let go). For
   * failover: the backup's other datagrams are its backlog.
   */
  backupDelivered(position: number): boolean {
    const q = this.queue(BACKUP);
    if (position < q.base) return true;
    const d = q.at(position);
    return d !== undefined && d.partner !== 0 && d.partner <= this.matched;
  }

  /** Returns true when this datagram revealed the first mismatch. */
  append(side: Side, content: Buffer): boolean {
    const position = side === PRIMARY ? ++this.sentP : ++this.sentB;
    if (this.mismatch) return false;
    const other = (1 - side) as Side;
    const theirs = this.queue(other);
    const from = Math.max(theirs.base, position - this.window + 1);
    const to = Math.min(this.sentOf(other), position + this.window - 1);
    let partner = 0;
    for (let j = from; j <= to; j++) {
      const d = theirs.at(j)!;
      if (d.partner === 0 && d.content!.equals(content)) {
        partner = j;
        this.pair(d, position, other);
        break;
      }
    }
    if (partner !== 0) {
      this.queue(side).push({ content: null, slab: null, partner });
      this.matchedBytes += content.length;
      this.totals.matchedBytes += content.length;
      if (partner !== position) {
        this.reordered++;
        this.totals.datagramsReordered = (this.totals.datagramsReordered ?? 0) + 1;
      }
    } else {
      const kept = side === BACKUP ? this.copies.copy(content) : content;
      this.queue(side).push({ content: kept, slab: side === BACKUP ? this.copies.lastSlab : null, partner: 0 });
      this.addUnmatched(side, 1);
      this.pendingBytes += kept.length;
    }
    // A mismatch stops releases: `matched` stays where it stood, so what it counts is what the client got.
    if (this.findUnmatchable()) return true;
    this.settle();
    return false;
  }

  /**
   * The oldest unmatched primary datagram waited too long. When the backup
   * also has datagrams nothing matched, the replicas said different things:
   * a mismatch (returns true), reported with both sides' bytes. Otherwise the
   * backup is merely behind (the caller's timeout).
   */
  expire(): boolean {
    if (this.mismatch || this.unmatchedP === 0 || this.unmatchedB === 0) return false;
    const lost = this.firstUnmatched(PRIMARY)!;
    this.declare(PRIMARY, lost.position, lost.d, this.firstUnmatched(BACKUP)!.d);
    return true;
  }

  private pair(theirs: PendingDatagram, position: number, side: Side): void {
    theirs.partner = position;
    this.pendingBytes -= theirs.content!.length;
    this.addUnmatched(side, -1);
    theirs.content = null;
    this.copies.release(theirs.slab);
    theirs.slab = null;
  }

  /** Advances the release gate over matched primary datagrams; forgets the backup's equals of the ones it let go. */
  private settle(): void {
    const p = this.queue(PRIMARY);
    for (let d = p.first; d && d.partner !== 0; d = p.first) {
      p.shift();
      this.matched++;
    }
    const b = this.queue(BACKUP);
    for (let d = b.first; d && d.partner !== 0 && d.partner <= this.matched; d = b.first) b.shift();
  }

  private firstUnmatched(side: Side): { position: number; d: PendingDatagram } | null {
    const q = this.queue(side);
    if (this.unmatchedOf(side) === 0) return null;
    for (let position = q.base; ; position++) {
      const d = q.at(position)!;
      if (d.partner === 0) return { position, d };
    }
  }

  /**
   * A datagram at position j can pair only with the other side's datagrams
   * j − W + 1 … j + W − 1; once the other side has sent all of them and none
   * was equal, it never will. Checking each side's earliest unmatched
   * datagram suffices: it is the first to run out of candidates.
   */
  private findUnmatchable(): boolean {
    for (const side of [PRIMARY, BACKUP] as const) {
      const u = this.firstUnmatched(side);
      if (!u || this.sentOf((1 - side) as Side) < u.position + this.window - 1) continue;
      const counterpart = this.firstUnmatched((1 - side) as Side);
      this.declare(side, u.position, u.d, counterpart?.d);
      return true;
    }
    return false;
  }

  /** Records the mismatch of `lost` (at `position` on `side`), shown against the other side's earliest unmatched datagram. */
  private declare(side: Side, position: number, lost: PendingDatagram, counterpart?: PendingDatagram): void {
    const mine = lost.content!;
    const theirs = counterpart?.content ?? Buffer.alloc(0);
    let at = 0;
    while (at < mine.length && at < theirs.length && mine[at] === theirs[at]) at++;
    const from = Math.max(0, at - EXCERPT_BEFORE);
    const show = (b: Buffer) => JSON.stringify(b.subarray(from, at + EXCERPT_AFTER).toString('latin1'));
    this.mismatch = {
      kind: this.window === 1 ? 'datagram' : 'datagram-window',
      position: position - 1,
      offset: at,
      excerptOffset: from,
      primary: show(side === PRIMARY ? mine : theirs),
      backup: show(side === PRIMARY ? theirs : mine),
    };
    // Matched records stay (failover still asks `backupDelivered`); contents go.
    this.dropContents();
  }

  private dropContents(): void {
    for (const q of [this.queueP, this.queueB]) {
      q.forEach((d) => {
        this.copies.release(d.slab);
        d.slab = null;
        d.content = null;
      });
    }
    this.pendingBytes = 0;
    this.unmatchedP = this.unmatchedB = 0;
  }
}
