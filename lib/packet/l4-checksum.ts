/**
 * Full L4 checksums (pseudo-header + segment) and in-place field rewrites
 * that keep the checksum valid by RFC 1624 incremental update.
 */
import { finishChecksum, onesSum, updateChecksum32 } from './checksum';
import { DecodedFrame } from './frame';

/** Unfolded sum of the pseudo-header (RFC 9293 §3.1 for IPv4, RFC 8200 §8.1 for IPv6). */
export function pseudoHeaderSum(f: DecodedFrame): number {
  const l4Length = f.l3End - f.l4Offset;
  if (f.l3 === 'ipv4') {
    return onesSum(f.buf, f.l3Offset + 12, 8) + f.ipProto + l4Length;
  }
  return onesSum(f.buf, f.l3Offset + 8, 32) + Math.floor(l4Length / 0x10000) + (l4Length & 0xffff) + f.ipProto;
}

/** Offset of the L4 checksum field, or -1 when the frame has none we maintain. */
export function l4ChecksumOffset(f: DecodedFrame): number {
  switch (f.l4) {
    case 'tcp': return f.l4Offset + 16;
    case 'udp': return f.l4Offset + 6;
    case 'icmp':
    case 'icmpv6': return f.l4Offset + 2;
    default: return -1;
  }
}

/** The checksum the L4 header should carry. */
export function computeL4Checksum(f: DecodedFrame): number {
  const at = l4ChecksumOffset(f);
  const withPseudo = f.l4 !== 'icmp'; // ICMPv4 covers only its own message (RFC 792)
  const stored = f.dv.getUint16(at);
  f.dv.setUint16(at, 0);
  const sum = onesSum(f.buf, f.l4Offset, f.l3End - f.l4Offset, withPseudo ? pseudoHeaderSum(f) : 0);
  f.dv.setUint16(at, stored);
  const value = finishChecksum(sum);
  // RFC 768: a computed UDP checksum of zero is sent as all ones.
  return f.l4 === 'udp' && value === 0 ? 0xffff : value;
}

export function verifyL4Checksum(f: DecodedFrame): boolean {
  const at = l4ChecksumOffset(f);
  if (at < 0 || f.fragment) return true;
  const stored = f.dv.getUint16(at);
  if (f.l4 === 'udp' && f.l3 === 'ipv4' && stored === 0) return true; // checksum not used
  return stored === computeL4Checksum(f);
}

export function ipv4HeaderChecksum(f: DecodedFrame): number {
  const ihl = f.ipv4.headerLength;
  const stored = f.ipv4.checksum;
  f.ipv4.checksum = 0;
  const value = finishChecksum(onesSum(f.buf, f.l3Offset, ihl));
  f.ipv4.checksum = stored;
  return value;
}

/**
 * Rewrites a 32-bit field inside the TCP header or options and patches the
 * checksum. `checksumIsPartial`: the frame came with VIRTIO_NET_HDR_F_NEEDS_CSUM,
 * its checksum field holds only the pseudo-header sum, which does not cover
 * the field: leave it for the NIC/kernel to complete.
 */
export function rewriteTcp32(f: DecodedFrame, fieldOffset: number, value: number, checksumIsPartial = false): void {
  const old = f.dv.getUint32(fieldOffset);
  if (old === (value >>> 0)) return;
  f.dv.setUint32(fieldOffset, value >>> 0);
  if (checksumIsPartial) return;
  // Options need no alignment (RFC 9293 §3.1), so a field can start at an odd
  // offset, where its bytes straddle the 16-bit words of the sum. RFC 1071
  // §2(B): such bytes add up as their byte-swapped, aligned counterparts.
  const odd = ((fieldOffset - f.tcp.offset) & 1) !== 0;
  const from = odd ? swapBytesOfWords(old) : old;
  const to = odd ? swapBytesOfWords(value >>> 0) : value >>> 0;
  f.tcp.checksum = updateChecksum32(f.tcp.checksum, from, to);
}

/** Swaps the two bytes inside each 16-bit half of a 32-bit value. */
function swapBytesOfWords(v: number): number {
  return (((v & 0x00ff00ff) << 8) | ((v >>> 8) & 0x00ff00ff)) >>> 0;
}
