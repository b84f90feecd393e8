/**
 * The comparable content of a datagram a replica sent. UDP: the payload.
 * ICMP/ICMPv6: type, code and the message body (checksum left out). IP
 * fragments and other protocols: fragment position and the IP payload.
 * IP ID, TTL/hop limit and checksums never count.
 */
import { DecodedFrame } from '../packet/frame';

export function datagramContent(f: DecodedFrame): Buffer {
  switch (f.l4) {
    case 'udp':
      if (!f.fragment) return f.payload();
      break;
    case 'icmp':
    case 'icmpv6': {
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
