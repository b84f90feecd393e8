/**
 * HTTP `Date:` values as noise between replicas (off by default; setting
 * `normalize.httpDate`). Two servers that answer the same request a moment
 * apart stamp it with different seconds; that is not a difference in what
 * they said.
 *
 * In:  the primary's in-order TCP payload (`HttpResponseScanner.consume`);
 *      two candidate values (`sameHttpDate`).
 * Out: where the `Date:` header values of HTTP/1.x responses lie in that
 *      stream (`dateValueAt`); whether two values are the same date within a
 *      tolerance.
 *
 * Pure: no clock, no I/O. The scanner follows response framing (RFC 9112 §6:
 * Content-Length, chunked, no body for 1xx/204/304), so a `Date:` in a body
 * or a chunk is never taken for a header. Whatever it cannot frame for sure
 * (not HTTP/1.x, obs-fold, a close-delimited body, a bad chunk size, 101)
 * makes it stop for the rest of the connection; a gap in the bytes that is
 * never filled leaves it waiting. Either way it reports no more values and
 * every difference stays a mismatch. It cannot know a response to HEAD
 * (headers with a Content-Length and no body): it then skips into the next
 * response, finds no status line there and (but for a coincidence) stops. Memory: one line prefix
 * and at most MAX_DATE_VALUES values.
 */
import { seqAdd, seqDiff, seqGt, seqLe, seqLt } from '../packet/seq';

/** `Sun, 06 Nov 1994 08:49:37 GMT` (RFC 9110 §5.6.7). */
export const IMF_FIXDATE_LENGTH = 29;
/** A value the comparator can settle: the IMF-fixdate and the CRLF that ends its line. */
export const DATE_VALUE_SPAN = IMF_FIXDATE_LENGTH + 2;
/** Values kept ahead of the comparison point; beyond it the oldest is forgotten (that difference then stays a mismatch). */
export const MAX_DATE_VALUES = 32;
/** Bytes of a header line kept: enough for a field name and a Content-Length or Transfer-Encoding value. */
export const MAX_KEPT_LINE = 256;

const DAY_NAMES = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

const CR = 0x0d, LF = 0x0a, SP = 0x20, HT = 0x09, COLON = 0x3a;

function digits(b: Buffer, at: number, n: number): number {
  let v = 0;
  for (let i = at; i < at + n; i++) {
    const c = b[i] - 0x30;
    if (c < 0 || c > 9) return -1;
    v = v * 10 + c;
  }
  return v;
}

/**
 * An IMF-fixdate (RFC 9110 §5.6.7) as milliseconds since the epoch, or null
 * when `value` is not exactly one: fixed positions, English names, a day that
 * exists in its month, the day name that date really has, `GMT`. Second 60
 * (a leap second) is allowed, as the grammar allows it.
 */
export function parseImfFixdate(value: Buffer | string): number | null {
  const b = typeof value === 'string' ? Buffer.from(value, 'latin1') : value;
  if (b.length !== IMF_FIXDATE_LENGTH) return null;
  const s = b.toString('latin1');
  if (s[3] !== ',' || s[4] !== ' ' || s[7] !== ' ' || s[11] !== ' ' || s[16] !== ' ' || s[19] !== ':' || s[22] !== ':' || s.slice(25) !== ' GMT') return null;
  const dayName = DAY_NAMES.indexOf(s.slice(0, 3));
  const month = MONTHS.indexOf(s.slice(8, 11));
  const day = digits(b, 5, 2), year = digits(b, 12, 4), hour = digits(b, 17, 2), minute = digits(b, 20, 2), second = digits(b, 23, 2);
  if (dayName < 0 || month < 0 || day < 1 || year < 0 || hour < 0 || hour > 23 || minute < 0 || minute > 59 || second < 0 || second > 60) return null;
  const daysInMonth = new Date(Date.UTC(year, month + 1, 0)).getUTCDate();
  if (day > daysInMonth) return null;
  const midnight = Date.UTC(year, month, day);
  if (new Date(midnight).getUTCDay() !== dayName) return null;
  return midnight + ((hour * 60 + minute) * 60 + second) * 1000;
}

/**
 * Whether two `Date:` value spans (DATE_VALUE_SPAN bytes: the value and the
 * CRLF after it) say the same moment within `toleranceMs`: both valid
 * IMF-fixdates, both ending their line there.
 */
export function sameHttpDate(primary: Buffer, backup: Buffer, toleranceMs: number): boolean {
  if (primary.length !== DATE_VALUE_SPAN || backup.length !== DATE_VALUE_SPAN) return false;
  for (const b of [primary, backup]) if (b[IMF_FIXDATE_LENGTH] !== CR || b[IMF_FIXDATE_LENGTH + 1] !== LF) return false;
  const p = parseImfFixdate(primary.subarray(0, IMF_FIXDATE_LENGTH));
  const q = parseImfFixdate(backup.subarray(0, IMF_FIXDATE_LENGTH));
  return p !== null && q !== null && Math.abs(p - q) <= toleranceMs;
}

/** Where a `Date:` header value starts, and the scanned side's bytes of it so far (up to DATE_VALUE_SPAN). */
export interface DateValue {
  /** Sequence position of the value's first byte. */
  start: number;
  bytes: Buffer;
  length: number;
}

/** Why the scanner stopped following a stream (for tests and logs). */
export type ScannerStop = 'not-http' | 'obs-fold' | 'bad-header' | 'bad-content-length' | 'close-delimited' | 'upgrade' | 'bad-chunk' | 'line-too-long';

const enum State { StatusLine, HeaderLine, Body, ChunkSize, ChunkData, ChunkDataEnd, Trailer, Stopped }

const HTTP_PREFIX = Buffer.from('HTTP/1.', 'latin1');
const DATE_NAME = Buffer.from('date:', 'latin1');
const CONTENT_LENGTH = Buffer.from('content-length:', 'latin1');
const TRANSFER_ENCODING = Buffer.from('transfer-encoding:', 'latin1');
/** Status lines and chunk-size lines longer than this are not what a server writes. */
const MAX_CONTROL_LINE = 8192;
/** A header line this long is refused rather than followed. */
const MAX_HEADER_LINE = 65536;

function lowerAscii(c: number): number {
  return c >= 0x41 && c <= 0x5a ? c + 0x20 : c;
}

function hexDigit(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  const l = lowerAscii(c);
  return l >= 0x61 && l <= 0x66 ? l - 0x61 + 10 : -1;
}

/**
 * Follows the responses in one direction of a TCP connection and notes where
 * each `Date:` header value starts. Fed the bytes in order, by sequence
 * position; bytes it has already seen are skipped, and bytes after a gap wait
 * until the gap is filled (they are fed again then).
 *
 * Lines are copied (at most MAX_KEPT_LINE bytes of each) and read when they
 * end; bodies and chunks are skipped by count.
 */
export class HttpResponseScanner {
  /** Position of the next byte to scan. */
  at: number;
  /** `Date:` values the comparator settled as equal on this connection (counted here: only a followed connection has any). */
  datesSettled = 0;
  stopped: ScannerStop | null = null;
  /** Date values, a ring of MAX_DATE_VALUES reused slots: `count` of them from `head` on, oldest first. */
  private readonly values: DateValue[] = Array.from({ length: MAX_DATE_VALUES }, () => ({ start: 0, bytes: Buffer.alloc(DATE_VALUE_SPAN), length: 0 }));
  private head = 0;
  private count = 0;
  private state = State.StatusLine;
  private readonly line = Buffer.alloc(MAX_KEPT_LINE);
  private lineLength = 0;
  /** The current header line is `Date:` and its value has not started yet. */
  private dateLine = false;
  /** The current line's value being recorded. */
  private dateValue: DateValue | null = null;
  private status = 0;
  private contentLength = -1;
  private chunked = false;
  private transferEncoded = false;
  /** Body or chunk bytes still to skip. */
  private remaining = 0;

  constructor(start: number) {
    this.at = start >>> 0;
  }

  /** `bytes` said at `position` (sequence space). */
  consume(position: number, bytes: Buffer): void {
    if (this.stopped || bytes.length === 0) return;
    const end = seqAdd(position, bytes.length);
    if (seqLe(end, this.at)) return;
    // A gap: the bytes before it come later (reordered, or retransmitted); until then nothing is scanned.
    if (seqGt(position, this.at)) return;
    let i = seqDiff(position, this.at);
    while (i < bytes.length && !this.stopped) {
      let n: number;
      if (this.state === State.Body || this.state === State.ChunkData) {
        n = Math.min(this.remaining, bytes.length - i);
        this.remaining -= n;
        if (this.remaining === 0) this.state = this.state === State.Body ? State.StatusLine : State.ChunkDataEnd;
      } else {
        // Header lines are short: a loop beats a native call here (as for the copy in lineBytes).
        let lf = i;
        while (lf < bytes.length && bytes[lf] !== LF) lf++;
        if (lf === bytes.length) lf = -1;
        n = (lf < 0 ? bytes.length : lf + 1) - i;
        this.lineBytes(bytes, i, n);
        if (lf >= 0 && !this.stopped) this.endLine();
      }
      i += n;
      this.at = seqAdd(this.at, n);
    }
  }

  /**
   * The `Date:` value whose span (value and CRLF) holds `position`, if any.
   * Values that end before `position` are forgotten: the comparator asks in
   * increasing positions. The slot is reused later: copy what is needed.
   */
  dateValueAt(position: number): DateValue | null {
    while (this.count > 0 && seqLe(seqAdd(this.values[this.head].start, DATE_VALUE_SPAN), position)) {
      this.head = (this.head + 1) % MAX_DATE_VALUES;
      this.count--;
    }
    for (let k = 0; k < this.count; k++) {
      const d = this.values[(this.head + k) % MAX_DATE_VALUES];
      if (seqGt(d.start, position)) return null;
      if (seqLt(position, seqAdd(d.start, DATE_VALUE_SPAN))) return d;
    }
    return null;
  }

  /** Stops following (a stream it cannot frame): no more values are reported. */
  stop(why: ScannerStop): void {
    if (this.stopped) return;
    this.stopped = why;
    this.state = State.Stopped;
    this.count = 0;
    this.dateValue = null;
  }

  /** `n` bytes of the current line from `bytes[from]`, its LF included if it ends here; `this.at` is their position. */
  private lineBytes(bytes: Buffer, from: number, n: number): void {
    const before = this.lineLength;
    const kept = Math.min(n, MAX_KEPT_LINE - before);
    for (let k = 0; k < kept; k++) this.line[before + k] = bytes[from + k];
    this.lineLength = before + n;
    switch (this.state) {
      case State.StatusLine:
        if (before < HTTP_PREFIX.length) {
          const upto = Math.min(this.lineLength, HTTP_PREFIX.length);
          for (let k = before; k < upto; k++) if (this.line[k] !== HTTP_PREFIX[k]) return this.stop('not-http');
        }
        if (this.lineLength > MAX_CONTROL_LINE) this.stop('line-too-long');
        return;
      case State.HeaderLine:
        if (before === 0 && (bytes[from] === SP || bytes[from] === HT)) return this.stop('obs-fold'); // RFC 9112 §5.2: not followed
        if (this.lineLength > MAX_HEADER_LINE) return this.stop('line-too-long');
        this.dateBytes(bytes, from, n, before);
        return;
      default:
        if (this.lineLength > MAX_CONTROL_LINE) this.stop('line-too-long');
    }
  }

  /** Notes the start of a `Date:` value, and keeps its bytes (up to DATE_VALUE_SPAN). */
  private dateBytes(bytes: Buffer, from: number, n: number, before: number): void {
    let d = this.dateValue;
    let k = from;
    if (d === null) {
      if (before < DATE_NAME.length) {
        if (this.lineLength < DATE_NAME.length) return;
        this.dateLine = this.lineStartsWith(DATE_NAME);
      }
      if (!this.dateLine) return;
      // The value starts at the first byte after the colon that is not OWS (RFC 9110 §5.5).
      k = from + Math.max(0, DATE_NAME.length - before);
      while (k < from + n && (bytes[k] === SP || bytes[k] === HT)) k++;
      if (k === from + n) return;
      this.dateLine = false;
      if (bytes[k] === CR || bytes[k] === LF) return; // an empty value
      d = this.values[(this.head + this.count) % MAX_DATE_VALUES];
      if (this.count === MAX_DATE_VALUES) this.head = (this.head + 1) % MAX_DATE_VALUES;
      else this.count++;
      d.start = seqAdd(this.at, k - from);
      d.length = 0;
      this.dateValue = d;
    }
    const take = Math.min(from + n - k, DATE_VALUE_SPAN - d.length);
    if (take > 0) {
      bytes.copy(d.bytes, d.length, k, k + take);
      d.length += take;
    }
  }

  /** The line's first `name.length` bytes (of its first `length`) are `name`, any case. */
  private lineStartsWith(name: Buffer, length = this.lineLength): boolean {
    if (length < name.length) return false;
    for (let i = 0; i < name.length; i++) if (lowerAscii(this.line[i]) !== name[i]) return false;
    return true;
  }

  /** Length of the kept line without its LF and CR. */
  private contentEnd(): number {
    let n = Math.min(this.lineLength, MAX_KEPT_LINE);
    if (n > 0 && this.line[n - 1] === LF) n--;
    if (n > 0 && this.line[n - 1] === CR) n--;
    return n;
  }

  private endLine(): void {
    const truncated = this.lineLength > MAX_KEPT_LINE;
    const n = this.contentEnd();
    const line = this.line;
    this.lineLength = 0;
    this.dateLine = false;
    this.dateValue = null;
    switch (this.state) {
      case State.StatusLine: {
        // "HTTP/1.x NNN" (RFC 9112 §4); the prefix was checked byte by byte.
        const code = n >= 12 && line[8] === SP ? digits(line, 9, 3) : -1;
        if (code < 0) return this.stop('not-http');
        this.status = code;
        this.contentLength = -1;
        this.chunked = false;
        this.transferEncoded = false;
        this.state = State.HeaderLine;
        return;
      }
      case State.HeaderLine:
        if (n === 0) return this.endHeaders();
        const colon = line.subarray(0, n).indexOf(COLON);
        if (colon <= 0) return this.stop('bad-header');
        if (this.lineStartsWith(CONTENT_LENGTH, n)) return this.contentLengthField(line.toString('latin1', CONTENT_LENGTH.length, n), truncated);
        if (this.lineStartsWith(TRANSFER_ENCODING, n)) return this.transferEncodingField(line.toString('latin1', TRANSFER_ENCODING.length, n), truncated);
        return;
      case State.ChunkSize: {
        // chunk-size [ chunk-ext ] (RFC 9112 §7.1); the extension is not read.
        let size = 0, k = 0;
        for (; k < n && k < 9; k++) {
          const h = hexDigit(line[k]);
          if (h < 0) break;
          size = size * 16 + h;
        }
        const rest = k < n ? line[k] : -1;
        if (k === 0 || k > 8 || truncated || (rest !== -1 && rest !== SP && rest !== HT && rest !== 0x3b)) return this.stop('bad-chunk');
        if (size === 0) this.state = State.Trailer;
        else {
          this.remaining = size;
          this.state = State.ChunkData;
        }
        return;
      }
      case State.ChunkDataEnd:
        if (n !== 0) return this.stop('bad-chunk');
        this.state = State.ChunkSize;
        return;
      case State.Trailer:
        // Trailer fields are not headers: a Date there is not normalized (RFC 9110 §6.5.1).
        if (n === 0) this.state = State.StatusLine;
        return;
    }
  }

  private contentLengthField(raw: string, truncated: boolean): void {
    const value = raw.trim();
    if (truncated || !/^\d{1,15}$/.test(value)) return this.stop('bad-content-length');
    const length = Number(value);
    if (this.contentLength >= 0 && this.contentLength !== length) return this.stop('bad-content-length');
    this.contentLength = length;
  }

  private transferEncodingField(raw: string, truncated: boolean): void {
    if (truncated) return this.stop('line-too-long');
    this.transferEncoded = true;
    const codings = raw.split(',').map((c) => c.trim().toLowerCase());
    this.chunked = codings[codings.length - 1] === 'chunked';
  }

  /** RFC 9112 §6.3: how the body of this response is delimited. */
  private endHeaders(): void {
    const s = this.status;
    if (s === 101) return this.stop('upgrade');
    if ((s >= 100 && s < 200) || s === 204 || s === 304) {
      this.state = State.StatusLine;
      return;
    }
    if (this.transferEncoded) {
      if (!this.chunked) return this.stop('close-delimited');
      this.state = State.ChunkSize;
      return;
    }
    if (this.contentLength < 0) return this.stop('close-delimited');
    this.remaining = this.contentLength;
    this.state = this.remaining > 0 ? State.Body : State.StatusLine;
  }
}
