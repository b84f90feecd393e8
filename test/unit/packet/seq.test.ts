import fc from 'fast-check';
import { seqAdd, seqDiff, seqGe, seqGt, seqLe, seqLt, seqMax } from '../../../lib/packet';

const seq = fc.integer({ min: 0, max: 0xffffffff });
/** 0 < n < 2^31: distances RFC 1982 defines an order for. */
const forward = fc.integer({ min: 1, max: 2 ** 31 - 1 });
const signed = fc.integer({ min: -(2 ** 31) + 1, max: 2 ** 31 - 1 });
/** Values near the 2^32 wrap, where a bare `<` goes wrong. */
const nearWrap = fc.integer({ min: 0xffffffff - 4096, max: 0xffffffff });

describe('sequence arithmetic (RFC 1982, 32 bits)', () => {
  it('puts a + n after a for every 0 < n < 2^31, across the wrap', () => {
    fc.assert(
      fc.property(fc.oneof(seq, nearWrap), forward, (a, n) => {
        const b = seqAdd(a, n);
        expect(seqLt(a, b)).toBe(true);
        expect(seqLe(a, b)).toBe(true);
        expect(seqGt(b, a)).toBe(true);
        expect(seqGe(b, a)).toBe(true);
      }),
      { numRuns: 5000 },
    );
  });

  it('is antisymmetric: never both a < b and b < a, and a == b only when equal', () => {
    fc.assert(
      fc.property(fc.oneof(seq, nearWrap), forward, (a, n) => {
        const b = seqAdd(a, n);
        expect(seqLt(b, a)).toBe(false);
        expect(seqGt(a, b)).toBe(false);
        expect(seqLe(b, a)).toBe(false);
        expect(seqLt(a, a)).toBe(false);
        expect(seqLe(a, a)).toBe(true);
        expect(seqGe(a, a)).toBe(true);
      }),
      { numRuns: 5000 },
    );
  });

  it('measures back the distance it added: seqDiff(a, seqAdd(a, n)) === n for |n| < 2^31', () => {
    fc.assert(
      fc.property(fc.oneof(seq, nearWrap), signed, (a, n) => {
        expect(seqDiff(a, seqAdd(a, n))).toBe(n);
      }),
      { numRuns: 5000 },
    );
  });

  it('keeps seqAdd results in 0 .. 2^32 - 1', () => {
    fc.assert(
      fc.property(seq, signed, (a, n) => {
        const b = seqAdd(a, n);
        expect(Number.isInteger(b) && b >= 0 && b <= 0xffffffff).toBe(true);
      }),
    );
  });

  it('picks the later of two numbers with seqMax, whatever the order of the arguments', () => {
    fc.assert(
      fc.property(fc.oneof(seq, nearWrap), fc.integer({ min: 0, max: 2 ** 31 - 1 }), (a, n) => {
        const b = seqAdd(a, n);
        expect(seqMax(a, b)).toBe(b);
        expect(seqMax(b, a)).toBe(b);
      }),
      { numRuns: 5000 },
    );
  });

  it('orders the numbers on either side of the wrap the way TCP does', () => {
    expect(seqLt(0xffffffff, 0)).toBe(true);
    expect(seqLt(0xfffffff0, 0x10)).toBe(true);
    expect(seqGt(0x10, 0xfffffff0)).toBe(true);
    expect(seqDiff(0xfffffff0, 0x10)).toBe(0x20);
    expect(seqDiff(0x10, 0xfffffff0)).toBe(-0x20);
    expect(seqAdd(0xffffffff, 1)).toBe(0);
    expect(seqAdd(0, -1)).toBe(0xffffffff);
    expect(seqMax(0xfffffffe, 3)).toBe(3);
  });
});
