/**
 * The comparable content of a datagram a replica sent. UDP: the payload.
 * ICMP/ICMPv6: type, code and the message body (checksum left out); for an
 * error message, the packet it quotes is reduced to what identifies it (see
 * `quotedIdentity`). IP fragments and other protocols: fragment position and
 * the IP payload. IP ID, TTL/hop limit and checksums never count.
 */
import { DecodedFrame } from '../packet/frame';

export function datagramContent(f: DecodedFrame): Buffer {
  switch (f.l4) {
    case 'udp':
      if (!f.fragment) return f.payload();
      break;
    case 'icmp':
    case 'icmpv6': {
      if (isIcmpError(f)) return errorContent(f);
      const body = f.buf.subarray(f.l4Offset + 4, f.l3End);
      const out = Buffer.allocUnsafe(2 + body.length);
      out[0] = f.icmp.type;
      out[1] = f.icmp.code;
      body.copy(out, 2);
      return out;
    }
    default:
      break;
  }
  // Fragments and protocols we do not parse: where the piece sits, then its bytes.
  const body = f.buf.subarray(f.l4Offset, f.l3End);
  const out = Buffer.allocUnsafe(4 + body.length);
  const fragField = f.l3 === 'ipv4' ? f.dv.getUint16(f.l3Offset + 6) & 0x3fff : 0;
  out.writeUInt16BE(fragField, 0);
  out.writeUInt16BE(f.ipProto & 0xffff, 2);
  body.copy(out, 4);
  return out;
}

/** ICMP destination unreachable, source quench, redirect, time exceeded, parameter problem; ICMPv6 1-4 (RFC 4443). */
function isIcmpError(f: DecodedFrame): boolean {
  const t = f.icmp.type;
  return f.l4 === 'icmp' ? t === 3 || t === 4 || t === 5 || t === 11 || t === 12 : t >= 1 && t <= 4;
}

/**
 * An ICMP error quotes the packet that caused it. When that was a client
 * segment, each replica quotes its own copy, and the backup's copy was
 * translated into its space (ACK, SACK blocks, TSecr, checksum): the quotes
 * differ where the translation did. What identifies the offending packet is
 * its IP addresses and protocol and the first 8 bytes of its transport header
 * (ports and, for TCP, the client's own sequence number), which is also all
 * RFC 792 requires a quote to hold. So: type, code, the 4-byte field after
 * the checksum, then the quoted IP header without ID, TTL/hop limit and
 * checksum, then 8 bytes of its transport header.
 */
function errorContent(f: DecodedFrame): Buffer {
  const start = f.l4Offset + 4;
  const end = f.l3End;
  const quoted = start + 4;
  const out: number[] = [f.icmp.type, f.icmp.code];
  for (let i = start; i < Math.min(quoted, end); i++) out.push(f.buf[i]);
  if (quoted >= end) return Buffer.from(out);
  const version = f.buf[quoted] >> 4;
  let headerLength: number;
  let mask: number[];
  if (version === 4) {
    headerLength = (f.buf[quoted] & 0x0f) * 4;
    mask = [4, 5, 8, 10, 11]; // ID, TTL, header checksum
  } else if (version === 6) {
    headerLength = 40;
    mask = [7]; // hop limit
  } else {
    headerLength = 0;
    mask = [];
  }
  const transportEnd = Math.min(quoted + headerLength + 8, end);
  for (let i = quoted; i < transportEnd; i++) out.push(mask.includes(i - quoted) ? 0 : f.buf[i]);
  return Buffer.from(out);
}
