/**
 * Egress translation after failover. The clients of a carried-over flow
 * know the old primary's sequence and timestamp spaces; the promoted backup
 * speaks its own. Its output is shifted back: seq and TSval (RFC 7323) go
 * down by the backup's deltas. The ACK, SACK blocks (RFC 2018) and TSecr it
 * sends refer to the client's own spaces, which both replicas share: they
 * stay. (Client frames to the promoted replica go through `translateForBackup`
 * with the same deltas, as they did while it was the backup.)
 *
 * In:  a decoded TCP frame from the promoted replica (a copy we may write),
 *      the flow's deltas.
 * Out: the frame in the client's space, checksum patched (RFC 1624); or a
 *      new frame with the first bytes of its payload cut off (`trimmedTcpCopy`),
 *      for a segment that overlaps bytes the client already received from
 *      the old primary.
 */
import { TcpFlag } from '../packet/constants';
import { DecodedFrame, decodeFrame } from '../packet/frame';
import { computeL4Checksum, ipv4HeaderChecksum, pseudoHeaderSum, rewriteTcp32 } from '../packet/l4-checksum';
import { foldSum } from '../packet/checksum';
import { TcpOptions, readTcpOptions } from '../packet/tcp-options';

/**
 * Translates `f` in place from the promoted replica's space into the client's.
 * `seqDelta`, `tsDelta`: backup value = client-known value + delta (mod 2^32).
 * Returns false when the options are malformed (seq is translated regardless).
 */
export function translateForClient(f: DecodedFrame, seqDelta: number, tsDelta: number, opts: TcpOptions, checksumIsPartial = false): boolean {
  const tcp = f.tcp;
  if (seqDelta !== 0) rewriteTcp32(f, tcp.offset + 4, (tcp.seq - seqDelta) >>> 0, checksumIsPartial);
  if (tsDelta === 0 || f.payloadOffset === tcp.offset + 20) return true;
  if (!readTcpOptions(f, opts)) return false;
  if (opts.tsOffset >= 0) rewriteTcp32(f, opts.tsOffset, (f.dv.getUint32(opts.tsOffset) - tsDelta) >>> 0, checksumIsPartial);
  return true;
}

/**
 * A new frame: `f` without the first `skip` payload bytes (its sequence
 * number advanced by as many), and with `clearFlags` removed (e.g. SYN when
 * the SYN was already delivered). Lengths and checksums are recomputed in
 * full. `skip` equal to the payload length gives a pure ACK.
 */
export function trimmedTcpCopy(f: DecodedFrame, skip: number, clearFlags = 0, scratch = new DecodedFrame(), checksumIsPartial = false): Buffer {
  // A SYN already delivered and cut off moves the sequence number past it.
  const synCut = (f.tcp.flags & clearFlags & TcpFlag.SYN) !== 0 ? 1 : 0;
  return tcpSliceCopy(f, skip, f.payloadLength, (f.tcp.seq + skip + synCut) >>> 0, f.tcp.flags & ~clearFlags, scratch, checksumIsPartial);
}

/**
 * A new frame: `f` with only its first `keep` payload bytes, FIN and PSH
 * cleared (what is cut off comes later, with them). Lengths and checksums
 * are computed in full: the copy leaves without a virtio-net header.
 */
export function prefixTcpCopy(f: DecodedFrame, keep: number, scratch = new DecodedFrame()): Buffer {
  return tcpSliceCopy(f, 0, keep, f.tcp.seq, f.tcp.flags & ~(TcpFlag.FIN | TcpFlag.PSH), scratch, false);
}

/**
 * `f`'s headers and its payload bytes [from, to), with sequence number `seq`
 * and `flags`; the IP length and the checksums recomputed (a partial
 * checksum, VIRTIO_NET_HDR_F_NEEDS_CSUM, holds only the pseudo-header sum,
 * for the device to finish).
 */
function tcpSliceCopy(f: DecodedFrame, from: number, to: number, seq: number, flags: number, scratch: DecodedFrame, checksumIsPartial: boolean): Buffer {
  const headerLength = f.payloadOffset - f.base;
  const out = Buffer.alloc(headerLength + to - from);
  f.buf.copy(out, 0, f.base, f.payloadOffset);
  f.buf.copy(out, headerLength, f.payloadOffset + from, f.payloadOffset + to);
  const dv = new DataView(out.buffer, out.byteOffset, out.length);
  const l3 = f.l3Offset - f.base;
  if (f.l3 === 'ipv4') dv.setUint16(l3 + 2, out.length - l3);
  else dv.setUint16(l3 + 4, out.length - l3 - 40);
  const tcpAt = f.l4Offset - f.base;
  dv.setUint32(tcpAt + 4, seq);
  dv.setUint8(tcpAt + 13, flags & 0xff);
  const d = decodeFrame(out, scratch);
  if (d.l3 === 'ipv4') d.ipv4.checksum = ipv4HeaderChecksum(d);
  d.tcp.checksum = checksumIsPartial ? foldSum(pseudoHeaderSum(d)) : computeL4Checksum(d);
  return out;
}
