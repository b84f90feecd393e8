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
 *
 * With `httpDateToleranceMs` set, a difference inside the value of an HTTP
 * response's `Date:` header (found by following the primary's responses,
 * normalize/http-date.ts) opens a window over that value: both sides' bytes
 * of it are collected, comparison goes on past it, and at the value's end
 * the two dates are settled: equal within the tolerance, or the mismatch at
 * the window's start. Until then `releasable` stays at the window's start.
 */
import { seqAdd, seqDiff, seqGe, seqGt, seqLe, seqLt } from '../packet/seq';
import { Slab, SlabPool } from '../packet/slab';
import { DATE_VALUE_SPAN, HttpResponseScanner, IMF_FIXDATE_LENGTH, sameHttpDate } from '../normalize/http-date';

export type Replica = 'primary' | 'backup';
export const PRIMARY = 0;
export const BACKUP = 1;
export type Side = 0 | 1;

/** `datagram`: datagrams compared in strict order differ; `datagram-window`: a datagram found no equal within the reorder window. */
export type MismatchKind = 'data' | 'syn' | 'syn-options' | 'fin' | 'rst' | 'datagram' | 'datagram-window';
export const MISMATCH_KINDS: readonly MismatchKind[] = ['data', 'syn', 'syn-options', 'fin', 'rst', 'datagram', 'datagram-window'];

/** The name of a kind's counter in a stage report (`mismatches_syn_options`). */
export const mismatchCounter = (kind: MismatchKind): string => `mismatches_${kind.replace(/-/g, '_')}`;

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

/** Running totals shared by every comparator of a pipeline (monotonic, for metrics). */
export interface MatchTotals {
  matchedBytes: number;
  /** Segments beyond the out-of-order limit, dropped (the sender retransmits them). */
  outOfOrderDropped?: number;
  /** Datagrams matched at a different position than their equal on the other side (within the window). */
  datagramsReordered?: number;
  /** HTTP `Date:` values that differed and were settled as equal. */
  httpDateNormalized?: number;
  /** … that differed beyond the tolerance or were not both IMF-fixdates (mismatches). */
  httpDateRejected?: number;
}

/** What the comparator treats as noise beyond what normalize/tcp.ts removes. */
export interface StreamNoise {
  /** HTTP `Date:` values within this many ms of each other are the same (null: off, every byte compared). */
  httpDateToleranceMs: number | null;
}

export const NO_STREAM_NOISE: StreamNoise = { httpDateToleranceMs: null };

/** A `Date:` value whose bytes differ, being collected from both sides until its end. */
interface DateWindow {
  /** The first differing position. */
  start: number;
  /** The value's first position; the window's bytes are indexed from it. */
  value: number;
  /** Past the value's CRLF. */
  end: number;
  /** Each side's value and CRLF (DATE_VALUE_SPAN bytes), by Side; both filled up to `filled` (the sides are collected in step). */
  bytes: [Buffer, Buffer];
  filled: number;
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
  /** The slab of a copy this comparator made (backup bytes), released when the chunk is dropped. */
  slab?: Slab | null;
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

/** The shared empty `pending` of every comparator with nothing pending (frozen: a push to it throws rather than corrupts). */
const NO_CHUNKS = Object.freeze([]) as unknown as Chunk[];

const STARTED = 1;
const RST_AGREED = 2;

export class TcpStreamComparator {
  /** STARTED, RST_AGREED: one field for both (a connection costs a field per flag otherwise). */
  private flags = 0;
  matched = 0;
  /** Position of the first data byte: the origin of reported offsets. */
  origin = 0;
  /** Contiguous end of what each side has said (see endOf). */
  endPrimary = 0;
  endBackup = 0;
  /** Where each side reset the connection (stream position), null: it has not. */
  private rstPrimary: number | null = null;
  private rstBackup: number | null = null;
  mismatch: Mismatch | null = null;
  matchedBytes = 0;
  /** Bytes (data units) held for the leading side beyond `matched`. */
  pendingBytes = 0;

  private leader: Side | -1 = -1;
  /** The leading side's units beyond `matched`, from `pendingHead` on; `headSkip` bytes of the head are consumed. */
  private pending: Chunk[] = NO_CHUNKS;
  private pendingHead = 0;
  private headSkip = 0;
  /** Segments each side sent beyond its end, until the gap fills; null until the first one (most connections never have any). */
  private outOfOrder: [Chunk[], Chunk[]] | null = null;
  /** The primary's HTTP responses, followed when `Date:` values are noise (else null). */
  private scanner: HttpResponseScanner | null = null;
  private dateWindow: DateWindow | null = null;

  /**
   * `copies`: where the backup's bytes are copied to (they outlive the I/O
   * ring); released when consumed. `noise`: what differences are not
   * differences.
   */
  constructor(
    private readonly copies: SlabPool,
    private readonly totals: MatchTotals = { matchedBytes: 0 },
    private readonly noise: StreamNoise = NO_STREAM_NOISE,
  ) {}

  /** Contiguous end of what `side` has said. */
  endOf(side: Side): number {
    return side === PRIMARY ? this.endPrimary : this.endBackup;
  }

  /** Segments `side` sent beyond a gap at its end, waiting for the gap to fill (a segment lost before the bridge). */
  waitingBeyondGap(side: Side): number {
    return this.outOfOrder === null ? 0 : this.outOfOrder[side].length;
  }

  private setEnd(side: Side, end: number): void {
    if (side === PRIMARY) this.endPrimary = end;
    else this.endBackup = end;
  }

  /** Comparison has begun (a SYN or a first segment set the origin). */
  get started(): boolean { return (this.flags & STARTED) !== 0; }
  set started(v: boolean) { this.flags = v ? this.flags | STARTED : this.flags & ~STARTED; }
  /** Both sides reset the connection at the same place. */
  get rstAgreed(): boolean { return (this.flags & RST_AGREED) !== 0; }
  private set rstAgreed(v: boolean) { this.flags = v ? this.flags | RST_AGREED : this.flags & ~RST_AGREED; }
  /** `Date:` values settled as equal on this connection (kept by its scanner: none when the normalizer is off). */
  get httpDateNormalized(): number { return this.scanner?.datesSettled ?? 0; }

  /** Leading side's units beyond `matched` (how far the other side is behind). */
  get leading(): Side | -1 { return this.leader; }

  /** Up to where the primary's output may be released: `matched`, or the start of a `Date:` value not yet settled. */
  get releasable(): number {
    return this.dateWindow !== null ? this.dateWindow.start : this.matched;
  }

  /**
   * Starts (or restarts, after a checkpoint) comparison with both sides
   * aligned at `position`. The origin of reported offsets is set only once.
   */
  reset(position: number, originIsSyn = false): void {
    if (!this.started) {
      this.origin = originIsSyn ? seqAdd(position, 1) : position >>> 0;
      // A new connection. Across checkpoints the scanner goes on: it follows the primary, whose bytes it keeps seeing.
      this.scanner = this.noise.httpDateToleranceMs !== null ? new HttpResponseScanner(this.origin) : null;
    }
    this.started = true;
    this.dateWindow = null;
    this.matched = this.endPrimary = this.endBackup = position >>> 0;
    this.rstPrimary = this.rstBackup = null;
    this.rstAgreed = false;
    this.mismatch = null;
    this.dropPending();
  }

  /**
   * Notes how far a side has spoken without comparing (while a checkpoint
   * runs: what is said then is settled by the checkpoint), so that
   * comparison can restart past it.
   */
  noteExtent(side: Side, seg: StreamSegment): void {
    const segEnd = seqAdd(seg.position, (seg.syn ? 1 : 0) + seg.payload.length + (seg.fin ? 1 : 0));
    if (!this.started) this.reset(seg.position, seg.syn);
    if (seqGt(segEnd, this.endOf(side))) this.setEnd(side, segEnd);
    if (this.scanner !== null) this.scanPrimary(side, seg);
  }

  /** Appends a side's segment. Returns true when this segment revealed the first mismatch. */
  append(side: Side, seg: StreamSegment): boolean {
    if (this.mismatch) {
      if (this.scanner !== null) this.scanPrimary(side, seg);
      return false;
    }
    if (!this.started) this.reset(seg.position, seg.syn);
    let pos = seg.position;
    if (seg.syn) {
      this.accept(side, pos, Unit.Syn, EMPTY, seg.synSignature);
      pos = seqAdd(pos, 1);
    }
    if (seg.payload.length > 0 && !this.mismatch) {
      this.accept(side, pos, Unit.Data, seg.payload, '');
      pos = seqAdd(pos, seg.payload.length);
    }
    if (seg.fin && !this.mismatch) {
      this.accept(side, pos, Unit.Fin, EMPTY, '');
      pos = seqAdd(pos, 1);
    }
    if (seg.rst && !this.mismatch) this.acceptRst(side, pos);
    return this.mismatch !== null;
  }

  /** The scanner sees what the primary says even where nothing is compared (mismatch, checkpoint). */
  private scanPrimary(side: Side, seg: StreamSegment): void {
    if (side === PRIMARY && seg.payload.length > 0) this.scanner!.consume(seg.syn ? seqAdd(seg.position, 1) : seg.position, seg.payload);
  }

  private accept(side: Side, position: number, unit: Unit, bytes: Buffer, signature: string): void {
    // Before the retransmission check: after an aligning resync the primary's bytes below `end` were never scanned.
    if (this.scanner !== null && side === PRIMARY && unit === Unit.Data) this.scanner.consume(position, bytes);
    const end = this.endOf(side);
    const length = unit === Unit.Data ? bytes.length : 1;
    if (seqLe(seqAdd(position, length), end)) return; // retransmission of what this side already said
    if (seqLt(position, end)) {
      // Partly retransmitted: keep the new tail (only data can straddle).
      bytes = bytes.subarray(seqDiff(position, end));
      position = end;
    }
    if (seqGt(position, end)) {
      this.holdOutOfOrder(side, { position, unit, bytes, signature });
      return;
    }
    this.feed(side, position, unit, bytes, signature);
    if (this.outOfOrder !== null && this.outOfOrder[side].length > 0) this.drainOutOfOrder(side);
  }

  private holdOutOfOrder(side: Side, c: Chunk): void {
    const list = (this.outOfOrder ??= [[], []])[side];
    if (list.length >= MAX_OUT_OF_ORDER_SEGMENTS) {
      this.totals.outOfOrderDropped = (this.totals.outOfOrderDropped ?? 0) + 1;
      return;
    }
    if (side === BACKUP && c.unit === Unit.Data) {
      c.bytes = this.copies.copy(c.bytes);
      c.slab = this.copies.lastSlab;
    }
    list.push(c);
  }

  private drainOutOfOrder(side: Side): void {
    const list = this.outOfOrder![side];
    let progressed = true;
    while (progressed && !this.mismatch) {
      progressed = false;
      for (let i = 0; i < list.length; i++) {
        if (seqLe(list[i].position, this.endOf(side))) {
          const [c] = list.splice(i, 1);
          this.accept(side, c.position, c.unit, c.bytes, c.signature);
          this.copies.release(c.slab ?? null);
          progressed = true;
          break;
        }
      }
    }
    const o = this.outOfOrder;
    if (o !== null && o[0].length === 0 && o[1].length === 0) this.outOfOrder = null;
  }

  /** A unit run that starts exactly at this side's end. */
  private feed(side: Side, position: number, unit: Unit, bytes: Buffer, signature: string): void {
    const other = (1 - side) as Side;
    const otherRst = other === PRIMARY ? this.rstPrimary : this.rstBackup;
    if (otherRst !== null && seqGe(position, otherRst)) {
      this.fail('rst', position, side, describeUnit({ position, unit, bytes, signature }), 'RST');
      return;
    }
    const length = unit === Unit.Data ? bytes.length : 1;
    this.setEnd(side, seqAdd(position, length));
    if (this.leader !== other) {
      this.leader = side;
      this.pushPending(side, position, unit, bytes, signature);
      return;
    }
    // The other side is ahead: compare against what it said, from the head of `pending`.
    // `this.pending` is re-read on every step: shiftPending() may compact it into a new array.
    let done = 0; // units of this run already compared
    while (done < length && this.pendingHead < this.pending.length) {
      const theirs = this.pending[this.pendingHead];
      if (theirs.unit !== unit) {
        const kind: MismatchKind = theirs.unit === Unit.Syn || unit === Unit.Syn ? 'syn' : 'fin';
        this.fail(kind, seqAdd(position, done), side, describeUnit({ position, unit, bytes, signature }, done), describeUnit(theirs, this.headSkip));
        return;
      }
      if (unit !== Unit.Data) {
        if (signature !== theirs.signature) {
          this.fail('syn-options', position, side, describeUnit({ position, unit, bytes, signature }), describeUnit(theirs));
          return;
        }
        this.shiftPending();
        this.matched = seqAdd(this.matched, 1);
        done = 1;
        break;
      }
      const skip = this.headSkip;
      let n = Math.min(length - done, theirs.bytes.length - skip);
      const a = bytes, b = theirs.bytes;
      const w = this.dateWindow;
      if (w !== null) {
        // Inside a `Date:` value that differs: collect both sides' bytes; settled at the value's end.
        n = Math.min(n, seqDiff(this.matched, w.end));
        const at = seqDiff(w.value, this.matched);
        a.copy(w.bytes[side], at, done, done + n);
        b.copy(w.bytes[other], at, skip, skip + n);
        w.filled = at + n;
        this.matched = seqAdd(this.matched, n);
        this.pendingBytes -= n;
        done += n;
        if (skip + n === theirs.bytes.length) this.shiftPending();
        else this.headSkip = skip + n;
        if (this.matched === w.end && !this.settleDateWindow()) return;
        continue;
      }
      // Native compare for long runs; the byte loop only finds where they differ.
      const same = n > 32 ? a.compare(b, skip, skip + n, done, done + n) === 0 : false;
      for (let i = 0; !same && i < n; i++) {
        if (a[done + i] !== b[skip + i]) {
          const at = seqAdd(position, done + i);
          if (this.scanner !== null && this.openDateWindow(at)) {
            n = i; // agreed up to the difference; the window takes it from there
            break;
          }
          this.matched = at;
          this.matchedBytes += i;
          this.totals.matchedBytes += i;
          // Context: what precedes the difference in both chunks (they agree there).
          const before = Math.min(done + i, skip + i, EXCERPT_BEFORE);
          const mine = describeUnit({ position, unit, bytes, signature }, done + i, before);
          this.fail('data', at, side, mine, describeUnit(theirs, skip + i, before), before);
          return;
        }
      }
      this.matched = seqAdd(this.matched, n);
      this.matchedBytes += n;
      this.totals.matchedBytes += n;
      this.pendingBytes -= n;
      done += n;
      if (skip + n === theirs.bytes.length) this.shiftPending();
      else this.headSkip = skip + n;
    }
    if (this.pendingHead === this.pending.length) {
      this.leader = -1;
      this.pending = NO_CHUNKS;
      this.pendingHead = 0;
    }
    if (done === length) return;
    // This side outran the other: its remainder becomes the pending lead.
    this.leader = side;
    this.pushPending(side, seqAdd(position, done), unit, done === 0 ? bytes : bytes.subarray(done), signature);
  }

  /**
   * A difference at `at`: opens a window when `at` lies inside a `Date:`
   * value of the primary's responses (before its CRLF) that the scanner has
   * seen up to `at`. The value's bytes before `at` agree: both sides' copies
   * start with the primary's.
   */
  private openDateWindow(at: number): boolean {
    const v = this.scanner!.dateValueAt(at);
    if (v === null) return false;
    const k = seqDiff(v.start, at);
    if (k >= IMF_FIXDATE_LENGTH || v.length < k) return false;
    const w: DateWindow = { start: at, value: v.start, end: seqAdd(v.start, DATE_VALUE_SPAN), bytes: [Buffer.alloc(DATE_VALUE_SPAN), Buffer.alloc(DATE_VALUE_SPAN)], filled: k };
    v.bytes.copy(w.bytes[0], 0, 0, k);
    v.bytes.copy(w.bytes[1], 0, 0, k);
    this.dateWindow = w;
    return true;
  }

  /** Both sides have said the whole value: equal dates within the tolerance go on, anything else is the mismatch. */
  private settleDateWindow(): boolean {
    const w = this.dateWindow!;
    if (sameHttpDate(w.bytes[PRIMARY], w.bytes[BACKUP], this.noise.httpDateToleranceMs!)) {
      this.dateWindow = null;
      const n = seqDiff(w.start, w.end);
      this.matchedBytes += n;
      this.totals.matchedBytes += n;
      this.scanner!.datesSettled++;
      this.totals.httpDateNormalized = (this.totals.httpDateNormalized ?? 0) + 1;
      return true;
    }
    this.totals.httpDateRejected = (this.totals.httpDateRejected ?? 0) + 1;
    this.fail('data', w.start, PRIMARY, '', '');
    return false;
  }

  private shiftPending(): void {
    this.copies.release(this.pending[this.pendingHead].slab ?? null);
    this.pendingHead++;
    this.headSkip = 0;
    if (this.pendingHead > 32 && this.pendingHead * 2 > this.pending.length) {
      this.pending = this.pending.slice(this.pendingHead);
      this.pendingHead = 0;
    }
  }

  private pushPending(side: Side, position: number, unit: Unit, bytes: Buffer, signature: string): void {
    let slab: Slab | null = null;
    if (side === BACKUP && unit === Unit.Data) {
      bytes = this.copies.copy(bytes);
      slab = this.copies.lastSlab;
    }
    if (this.pending === NO_CHUNKS) this.pending = [];
    this.pending.push({ position, unit, bytes, signature, slab });
    if (unit === Unit.Data) this.pendingBytes += bytes.length;
  }

  private acceptRst(side: Side, position: number): void {
    const other = (1 - side) as Side;
    if (this.dateWindow !== null && seqLt(position, this.dateWindow.end)) {
      this.fail('rst', position, side, 'RST', 'more data');
      return;
    }
    if (side === PRIMARY) this.rstPrimary = position;
    else this.rstBackup = position;
    const otherRst = other === PRIMARY ? this.rstPrimary : this.rstBackup;
    if (otherRst !== null) {
      if (otherRst !== position) this.fail('rst', position, side, `RST at ${this.offsetOf(position)}`, `RST at ${this.offsetOf(otherRst)}`);
      else this.rstAgreed = true;
      return;
    }
    if (seqGt(this.endOf(other), position)) {
      const ahead = this.pending.slice(this.pendingHead).find((p) => seqGe(seqAdd(p.position, chunkLength(p)), position));
      this.fail('rst', position, side, 'RST', ahead ? describeUnit(ahead) : 'more data');
    }
  }

  private offsetOf(position: number): number {
    return seqDiff(this.origin, position);
  }

  /** Records the first mismatch; inside an unsettled `Date:` window, that window's difference is the first. */
  private fail(kind: MismatchKind, position: number, side: Side, mine: string, theirs: string, context = 0): void {
    const w = this.dateWindow;
    if (w !== null) {
      this.dateWindow = null;
      this.matched = w.start;
      const said = (s: Side) => JSON.stringify(w.bytes[s].toString('latin1', 0, w.filled));
      kind = 'data';
      position = w.start;
      context = seqDiff(w.value, w.start);
      side = PRIMARY;
      mine = said(PRIMARY);
      theirs = said(BACKUP);
    }
    this.mismatch = {
      kind,
      position,
      offset: this.offsetOf(position),
      excerptOffset: this.offsetOf(position) - context,
      primary: side === PRIMARY ? mine : theirs,
      backup: side === PRIMARY ? theirs : mine,
    };
    this.dropPending();
  }

  /** Forgets what the leading side said beyond `matched` (and out-of-order pieces), releasing copies. */
  private dropPending(): void {
    for (let i = this.pendingHead; i < this.pending.length; i++) this.copies.release(this.pending[i].slab ?? null);
    if (this.outOfOrder !== null) {
      for (const list of this.outOfOrder) for (const c of list) this.copies.release(c.slab ?? null);
      this.outOfOrder = null;
    }
    this.pending = NO_CHUNKS;
    this.pendingHead = 0;
    this.headSkip = 0;
    this.pendingBytes = 0;
    this.leader = -1;
  }
}
