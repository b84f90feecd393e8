import fc from 'fast-check';
import { BACKUP, MatchTotals, PRIMARY, Side, StreamSegment, TcpStreamComparator } from '../../../lib/compare';
import { SlabPool } from '../../../lib/packet';

/** Tiny slabs: copies are reused as soon as released, so a use after release shows up as wrong bytes. */
const pool = () => new SlabPool(true, false, 4, 2048);

function seg(position: number, payload: string, extra: Partial<StreamSegment> = {}): StreamSegment {
  return { position, syn: false, synSignature: '', payload: Buffer.from(payload, 'latin1'), fin: false, rst: false, ...extra };
}
const syn = () => seg(0, '', { syn: true, synSignature: 'mss=1460' });

const T0 = Date.UTC(2026, 2, 1, 11, 59, 59, 600);
const date = (ms: number) => new Date(T0 + ms).toUTCString();

function response(when: string, body: string, dateName = 'Date'): string {
  return `HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\n${dateName}: ${when}\r\nContent-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
}

function comparator(toleranceMs: number | null): { c: TcpStreamComparator; totals: MatchTotals } {
  const totals: MatchTotals = { matchedBytes: 0 };
  const c = new TcpStreamComparator(pool(), totals, { httpDateToleranceMs: toleranceMs });
  c.append(PRIMARY, syn());
  c.append(BACKUP, syn());
  return { c, totals };
}

/** Both sides' whole streams, primary first. */
function both(c: TcpStreamComparator, primary: string, backup: string): void {
  c.append(PRIMARY, seg(1, primary));
  c.append(BACKUP, seg(1, backup));
}

describe('TcpStreamComparator with HTTP Date values as noise', () => {
  const p = response(date(0), 'hello');
  const b1 = response(date(1000), 'hello');

  it('reports Date values a second apart as a data mismatch when the setting is off', () => {
    const { c } = comparator(null);
    both(c, p, b1);
    expect(c.mismatch).toMatchObject({ kind: 'data', offset: firstDifference(p, b1) });
    expect(c.mismatch!.offset).toBeGreaterThanOrEqual(p.indexOf(date(0)));
  });

  it('takes Date values a second apart as equal when on, compares on past them and counts them', () => {
    const { c, totals } = comparator(2000);
    both(c, p, b1);
    expect(c.mismatch).toBeNull();
    expect(c.matched).toBe(1 + p.length);
    expect(c.releasable).toBe(c.matched);
    expect(c.matchedBytes).toBe(p.length);
    expect(c.httpDateNormalized).toBe(1);
    expect(totals.httpDateNormalized).toBe(1);
  });

  it('reports Date values three seconds apart as a mismatch at their first differing byte, showing both values', () => {
    const { c, totals } = comparator(2000);
    const b3 = response(date(3000), 'hello');
    both(c, p, b3);
    const first = firstDifference(p, b3);
    expect(c.mismatch).toMatchObject({ kind: 'data', offset: first, excerptOffset: p.indexOf(date(0)) });
    expect(JSON.parse(c.mismatch!.primary)).toBe(`${date(0)}\r\n`);
    expect(JSON.parse(c.mismatch!.backup)).toBe(`${date(3000)}\r\n`);
    expect(c.matched).toBe(1 + first);
    expect(totals.httpDateRejected).toBe(1);
    expect(c.httpDateNormalized).toBe(0);
  });

  it('still finds a difference after a normalized Date', () => {
    const { c } = comparator(2000);
    const other = response(date(1000), 'hellO');
    both(c, p, other);
    expect(c.httpDateNormalized).toBe(1);
    expect(c.mismatch).toMatchObject({ kind: 'data', offset: p.length - 1 });
  });

  it('reports a lower-case date header a second apart as equal', () => {
    const { c } = comparator(2000);
    both(c, response(date(0), 'x', 'date'), response(date(1000), 'x', 'date'));
    expect(c.mismatch).toBeNull();
    expect(c.httpDateNormalized).toBe(1);
  });

  it('reports a Date line in a body as a mismatch, even one second apart', () => {
    const { c } = comparator(2000);
    const pb = response(date(0), `Date: ${date(0)}\r\n`);
    const bb = response(date(0), `Date: ${date(1000)}\r\n`);
    both(c, pb, bb);
    expect(c.mismatch).toMatchObject({ kind: 'data' });
    expect(c.mismatch!.offset).toBeGreaterThan(pb.indexOf('\r\n\r\n'));
  });

  it('reports an invalid date and a value of another length as mismatches', () => {
    const bad = comparator(2000).c;
    both(bad, p, p.replace(date(0).slice(0, 3), 'Xyz'));
    expect(bad.mismatch).toMatchObject({ kind: 'data' });
    const longer = comparator(2000).c;
    both(longer, p, p.replace(' GMT', ' GMT '));
    expect(longer.mismatch).toMatchObject({ kind: 'data' });
  });

  it('holds release at the difference until the rest of a split value has come, then goes on', () => {
    const { c } = comparator(2000);
    c.append(PRIMARY, seg(1, p));
    const cut = b1.indexOf(date(1000)) + 26;
    c.append(BACKUP, seg(1, b1.slice(0, cut)));
    const first = firstDifference(p, b1);
    expect(c.mismatch).toBeNull();
    expect(c.releasable).toBe(1 + first); // the primary's bytes from the difference on wait
    c.append(BACKUP, seg(1 + cut, b1.slice(cut)));
    expect(c.mismatch).toBeNull();
    expect(c.releasable).toBe(1 + p.length);
  });

  it('settles the same way when the backup speaks first', () => {
    const { c } = comparator(2000);
    c.append(BACKUP, seg(1, b1));
    const cut = p.indexOf(date(0)) + 20;
    c.append(PRIMARY, seg(1, p.slice(0, cut)));
    c.append(PRIMARY, seg(1 + cut, p.slice(cut)));
    expect(c.mismatch).toBeNull();
    expect(c.httpDateNormalized).toBe(1);
    expect(c.matched).toBe(1 + p.length);
  });

  it('reports the Date difference when one side ends its stream inside the value', () => {
    const { c } = comparator(2000);
    c.append(PRIMARY, seg(1, p));
    const cut = b1.indexOf(date(1000)) + 26;
    c.append(BACKUP, seg(1, b1.slice(0, cut), { fin: true }));
    expect(c.mismatch).toMatchObject({ kind: 'data', excerptOffset: p.indexOf(date(0)) });
    expect(c.releasable).toBeLessThan(1 + cut);
  });

  it('goes on following the responses across a checkpoint (reset where the primary stands)', () => {
    const { c } = comparator(2000);
    both(c, p, response(date(5000), 'hello'));
    expect(c.mismatch).not.toBeNull();
    const next = response(date(0), 'again');
    c.append(PRIMARY, seg(1 + p.length, next.slice(0, 40))); // said while the checkpoint runs: not compared
    c.noteExtent(PRIMARY, seg(1 + p.length + 40, next.slice(40)));
    c.reset(c.endOf(PRIMARY));
    const after = response(date(0), 'third');
    both2(c, 1 + p.length + next.length, after, response(date(1000), 'third'));
    expect(c.mismatch).toBeNull();
    expect(c.httpDateNormalized).toBe(1);
  });

  it('takes every Date of pipelined responses a second apart as equal, whatever the segmentation and interleaving', () => {
    const bodies = ['a', `Date: x\r\n`, '', 'chunk'.repeat(40)];
    const primary = bodies.map((body, i) => response(date(i * 700), body)).join('');
    const backup = bodies.map((body, i) => response(date(i * 700 + 1000), body)).join('');
    const differing = bodies.filter((_, i) => date(i * 700) !== date(i * 700 + 1000)).length;
    fc.assert(fc.property(
      fc.array(fc.integer({ min: 1, max: primary.length - 1 }), { maxLength: 12 }),
      fc.array(fc.integer({ min: 1, max: backup.length - 1 }), { maxLength: 12 }),
      fc.array(fc.boolean(), { minLength: 1, maxLength: 30 }),
      (pc, bc, schedule) => {
        const { c } = comparator(2000);
        for (const [side, s] of interleave(cut(primary, pc), cut(backup, bc), schedule)) c.append(side, s);
        return c.mismatch === null && c.matched === 1 + primary.length && c.httpDateNormalized === differing;
      },
    ), { numRuns: 300 });
  });
});

function firstDifference(a: string, b: string): number {
  let i = 0;
  while (a[i] === b[i]) i++;
  return i;
}

function both2(c: TcpStreamComparator, at: number, primary: string, backup: string): void {
  c.append(PRIMARY, seg(at, primary));
  c.append(BACKUP, seg(at, backup));
}

function cut(text: string, points: number[]): StreamSegment[] {
  const bounds = [0, ...[...new Set(points)].sort((a, b) => a - b), text.length];
  const out: StreamSegment[] = [];
  for (let i = 0; i + 1 < bounds.length; i++) out.push(seg(1 + bounds[i], text.slice(bounds[i], bounds[i + 1])));
  return out;
}

function interleave(p: StreamSegment[], b: StreamSegment[], schedule: boolean[]): [Side, StreamSegment][] {
  const out: [Side, StreamSegment][] = [];
  let i = 0, j = 0, k = 0;
  while (i < p.length || j < b.length) {
    const pickPrimary = j >= b.length || (i < p.length && schedule[k++ % schedule.length]);
    if (pickPrimary) out.push([PRIMARY, p[i++]]);
    else out.push([BACKUP, b[j++]]);
  }
  return out;
}
