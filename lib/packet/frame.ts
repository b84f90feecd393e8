/**
 * decodeFrame: one pass over the headers of an Ethernet frame that records
 * where each layer starts. No payload is copied and nothing past the L4
 * header is read. Malformed input is reported in `error`, never thrown.
 *
 * In:  a frame Buffer (Ethernet, optionally 802.1Q / 802.1ad tagged).
 * Out: the same DecodedFrame object, re-filled (reuse it across frames).
 */
import { EtherType, IpProto, MalformedReason } from './constants';
import { ArpView, Ipv4View, Ipv6View, IcmpView, TcpView, UdpView } from './views';

export type L3Kind = 'ipv4' | 'ipv6' | 'arp' | 'other';
/** What sits at l4Offset. 'fragment': a non-first fragment (no L4 header); 'opaque': a protocol we do not look into. */
export type L4Kind = 'tcp' | 'udp' | 'icmp' | 'icmpv6' | 'fragment' | 'opaque' | 'none';

/** IPv6 header chains longer than this are refused (RFC 8504 lets hosts set such a limit). */
export const MAX_IPV6_EXTENSION_HEADERS = 8;
export const MAX_VLAN_TAGS = 2;
const ETH_HEADER = 14;

/**
 * Offsets in a DecodedFrame (and in its views, and in TcpOptions) index
 * `buf` and `dv`, which span the whole ArrayBuffer the frame lives in (an
 * I/O ring, a slab, a capture file): one DataView per ArrayBuffer instead of
 * one per frame. `base` is where the frame starts; `frame` is the frame itself.
 */
export class DecodedFrame {
  frame: Buffer = EMPTY;
  base = 0;
  buf: Buffer = EMPTY;
  dv: DataView = new DataView(new ArrayBuffer(0));
  error: MalformedReason | null = null;

  /** VLAN IDs, outer first; 0 where absent. */
  vlanCount = 0;
  outerVlan = 0;
  innerVlan = 0;
  etherType = 0;
  l3: L3Kind = 'other';
  l3Offset = 0;
  /** End of the L3 packet (IP total length applied: Ethernet padding excluded). */
  l3End = 0;

  /** Upper-layer protocol number (after IPv6 extension headers), -1 if none. */
  ipProto = -1;
  l4: L4Kind = 'none';
  l4Offset = 0;
  /** True for any piece of a fragmented datagram (first one included). */
  fragment = false;
  /** Where the L4 payload starts and how long it is (0 for non-TCP/UDP). */
  payloadOffset = 0;
  payloadLength = 0;

  readonly arp = new ArpView(this.dv);
  readonly ipv4 = new Ipv4View(this.dv);
  readonly ipv6 = new Ipv6View(this.dv);
  readonly tcp = new TcpView(this.dv);
  readonly udp = new UdpView(this.dv);
  readonly icmp = new IcmpView(this.dv);

  /** The L4 payload as a subarray of the frame (no copy). */
  payload(): Buffer {
    return this.buf.subarray(this.payloadOffset, this.payloadOffset + this.payloadLength);
  }

  /**
   * Points this decoded frame at a byte-identical copy, so the copy can be
   * rewritten without decoding it again. Call it before reading options.
   */
  rebind(copy: Buffer): void {
    const delta = copy.byteOffset - this.base;
    attach(this, copy);
    this.l3Offset += delta;
    this.l3End += delta;
    this.l4Offset += delta;
    this.payloadOffset += delta;
    this.arp.offset += delta;
    this.ipv4.offset += delta;
    this.ipv6.offset += delta;
    this.tcp.offset += delta;
    this.udp.offset += delta;
    this.icmp.offset += delta;
  }

  /** The VLAN a flow lives in: inner and outer tag combined, 0 when untagged. */
  get vlanKey(): number {
    return this.outerVlan * 4096 + this.innerVlan;
  }
}

const EMPTY = Buffer.alloc(0);

/** The whole-ArrayBuffer Buffer and DataView of the last few ArrayBuffers seen (ring, slab, file). */
const CACHE_SIZE = 4;
const cachedArrays: (ArrayBufferLike | null)[] = new Array(CACHE_SIZE).fill(null);
const cachedBufs: Buffer[] = new Array(CACHE_SIZE).fill(EMPTY);
const cachedViews: DataView[] = new Array(CACHE_SIZE).fill(new DataView(new ArrayBuffer(0)));
let cacheNext = 0;

function attach(f: DecodedFrame, frame: Buffer): void {
  const ab = frame.buffer;
  let i = 0;
  while (i < CACHE_SIZE && cachedArrays[i] !== ab) i++;
  if (i === CACHE_SIZE) {
    i = cacheNext;
    cacheNext = (cacheNext + 1) % CACHE_SIZE;
    cachedArrays[i] = ab;
    cachedBufs[i] = Buffer.from(ab as ArrayBuffer, 0, ab.byteLength);
    cachedViews[i] = new DataView(ab as ArrayBuffer, 0, ab.byteLength);
  }
  f.frame = frame;
  f.base = frame.byteOffset;
  if (f.dv !== cachedViews[i]) {
    const dv = cachedViews[i];
    f.buf = cachedBufs[i];
    f.dv = dv;
    f.arp.dv = f.ipv4.dv = f.ipv6.dv = f.tcp.dv = f.udp.dv = f.icmp.dv = dv;
  }
}

function fail(f: DecodedFrame, reason: MalformedReason): DecodedFrame {
  f.error = reason;
  return f;
}

export function decodeFrame(frame: Buffer, f: DecodedFrame = new DecodedFrame()): DecodedFrame {
  attach(f, frame);
  const dv = f.dv;
  f.error = null;
  f.vlanCount = 0;
  f.outerVlan = 0;
  f.innerVlan = 0;
  f.l3 = 'other';
  f.ipProto = -1;
  f.l4 = 'none';
  f.fragment = false;
  f.payloadOffset = 0;
  f.payloadLength = 0;
  const base = f.base;
  const len = base + frame.length; // end of the frame in `buf`
  f.l3Offset = f.l3End = f.l4Offset = base;
  if (frame.length < ETH_HEADER) return fail(f, 'truncated-ethernet');

  let off = base + 12;
  let etherType = dv.getUint16(off);
  while (etherType === EtherType.VLAN || etherType === EtherType.QinQ) {
    if (f.vlanCount === MAX_VLAN_TAGS) return fail(f, 'vlan-stack-too-deep');
    if (off + 6 > len) return fail(f, 'truncated-vlan');
    const vid = dv.getUint16(off + 2) & 0x0fff;
    if (f.vlanCount === 0) f.outerVlan = vid;
    else f.innerVlan = vid;
    f.vlanCount++;
    off += 4;
    etherType = dv.getUint16(off);
  }
  f.etherType = etherType;
  off += 2;
  f.l3Offset = off;
  f.l3End = len;

  if (etherType === EtherType.IPv4) return decodeIpv4(f, off, len);
  if (etherType === EtherType.IPv6) return decodeIpv6(f, off, len);
  if (etherType === EtherType.ARP) {
    f.l3 = 'arp';
    f.arp.offset = off;
    if (off + 8 > len) return fail(f, 'truncated-arp');
    const addrBytes = 2 * (dv.getUint8(off + 4) + dv.getUint8(off + 5));
    if (off + 8 + addrBytes > len) return fail(f, 'truncated-arp');
    f.l3End = off + 8 + addrBytes;
    return f;
  }
  return f;
}

function decodeIpv4(f: DecodedFrame, off: number, len: number): DecodedFrame {
  const dv = f.dv;
  f.l3 = 'ipv4';
  f.ipv4.offset = off;
  if (off + 20 > len) return fail(f, 'truncated-ipv4');
  const vihl = dv.getUint8(off);
  if (vihl >> 4 !== 4) return fail(f, 'bad-ipv4-version');
  const ihl = (vihl & 0x0f) * 4;
  if (ihl < 20) return fail(f, 'bad-ipv4-header-length');
  if (off + ihl > len) return fail(f, 'truncated-ipv4');
  let total = dv.getUint16(off + 2);
  // Linux GSO for IPv4 "BIG TCP" leaves tot_len 0 on frames over 64 KiB: the frame length is the truth.
  if (total === 0) total = len - off;
  if (total < ihl) return fail(f, 'bad-ipv4-total-length');
  if (off + total > len) return fail(f, 'truncated-ipv4');
  f.l3End = off + total;
  f.ipProto = dv.getUint8(off + 9);
  const fragField = dv.getUint16(off + 6);
  f.fragment = (fragField & 0x3fff) !== 0;
  if ((fragField & 0x1fff) !== 0) {
    f.l4 = 'fragment';
    f.l4Offset = off + ihl;
    return f;
  }
  return decodeL4(f, off + ihl, f.ipProto, false);
}

function decodeIpv6(f: DecodedFrame, off: number, len: number): DecodedFrame {
  const dv = f.dv;
  f.l3 = 'ipv6';
  f.ipv6.offset = off;
  if (off + 40 > len) return fail(f, 'truncated-ipv6');
  if (dv.getUint8(off) >> 4 !== 6) return fail(f, 'bad-ipv6-version');
  const payloadLength = dv.getUint16(off + 4);
  // Payload length 0 means a jumbogram or a BIG TCP GSO frame: use the frame length.
  const end = payloadLength === 0 ? len : off + 40 + payloadLength;
  if (end > len) return fail(f, 'truncated-ipv6');
  f.l3End = end;

  let next = dv.getUint8(off + 6);
  let p = off + 40;
  for (let n = 0; ; n++) {
    switch (next) {
      case IpProto.HopByHop:
      case IpProto.Routing:
      case IpProto.DestOptions:
      case IpProto.Mobility:
      case IpProto.HIP:
      case IpProto.Shim6:
      case IpProto.AH:
      case IpProto.Fragment: {
        if (n === MAX_IPV6_EXTENSION_HEADERS) return fail(f, 'ipv6-header-chain-too-long');
        if (p + 8 > end) return fail(f, 'truncated-ipv6-extension');
        const following = dv.getUint8(p);
        let size: number;
        if (next === IpProto.Fragment) {
          size = 8;
          const fragField = dv.getUint16(p + 2);
          // Offset 0 with M clear is an atomic fragment: a whole packet (RFC 6946 §4).
          if ((fragField & 0xfff9) !== 0) f.fragment = true;
          if ((fragField & 0xfff8) !== 0) {
            f.ipProto = following;
            f.l4 = 'fragment';
            f.l4Offset = p + 8;
            return f;
          }
        } else if (next === IpProto.AH) {
          size = (dv.getUint8(p + 1) + 2) * 4; // RFC 4302: length in 32-bit words, minus 2
        } else {
          size = (dv.getUint8(p + 1) + 1) * 8; // RFC 8200 §4.3: length in 8-octet units, minus 1
        }
        if (p + size > end) return fail(f, 'truncated-ipv6-extension');
        p += size;
        next = following;
        continue;
      }
      default:
        f.ipProto = next;
        return decodeL4(f, p, next, true);
    }
  }
}

function decodeL4(f: DecodedFrame, off: number, proto: number, v6: boolean): DecodedFrame {
  const dv = f.dv;
  const end = f.l3End;
  f.l4Offset = off;
  if (proto === IpProto.TCP) {
    f.l4 = 'tcp';
    f.tcp.offset = off;
    if (off + 20 > end) return fail(f, 'truncated-tcp');
    const dataOffset = (dv.getUint8(off + 12) >> 4) * 4;
    if (dataOffset < 20 || off + dataOffset > end) return fail(f, 'bad-tcp-data-offset');
    f.payloadOffset = off + dataOffset;
    f.payloadLength = end - f.payloadOffset;
    return f;
  }
  if (proto === IpProto.UDP) {
    f.l4 = 'udp';
    f.udp.offset = off;
    if (off + 8 > end) return fail(f, 'truncated-udp');
    const udpLength = dv.getUint16(off + 4);
    // A first fragment carries only part of the datagram the length describes.
    if (!f.fragment && (udpLength < 8 || off + udpLength > end)) {
      // Length 0 is legal for IPv6 jumbograms (RFC 2675).
      if (!(v6 && udpLength === 0)) return fail(f, 'bad-udp-length');
    }
    f.payloadOffset = off + 8;
    f.payloadLength = (f.fragment || udpLength === 0 ? end : off + udpLength) - f.payloadOffset;
    return f;
  }
  if ((proto === IpProto.ICMP && !v6) || (proto === IpProto.ICMPv6 && v6)) {
    f.l4 = v6 ? 'icmpv6' : 'icmp';
    f.icmp.offset = off;
    if (off + 4 > end) return fail(f, 'truncated-icmp');
    f.payloadOffset = off + 4;
    f.payloadLength = end - f.payloadOffset;
    return f;
  }
  f.l4 = 'opaque';
  f.payloadOffset = off;
  f.payloadLength = end - off;
  return f;
}
