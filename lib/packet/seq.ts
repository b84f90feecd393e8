/**
 * TCP sequence arithmetic, RFC 1982 serial numbers with SERIAL_BITS = 32.
 * Every comparison of two sequence numbers in shadowvm goes through here:
 * a bare `<` breaks at the 2^32 wrap.
 */

/** Signed distance a → b: positive when b is after a (b - a, mod 2^32, as int32). */
export function seqDiff(a: number, b: number): number {
  return (b - a) | 0;
}

export function seqAdd(a: number, n: number): number {
  return (a + n) >>> 0;
}

export function seqLt(a: number, b: number): boolean {
  return ((a - b) | 0) < 0;
}

export function seqLe(a: number, b: number): boolean {
  return ((a - b) | 0) <= 0;
}

export function seqGt(a: number, b: number): boolean {
  return ((a - b) | 0) > 0;
}

export function seqGe(a: number, b: number): boolean {
  return ((a - b) | 0) >= 0;
}

/** The later of two sequence numbers. */
export function seqMax(a: number, b: number): number {
  return seqGe(a, b) ? a : b;
}
