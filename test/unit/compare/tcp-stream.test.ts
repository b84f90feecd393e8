import fc from 'fast-check';
import { BACKUP, PRIMARY, Side, StreamSegment, TcpStreamComparator } from '../../../lib/compare';
import { SlabPool } from '../../../lib/packet';

/** Tiny slabs: copies are reused as soon as released, so a use after release shows up as wrong bytes. */
const pool = () => new SlabPool(true, false, 4, 2048);

function seg(position: number, payload: Buffer | string, extra: Partial<StreamSegment> = {}): StreamSegment {
  return { position, syn: false, synSignature: '', payload: Buffer.from(payload), fin: false, rst: false, ...extra };
}
const syn = (sig = 'mss=1460 ws=7 sack=1 ts=1') => seg(0, '', { syn: true, synSignature: sig });

/** Cuts `data` into segments at the given cut points (fractions of the length). */
function segmentize(data: Buffer, start: number, cuts: number[]): StreamSegment[] {
  const points = [...new Set(cuts.map((c) => Math.floor(c * data.length)))].filter((p) => p > 0 && p < data.length).sort((a, b) => a - b);
  const bounds = [0, ...points, data.length];
  const out: StreamSegment[] = [];
  for (let i = 0; i + 1 < bounds.length; i++) out.push(seg((start + bounds[i]) >>> 0, data.subarray(bounds[i], bounds[i + 1])));
  return out;
}

/** Interleaves two segment lists following a schedule of side choices. */
function interleave(p: StreamSegment[], b: StreamSegment[], schedule: boolean[]): [Side, StreamSegment][] {
  const out: [Side, StreamSegment][] = [];
  let i = 0, j = 0, k = 0;
  while (i < p.length || j < b.length) {
    const pickPrimary = j >= b.length || (i < p.length && (schedule[k++ % Math.max(1, schedule.length)] ?? true));
    if (pickPrimary) out.push([PRIMARY, p[i++]]);
    else out.push([BACKUP, b[j++]]);
  }
  return out;
}

describe('TcpStreamComparator', () => {
  it('matches the same bytes sent in different segment sizes by each replica', () => {
    const c = new TcpStreamComparator(pool());
    c.append(PRIMARY, syn());
    c.append(BACKUP, syn());
    c.append(PRIMARY, seg(1, 'hello world'));
    c.append(BACKUP, seg(1, 'hello'));
    expect(c.matched).toBe(6);
    c.append(BACKUP, seg(6, ' world'));
    expect(c.matched).toBe(12);
    expect(c.mismatch).toBeNull();
    expect(c.matchedBytes).toBe(11);
  });

  it('reports a data mismatch at the offset of the first differing byte', () => {
    const c = new TcpStreamComparator(pool());
    c.append(PRIMARY, syn());
    c.append(BACKUP, syn());
    c.append(PRIMARY, seg(1, 'HTTP/1.1 200 OK\r\nContent: A'));
    expect(c.append(BACKUP, seg(1, 'HTTP/1.1 200 OK\r\nContent: B'))).toBe(true);
    expect(c.mismatch).toMatchObject({ kind: 'data', offset: 26 });
    expect(c.mismatch!.primary).toContain('A');
    expect(c.mismatch!.backup).toContain('B');
  });

  it('ignores retransmissions, including partial overlaps', () => {
    const c = new TcpStreamComparator(pool());
    c.append(PRIMARY, seg(100, 'abcdef'));
    c.append(PRIMARY, seg(100, 'abcdef'));
    c.append(PRIMARY, seg(103, 'defghi'));
    c.append(BACKUP, seg(100, 'abcdefghi'));
    expect(c.mismatch).toBeNull();
    expect(c.matched).toBe(109);
  });

  it('reassembles out-of-order segments of one side before comparing', () => {
    const c = new TcpStreamComparator(pool());
    c.append(PRIMARY, seg(1, 'abc'));
    c.append(BACKUP, seg(1, 'abc'));
    c.append(BACKUP, seg(7, 'ghi'));
    expect(c.matched).toBe(4);
    c.append(BACKUP, seg(4, 'def'));
    c.append(PRIMARY, seg(4, 'defghi'));
    expect(c.matched).toBe(10);
    expect(c.mismatch).toBeNull();
  });

  it('compares SYN options and reports different ones as syn-options', () => {
    const c = new TcpStreamComparator(pool());
    c.append(PRIMARY, syn('mss=1460 ws=7 sack=1 ts=1'));
    c.append(BACKUP, syn('mss=1460 ws=9 sack=1 ts=1'));
    expect(c.mismatch?.kind).toBe('syn-options');
  });

  it('treats a FIN where the other side sent data as a fin mismatch', () => {
    const c = new TcpStreamComparator(pool());
    c.append(PRIMARY, seg(1, 'abc', { fin: true }));
    c.append(BACKUP, seg(1, 'abcd'));
    expect(c.mismatch).toMatchObject({ kind: 'fin', offset: 3 });
  });

  it('agrees on FINs at the same position and counts them in sequence space', () => {
    const c = new TcpStreamComparator(pool());
    c.append(PRIMARY, seg(1, 'abc', { fin: true }));
    c.append(BACKUP, seg(1, 'abc'));
    c.append(BACKUP, seg(4, '', { fin: true }));
    expect(c.mismatch).toBeNull();
    expect(c.matched).toBe(5);
  });

  it('agrees when both replicas reset at the same position', () => {
    const c = new TcpStreamComparator(pool());
    c.append(PRIMARY, seg(1, 'ab'));
    c.append(PRIMARY, seg(3, '', { rst: true }));
    expect(c.rstAgreed).toBe(false);
    c.append(BACKUP, seg(1, 'ab'));
    c.append(BACKUP, seg(3, '', { rst: true }));
    expect(c.rstAgreed).toBe(true);
    expect(c.mismatch).toBeNull();
  });

  it('reports an rst mismatch when one replica answers a SYN with RST and the other accepts', () => {
    const c = new TcpStreamComparator(pool());
    c.append(PRIMARY, syn());
    c.append(BACKUP, seg(0, '', { rst: true }));
    expect(c.mismatch?.kind).toBe('rst');
  });

  it('reports an rst mismatch when a replica keeps talking after the other reset', () => {
    const c = new TcpStreamComparator(pool());
    c.append(BACKUP, seg(1, '', { rst: true }));
    c.append(PRIMARY, seg(1, 'more'));
    expect(c.mismatch?.kind).toBe('rst');
  });

  it('restarts cleanly after reset and keeps the offset origin', () => {
    const c = new TcpStreamComparator(pool());
    c.append(PRIMARY, syn());
    c.append(BACKUP, syn());
    c.append(PRIMARY, seg(1, 'aaaa'));
    c.append(BACKUP, seg(1, 'aaab'));
    expect(c.mismatch).not.toBeNull();
    c.reset(c.endOf(PRIMARY));
    expect(c.mismatch).toBeNull();
    c.append(PRIMARY, seg(5, 'zz'));
    c.append(BACKUP, seg(5, 'zy'));
    expect(c.mismatch).toMatchObject({ kind: 'data', offset: 5 });
  });

  it('keeps its own copy of the backup bytes it holds (the I/O ring is reused)', () => {
    const c = new TcpStreamComparator(pool());
    const ring = Buffer.from('abcdef');
    c.append(BACKUP, seg(1, ring));
    ring.fill(0x7a); // the ring slot is overwritten by the next frame
    c.append(PRIMARY, seg(1, 'abcdef'));
    expect(c.mismatch).toBeNull();
    expect(c.matched).toBe(7);
  });

  it('keeps comparing correctly while the other side\'s pending list is compacted (many segments behind)', () => {
    // Found by the lab bench: 60 primary segments of 1448 bytes, the backup's split 1072 + 1448 + …
    const data = Buffer.alloc(60 * 1448);
    for (let i = 0; i < data.length; i++) data[i] = (i * 31 + 7) & 0xff;
    const c = new TcpStreamComparator(pool());
    for (let off = 0; off < data.length; off += 1448) c.append(PRIMARY, seg(1 + off, data.subarray(off, off + 1448)));
    c.append(BACKUP, seg(1, data.subarray(0, 1072)));
    for (let off = 1072; off < data.length; off += 1448) c.append(BACKUP, seg(1 + off, data.subarray(off, off + 1448)));
    expect(c.mismatch).toBeNull();
    expect(c.matched).toBe(1 + data.length);
  });

  it('restarts past what both sides said while comparison was suspended', () => {
    const c = new TcpStreamComparator(pool());
    c.append(PRIMARY, seg(1, 'aaaa'));
    c.append(BACKUP, seg(1, 'aaaa'));
    c.noteExtent(PRIMARY, seg(5, 'bbbb'));
    c.noteExtent(BACKUP, seg(5, 'bb'));
    c.reset(Math.max(c.endOf(PRIMARY), c.endOf(BACKUP)));
    c.append(BACKUP, seg(7, 'bb')); // below the restart point: already settled
    c.append(PRIMARY, seg(9, 'cc'));
    c.append(BACKUP, seg(9, 'cc'));
    expect(c.mismatch).toBeNull();
    expect(c.matched).toBe(11);
  });

  it('works across the 2^32 sequence wrap', () => {
    const c = new TcpStreamComparator(pool());
    const start = 0xfffffff0;
    const data = Buffer.alloc(64, 7);
    for (const s of segmentize(data, start, [0.1, 0.5])) c.append(PRIMARY, s);
    for (const s of segmentize(data, start, [0.3, 0.9])) c.append(BACKUP, s);
    expect(c.mismatch).toBeNull();
    expect(c.matched).toBe((start + 64) >>> 0);
  });

  describe('against a model: a stream is its bytes, not its segments', () => {
    const streamArb = fc.uint8Array({ minLength: 1, maxLength: 3000 }).map((a) => Buffer.from(a));
    const cutsArb = fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 12 });
    const startArb = fc.integer({ min: 0, max: 0xffffffff });

    it('gives no mismatch for the same bytes under any segmentation and interleaving', () => {
      fc.assert(fc.property(streamArb, cutsArb, cutsArb, fc.array(fc.boolean(), { maxLength: 20 }), startArb,
        (data, pc, bc, schedule, start) => {
          const c = new TcpStreamComparator(pool());
          c.reset(start);
          for (const [side, s] of interleave(segmentize(data, start, pc), segmentize(data, start, bc), schedule)) c.append(side, s);
          return c.mismatch === null && c.matched === ((start + data.length) >>> 0) && c.matchedBytes === data.length;
        }), { numRuns: 300 });
    });

    it('reports a single changed byte at exactly its offset', () => {
      fc.assert(fc.property(streamArb, cutsArb, cutsArb, fc.array(fc.boolean(), { maxLength: 20 }), startArb, fc.nat(), fc.integer({ min: 1, max: 255 }),
        (data, pc, bc, schedule, start, where, delta) => {
          const at = where % data.length;
          const changed = Buffer.from(data);
          changed[at] = (changed[at] + delta) & 0xff;
          const c = new TcpStreamComparator(pool());
          c.reset(start);
          for (const [side, s] of interleave(segmentize(data, start, pc), segmentize(changed, start, bc), schedule)) c.append(side, s);
          return c.mismatch !== null && c.mismatch.kind === 'data' && c.mismatch.offset === at
            && c.matched === ((start + at) >>> 0);
        }), { numRuns: 300 });
    });

    it('tolerates retransmitted and duplicated segments on either side', () => {
      fc.assert(fc.property(streamArb, cutsArb, cutsArb, fc.array(fc.nat(), { maxLength: 6 }), (data, pc, bc, dups) => {
        const p = segmentize(data, 1, pc);
        const b = segmentize(data, 1, bc);
        for (const d of dups) p.splice(Math.min(p.length, (d % p.length) + 1), 0, p[d % p.length]);
        const c = new TcpStreamComparator(pool());
        c.reset(1);
        for (const [side, s] of interleave(p, b, [true, false, false])) c.append(side, s);
        return c.mismatch === null && c.matched === 1 + data.length;
      }), { numRuns: 200 });
    });
  });
});
