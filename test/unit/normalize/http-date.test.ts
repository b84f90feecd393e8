import { DATE_VALUE_SPAN, HttpResponseScanner, parseImfFixdate, sameHttpDate } from '../../../lib/normalize/http-date';

const span = (value: string) => Buffer.from(`${value}\r\n`, 'latin1');

/** A response with a Content-Length body. */
function response(date: string, body: string, dateName = 'Date', extra = ''): string {
  return `HTTP/1.1 200 OK\r\nServer: nginx\r\n${dateName}: ${date}\r\n${extra}Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
}

/** Feeds `text` to a scanner starting at `start`, cut at the given offsets. */
function scan(text: string, start = 1000, cuts: number[] = []): HttpResponseScanner {
  const s = new HttpResponseScanner(start);
  const bytes = Buffer.from(text, 'latin1');
  const bounds = [0, ...cuts, bytes.length];
  for (let i = 0; i + 1 < bounds.length; i++) s.consume((start + bounds[i]) >>> 0, bytes.subarray(bounds[i], bounds[i + 1]));
  return s;
}

/** Stream positions (relative to `start`) of every Date value start the scanner reports, probing each byte. */
function datePositions(s: HttpResponseScanner, start: number, length: number): number[] {
  const out = new Set<number>();
  for (let i = 0; i < length; i++) {
    const v = s.dateValueAt((start + i) >>> 0);
    if (v) out.add(((v.start - start) >>> 0));
  }
  return [...out];
}

describe('parseImfFixdate', () => {
  it('reads the RFC 9110 example as its moment', () => {
    expect(parseImfFixdate('Sun, 06 Nov 1994 08:49:37 GMT')).toBe(Date.UTC(1994, 10, 6, 8, 49, 37));
  });

  it('reads what Date#toUTCString writes, for many moments', () => {
    for (let t = Date.UTC(1999, 11, 31, 23, 59, 58); t < Date.UTC(2030, 0, 1); t += 86_400_000 * 37 + 3_601_000) {
      const whole = t - (t % 1000);
      expect(parseImfFixdate(new Date(whole).toUTCString())).toBe(whole);
    }
  });

  it.each([
    ['the obsolete RFC 850 form', 'Sunday, 06-Nov-94 08:49:37 GMT'],
    ['the asctime form', 'Sun Nov  6 08:49:37 1994'],
    ['a wrong day name for the date', 'Mon, 06 Nov 1994 08:49:37 GMT'],
    ['a day the month does not have', 'Thu, 31 Feb 2022 10:00:00 GMT'],
    ['hour 24', 'Sun, 06 Nov 1994 24:49:37 GMT'],
    ['a zone other than GMT', 'Sun, 06 Nov 1994 08:49:37 UTC'],
    ['a lower-case month', 'Sun, 06 nov 1994 08:49:37 GMT'],
    ['a one-digit day (one byte short)', 'Sun, 6 Nov 1994 08:49:37 GMT'],
    ['non-digits in the time', 'Sun, 06 Nov 1994 08:4x:37 GMT'],
  ])('refuses %s', (_what, value) => {
    expect(parseImfFixdate(value)).toBeNull();
  });
});

describe('sameHttpDate', () => {
  const t = Date.UTC(2026, 2, 1, 12, 0, 0);
  const at = (ms: number) => span(new Date(t + ms).toUTCString());

  it('takes two values one second apart as the same within 2 s', () => {
    expect(sameHttpDate(at(0), at(1000), 2000)).toBe(true);
    expect(sameHttpDate(at(1000), at(0), 2000)).toBe(true);
  });

  it('refuses values three seconds apart with a 2 s tolerance', () => {
    expect(sameHttpDate(at(0), at(3000), 2000)).toBe(false);
  });

  it('refuses an invalid date on either side', () => {
    expect(sameHttpDate(at(0), span('Xxx, 01 Mar 2026 12:00:01 GMT'), 2000)).toBe(false);
    expect(sameHttpDate(span('Sun, 01 Mar 2026 12:00:01 GMT'), at(0), 2000)).toBe(true); // 1 March 2026 is a Sunday …
    expect(sameHttpDate(span('Mon, 01 Mar 2026 12:00:01 GMT'), at(0), 2000)).toBe(false); // … not a Monday
  });

  it('refuses a value that does not end its line with CRLF', () => {
    const bare = Buffer.concat([at(1000).subarray(0, DATE_VALUE_SPAN - 2), Buffer.from(' x')]);
    expect(sameHttpDate(at(0), bare, 2000)).toBe(false);
  });
});

describe('HttpResponseScanner', () => {
  const date = 'Sun, 01 Mar 2026 12:00:00 GMT';

  it('finds the value of a Date header, and only from its first byte to its CRLF', () => {
    const text = response(date, 'hello');
    const s = scan(text);
    const start = text.indexOf(date);
    expect(datePositions(s, 1000, text.length)).toEqual([start]);
    expect(s.dateValueAt(1000 + start - 1)).toBeNull(); // the space before it
    const v = scan(text).dateValueAt(1000 + start + DATE_VALUE_SPAN - 1)!;
    expect(v.bytes.toString('latin1', 0, v.length)).toBe(`${date}\r\n`);
    expect(scan(text).dateValueAt(1000 + start + DATE_VALUE_SPAN)).toBeNull();
  });

  it('finds a lower-case header name', () => {
    const text = response(date, 'x', 'date');
    expect(datePositions(scan(text), 1000, text.length)).toEqual([text.indexOf(date)]);
  });

  it('does not take a header that only ends in "date" for Date', () => {
    const text = response(date, 'x', 'X-Update');
    expect(datePositions(scan(text), 1000, text.length)).toEqual([]);
  });

  it('does not take a Date line in a Content-Length body for a header', () => {
    const body = `text\r\nDate: ${date}\r\nmore`;
    const text = response(date, body);
    const headerOnly = text.indexOf(date);
    expect(datePositions(scan(text), 1000, text.length)).toEqual([headerOnly]);
  });

  it('finds the Date of every response of a pipelined stream, across segment cuts at every place in the value', () => {
    const second = 'Sun, 01 Mar 2026 12:00:01 GMT';
    const text = response(date, 'first body') + response(second, `Date: ${date}\r\n`) + response(date, '');
    const expected = [text.indexOf(date), text.indexOf(second), text.lastIndexOf(`Date: ${date}`) + 6];
    for (let cut = expected[1] - 8; cut < expected[1] + DATE_VALUE_SPAN + 2; cut++) {
      expect(datePositions(scan(text, 4_294_967_000, [cut]), 4_294_967_000, text.length)).toEqual(expected);
    }
  });

  it('reads a value split across two segments only once both have come', () => {
    const text = response(date, 'x');
    const start = text.indexOf(date);
    const bytes = Buffer.from(text, 'latin1');
    const s = new HttpResponseScanner(0);
    s.consume(0, bytes.subarray(0, start + 10));
    expect(s.dateValueAt(start + 5)!.length).toBe(10);
    s.consume(start + 10, bytes.subarray(start + 10));
    expect(s.dateValueAt(start + 5)!.length).toBe(DATE_VALUE_SPAN);
  });

  it('skips chunked bodies whose chunks hold Date lines, and follows the next response', () => {
    const chunk1 = `Date: ${date}\r\n`;
    const chunk2 = `HTTP/1.1 200 OK\r\nDate: ${date}\r\n\r\n`;
    const chunked = `HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nDate: ${date}\r\n\r\n`
      + `${chunk1.length.toString(16)};ext=1\r\n${chunk1}\r\n${chunk2.length.toString(16)}\r\n${chunk2}\r\n0\r\nDate: ${date}\r\n\r\n`;
    const text = chunked + response(date, 'after');
    const expected = [chunked.indexOf(date), chunked.length + response(date, 'after').indexOf(date)];
    expect(datePositions(scan(text, 7), 7, text.length)).toEqual(expected);
    // Cut everywhere: segmentation never changes what is found.
    for (let cut = 1; cut < text.length; cut += 7) expect(datePositions(scan(text, 7, [cut]), 7, text.length)).toEqual(expected);
  });

  it('follows responses without a body (304, 1xx) into the next one', () => {
    const text = `HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 304 Not Modified\r\nDate: ${date}\r\nContent-Length: 99\r\n\r\n${response(date, 'x')}`;
    expect(datePositions(scan(text), 1000, text.length)).toHaveLength(2);
  });

  it.each([
    ['a request stream (the VM is the client)', `GET / HTTP/1.1\r\nDate: ${date}\r\n\r\n`, 'not-http'],
    ['a close-delimited body', `HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbody\r\n${response(date, '')}`, 'close-delimited'],
    ['a folded header line', `HTTP/1.1 200 OK\r\nX-A: 1\r\n b\r\nDate: ${date}\r\n\r\n`, 'obs-fold'],
    ['a bad chunk size', `HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n${response(date, '')}`, 'bad-chunk'],
    ['two different Content-Lengths', `HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab${response(date, '')}`, 'bad-content-length'],
    ['a switch of protocols', `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n${response(date, '')}`, 'upgrade'],
  ])('stops, and reports no Date after, on %s', (_what, text, why) => {
    const s = scan(text);
    expect(s.stopped).toBe(why);
    const after = text.lastIndexOf(date);
    expect(s.dateValueAt(1000 + after)).toBeNull();
  });

  it('waits at a gap and goes on once it is filled', () => {
    const text = response(date, 'abc') + response(date, 'def');
    const bytes = Buffer.from(text, 'latin1');
    const s = new HttpResponseScanner(0);
    s.consume(0, bytes.subarray(0, 10));
    s.consume(20, bytes.subarray(20));
    expect(s.at).toBe(10);
    expect(s.dateValueAt(text.indexOf(date))).toBeNull();
    s.consume(10, bytes.subarray(10, 20));
    s.consume(20, bytes.subarray(20));
    expect(s.at).toBe(bytes.length);
    expect(datePositions(s, 0, text.length)).toEqual([text.indexOf(date), text.lastIndexOf(date)]);
  });
});
