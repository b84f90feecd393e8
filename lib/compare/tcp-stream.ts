/**
 * TcpStreamComparator: compares what the primary and the backup said on one
 * TCP connection, as two streams of sequence-space units (SYN, data bytes,
 * FIN) indexed by relative position, whatever the segmentation on either
 * side. RST is compared as an event at a position.
 *
 * In:  normalized segments from each replica (`append`).
 * Out: `matched`, the position up to which both agree; `mismatch`, the first
 *      divergence (position, kind, both sides' bytes), after which the
 *      comparator ignores input until `reset`.
 *
 * Memory: only the leading side's units beyond `matched` are kept (the
 * primary's as views into its held frames, the backup's copied), plus a
 * bounded list of out-of-order segments per side.
 */
import { seqAdd, seqDiff, seqGe, seqGt, seqLe, seqLt } from '../packet/seq';
import { SlabCopier } from '../packet/slab';

export type Replica = 'primary' | 'backup';
export const PRIMARY = 0;
export const BACKUP = 1;
export type Side = 0 | 1;

export type MismatchKind = 'data' | 'syn' | 'syn-options' | 'fin' | 'rst' | 'datagram';

export interface Mismatch {
  kind: MismatchKind;
  /** Relative sequence position of the first unit that differs. */
  position: number;
  /** Offset in the data stream (bytes since the first data byte), for reports. */
  offset: number;
  /**
   * What each side said there (JSON-quoted bytes, or a unit name): up to
   * EXCERPT_BEFORE bytes of context before the difference and EXCERPT_AFTER
   * from it on.
   */
  primary: string;
  backup: string;
  /** Stream offset of the first byte of the excerpts. */
  excerptOffset: number;
}

export interface StreamSegment {
  /** Relative position of the first unit (the SYN when `syn`). */
  position: number;
  syn: boolean;
  /** What must agree in a SYN: options that shape the connection (MSS, WS, SACK, TS). */
  synSignature: string;
  payload: Buffer;
  fin: boolean;
  rst: boolean;
}

const enum Unit { Syn, Data, Fin }

interface Chunk {
  position: number;
  unit: Unit;
  /** Data bytes (Unit.Data), else empty. */
  bytes: Buffer;
  signature: string;
}

const EMPTY = Buffer.alloc(0);
export const MAX_OUT_OF_ORDER_SEGMENTS = 64;
export const EXCERPT_BEFORE = 48;
export const EXCERPT_AFTER = 16;

function chunkLength(c: Chunk): number {
  return c.unit === Unit.Data ? c.bytes.length : 1;
}

function describeUnit(c: Chunk, at = 0, before = 0): string {
  if (c.unit === Unit.Syn) return `SYN ${c.signature}`;
  if (c.unit === Unit.Fin) return 'FIN';
  return JSON.stringify(c.bytes.subarray(at - before, at + EXCERPT_AFTER).toString('latin1'));
}

export class TcpStreamComparator {
  started = false;
  matched = 0;
  /** Position of the first data byte: the origin of reported offsets. */
  origin = 0;
  /** Contiguous end of what each side has said. */
  readonly end = [0, 0];
  readonly rst: (number | null)[] = [null, null];
  rstAgreed = false;
  mismatch: Mismatch | null = null;
  matchedBytes = 0;
  /** Bytes (data units) held for the leading side beyond `matched`. */
  pendingBytes = 0;
  outOfOrderDropped = 0;

  private leader: Side | -1 = -1;
  private pending: Chunk[] = [];
  private readonly outOfOrder: Chunk[][] = [[], []];

  constructor(private readonly copier: SlabCopier) {}

  /** Leading side's units beyond `matched` (how far the other side is behind). */
  get leading(): Side | -1 { return this.leader; }

  /**
   * Starts (or restarts, after a checkpoint) comparison with both sides
   * aligned at `position`. The origin of reported offsets is set only once.
   */
  reset(position: number, originIsSyn = false): void {
    if (!this.started) this.origin = originIsSyn ? seqAdd(position, 1) : position >>> 0;
    this.started = true;
    this.matched = this.end[0] = this.end[1] = position >>> 0;
    this.rst[0] = this.rst[1] = null;
    this.rstAgreed = false;
    this.mismatch = null;
    this.leader = -1;
    this.pending = [];
    this.pendingBytes = 0;
    this.outOfOrder[0] = [];
    this.outOfOrder[1] = [];
  }

  /** Appends a side's segment. Returns true when this segment revealed the first mismatch. */
  append(side: Side, seg: StreamSegment): boolean {
    if (this.mismatch) return false;
    if (!this.started) this.reset(seg.position, seg.syn);
    let pos = seg.position;
    if (seg.syn) {
      this.accept(side, { position: pos, unit: Unit.Syn, bytes: EMPTY, signature: seg.synSignature });
      pos = seqAdd(pos, 1);
    }
    if (seg.payload.length > 0 && !this.mismatch) {
      this.accept(side, { position: pos, unit: Unit.Data, bytes: seg.payload, signature: '' });
      pos = seqAdd(pos, seg.payload.length);
    }
    if (seg.fin && !this.mismatch) {
      this.accept(side, { position: pos, unit: Unit.Fin, bytes: EMPTY, signature: '' });
      pos = seqAdd(pos, 1);
    }
    if (seg.rst && !this.mismatch) this.acceptRst(side, pos);
    return this.mismatch !== null;
  }

  private accept(side: Side, c: Chunk): void {
    const end = this.end[side];
    const chunkEnd = seqAdd(c.position, chunkLength(c));
    if (seqLe(chunkEnd, end)) return; // retransmission of what this side already said
    if (seqLt(c.position, end)) {
      // Partly retransmitted: keep the new tail (only data can straddle).
      const skip = seqDiff(c.position, end);
      c = { position: end, unit: c.unit, bytes: c.bytes.subarray(skip), signature: c.signature };
    }
    if (seqGt(c.position, end)) {
      this.holdOutOfOrder(side, c);
      return;
    }
    this.feed(side, c);
    this.drainOutOfOrder(side);
  }

  private holdOutOfOrder(side: Side, c: Chunk): void {
    const list = this.outOfOrder[side];
    if (list.length >= MAX_OUT_OF_ORDER_SEGMENTS) {
      this.outOfOrderDropped++;
      return;
    }
    list.push({ ...c, bytes: side === BACKUP ? this.copier.copy(c.bytes) : c.bytes });
  }

  private drainOutOfOrder(side: Side): void {
    const list = this.outOfOrder[side];
    let progressed = list.length > 0;
    while (progressed && !this.mismatch) {
      progressed = false;
      for (let i = 0; i < list.length; i++) {
        if (seqLe(list[i].position, this.end[side])) {
          const [c] = list.splice(i, 1);
          this.accept(side, c);
          progressed = true;
          break;
        }
      }
    }
  }

  /** `c` starts exactly at this side's end. */
  private feed(side: Side, c: Chunk): void {
    const other = (1 - side) as Side;
    const otherRst = this.rst[other];
    if (otherRst !== null && seqGe(c.position, otherRst)) {
      this.fail('rst', c.position, side, describeUnit(c), 'RST');
      return;
    }
    this.end[side] = seqAdd(c.position, chunkLength(c));
    if (this.leader !== other) {
      this.leader = side;
      this.pushPending(side, c);
      return;
    }
    // The other side is ahead: compare against what it said.
    let mine = c;
    while (this.pending.length > 0) {
      const theirs = this.pending[0];
      if (theirs.unit !== mine.unit) {
        const kind: MismatchKind = theirs.unit === Unit.Syn || mine.unit === Unit.Syn ? 'syn' : 'fin';
        this.fail(kind, mine.position, side, describeUnit(mine), describeUnit(theirs));
        return;
      }
      if (mine.unit !== Unit.Data) {
        if (mine.signature !== theirs.signature) {
          this.fail('syn-options', mine.position, side, describeUnit(mine), describeUnit(theirs));
          return;
        }
        this.pending.shift();
        this.matched = seqAdd(this.matched, 1);
        mine = { ...mine, unit: Unit.Data, bytes: EMPTY };
        break;
      }
      const n = Math.min(mine.bytes.length, theirs.bytes.length);
      const a = mine.bytes, b = theirs.bytes;
      // Native compare for long runs; the byte loop only finds where they differ.
      const same = n > 64 ? a.compare(b, 0, n, 0, n) === 0 : false;
      for (let i = 0; !same && i < n; i++) {
        if (a[i] !== b[i]) {
          const at = seqAdd(mine.position, i);
          this.matched = at;
          this.matchedBytes += i;
          // Context: what precedes the difference in both chunks (they agree there).
          const before = Math.min(i, EXCERPT_BEFORE);
          this.fail('data', at, side, describeUnit(mine, i, before), describeUnit(theirs, i, before), before);
          return;
        }
      }
      this.matched = seqAdd(this.matched, n);
      this.matchedBytes += n;
      this.pendingBytes -= n;
      if (n === theirs.bytes.length) this.pending.shift();
      else this.pending[0] = { ...theirs, position: seqAdd(theirs.position, n), bytes: theirs.bytes.subarray(n) };
      if (n === mine.bytes.length) { mine = { ...mine, bytes: EMPTY }; break; }
      mine = { ...mine, position: seqAdd(mine.position, n), bytes: mine.bytes.subarray(n) };
    }
    if (this.pending.length === 0) this.leader = -1;
    if (mine.unit === Unit.Data && mine.bytes.length === 0) return;
    // This side outran the other: its remainder becomes the pending lead.
    this.leader = side;
    this.pushPending(side, mine);
  }

  private pushPending(side: Side, c: Chunk): void {
    const bytes = side === BACKUP && c.unit === Unit.Data ? this.copier.copy(c.bytes) : c.bytes;
    this.pending.push(bytes === c.bytes ? c : { ...c, bytes });
    this.pendingBytes += bytes.length;
  }

  private acceptRst(side: Side, position: number): void {
    const other = (1 - side) as Side;
    this.rst[side] = position;
    const otherRst = this.rst[other];
    if (otherRst !== null) {
      if (otherRst !== position) this.fail('rst', position, side, `RST at ${this.offsetOf(position)}`, `RST at ${this.offsetOf(otherRst)}`);
      else this.rstAgreed = true;
      return;
    }
    if (seqGt(this.end[other], position)) {
      const ahead = this.pending.find((p) => seqGe(seqAdd(p.position, chunkLength(p)), position));
      this.fail('rst', position, side, 'RST', ahead ? describeUnit(ahead) : 'more data');
    }
  }

  private offsetOf(position: number): number {
    return seqDiff(this.origin, position);
  }

  private fail(kind: MismatchKind, position: number, side: Side, mine: string, theirs: string, context = 0): void {
    this.mismatch = {
      kind,
      position,
      offset: this.offsetOf(position),
      excerptOffset: this.offsetOf(position) - context,
      primary: side === PRIMARY ? mine : theirs,
      backup: side === PRIMARY ? theirs : mine,
    };
    this.pending = [];
    this.pendingBytes = 0;
    this.leader = -1;
  }
}
