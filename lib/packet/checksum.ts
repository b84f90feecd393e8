/**
 * Internet checksum (RFC 1071) and its incremental update (RFC 1624).
 * Sums are kept unfolded in a JS number (safe up to 2^53) and folded once.
 */

/** One's-complement sum of `len` bytes at `off`, added to `initial`. Unfolded. */
export function onesSum(buf: Uint8Array, off: number, len: number, initial = 0): number {
  let sum = initial;
  const end = off + (len & ~1);
  let i = off;
  for (; i < end; i += 2) sum += (buf[i] << 8) | buf[i + 1];
  if (len & 1) sum += buf[i] << 8;
  return sum;
}

/** Fold a sum to 16 bits and complement it: the value to store in a checksum field. */
export function finishChecksum(sum: number): number {
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 0x10000);
  return ~sum & 0xffff;
}

/** Fold without complementing. */
export function foldSum(sum: number): number {
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 0x10000);
  return sum;
}

/**
 * RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), for one 16-bit word m → m'.
 * Correct for every HC, including the 0x0000/0xffff cases eqn. 2 gets wrong.
 */
export function updateChecksum16(checksum: number, oldWord: number, newWord: number): number {
  const sum = (~checksum & 0xffff) + (~oldWord & 0xffff) + (newWord & 0xffff);
  return ~foldSum(sum) & 0xffff;
}

/** RFC 1624 applied to a 32-bit field (two 16-bit words). */
export function updateChecksum32(checksum: number, oldValue: number, newValue: number): number {
  const sum = (~checksum & 0xffff)
    + (~(oldValue >>> 16) & 0xffff) + (~oldValue & 0xffff)
    + ((newValue >>> 16) & 0xffff) + (newValue & 0xffff);
  return ~foldSum(sum) & 0xffff;
}
