/**
 * The frame builder for unit tests: Ethernet (802.1Q, 802.1ad), ARP, IPv4
 * (options, fragments), IPv6 (extension headers), TCP (options), UDP, ICMP
 * and ICMPv6. Every field is named once here, so a test says what it builds.
 *
 * Checksums are computed here with a plain RFC 1071 loop and nothing from
 * lib/packet is imported: tests check lib/packet against an independent
 * implementation.
 */

export const CLIENT_MAC = '02:00:00:00:00:01';
export const VM_MAC = '02:00:00:00:00:02';
export const CLIENT_IP = '10.77.0.1';
export const VM_IP = '10.77.0.2';
export const CLIENT_IP6 = 'fd77::1';
export const VM_IP6 = 'fd77::2';

/** Wire values, spelled here rather than imported so the builder stays independent. */
export const ETHERTYPE = { IPv4: 0x0800, ARP: 0x0806, VLAN: 0x8100, QinQ: 0x88a8, IPv6: 0x86dd } as const;
export const PROTO = {
  HopByHop: 0, ICMP: 1, TCP: 6, UDP: 17, Routing: 43, Fragment: 44, AH: 51, ICMPv6: 58, NoNext: 59, DestOptions: 60,
} as const;
export const FLAG = { FIN: 0x01, SYN: 0x02, RST: 0x04, PSH: 0x08, ACK: 0x10, URG: 0x20, ECE: 0x40, CWR: 0x80 } as const;

export const ETH_HEADER_LENGTH = 14;
export const VLAN_TAG_LENGTH = 4;
export const IPV4_HEADER_LENGTH = 20;
export const IPV6_HEADER_LENGTH = 40;
export const TCP_HEADER_LENGTH = 20;
export const UDP_HEADER_LENGTH = 8;

// ---------------------------------------------------------------- addresses

export function macBytes(text: string): Buffer {
  const parts = text.split(':');
  if (parts.length !== 6) throw new Error(`not a MAC address: ${text}`);
  return Buffer.from(parts.map((p) => parseInt(p, 16)));
}

export function ipv4Bytes(text: string): Buffer {
  const parts = text.split('.').map(Number);
  if (parts.length !== 4 || parts.some((p) => !(p >= 0 && p <= 255))) throw new Error(`not an IPv4 address: ${text}`);
  return Buffer.from(parts);
}

/** Parses any valid IPv6 text form ("::" anywhere, upper or lower case); no embedded IPv4. */
export function ipv6Bytes(text: string): Buffer {
  const halves = text.split('::');
  if (halves.length > 2) throw new Error(`not an IPv6 address: ${text}`);
  const groups = (s: string) => (s === '' ? [] : s.split(':').map((g) => parseInt(g, 16)));
  const head = groups(halves[0]);
  const tail = halves.length === 2 ? groups(halves[1]) : [];
  const zeros = halves.length === 2 ? 8 - head.length - tail.length : 0;
  const all = [...head, ...new Array<number>(zeros).fill(0), ...tail];
  if (all.length !== 8 || all.some((g) => !(g >= 0 && g <= 0xffff))) throw new Error(`not an IPv6 address: ${text}`);
  const out = Buffer.alloc(16);
  all.forEach((g, i) => out.writeUInt16BE(g, 2 * i));
  return out;
}

// ---------------------------------------------------------------- checksums

/** RFC 1071, the plain way: 16-bit big-endian words, end-around carry, complement. */
export function internetChecksum(...chunks: Uint8Array[]): number {
  const bytes = Buffer.concat(chunks);
  let sum = 0;
  for (let i = 0; i < bytes.length; i += 2) {
    const word = (bytes[i] << 8) | (i + 1 < bytes.length ? bytes[i + 1] : 0);
    sum += word;
    sum = (sum & 0xffff) + (sum >>> 16);
  }
  return ~sum & 0xffff;
}

function pseudoHeader(src: Buffer, dst: Buffer, proto: number, length: number): Buffer {
  if (src.length === 4) {
    const p = Buffer.alloc(12);
    src.copy(p, 0);
    dst.copy(p, 4);
    p[9] = proto;
    p.writeUInt16BE(length, 10);
    return p;
  }
  const p = Buffer.alloc(40);
  src.copy(p, 0);
  dst.copy(p, 16);
  p.writeUInt32BE(length, 32);
  p[39] = proto;
  return p;
}

/** Offset of the checksum field inside the L4 header, or -1. */
function checksumFieldOffset(proto: number): number {
  switch (proto) {
    case PROTO.TCP: return 16;
    case PROTO.UDP: return 6;
    case PROTO.ICMP:
    case PROTO.ICMPv6: return 2;
    default: return -1;
  }
}

/** The checksum an L4 message should carry; `upper` is the whole message (its checksum field is ignored). */
export function l4Checksum(src: Buffer, dst: Buffer, proto: number, upper: Buffer): number {
  const at = checksumFieldOffset(proto);
  const zeroed = Buffer.from(upper);
  zeroed.writeUInt16BE(0, at);
  const value = proto === PROTO.ICMP
    ? internetChecksum(zeroed) // RFC 792: no pseudo-header for ICMPv4
    : internetChecksum(pseudoHeader(src, dst, proto, upper.length), zeroed);
  return proto === PROTO.UDP && value === 0 ? 0xffff : value; // RFC 768
}

/** Where the layers of a frame built here start (found by walking the frame, not by remembering). */
export interface FrameLayout {
  l3Offset: number;
  etherType: number;
  l4Offset: number;
  /** Upper-layer protocol after IPv6 extension headers. */
  proto: number;
  l3End: number;
  src: Buffer;
  dst: Buffer;
}

/** Walks Ethernet/VLAN/IPv4/IPv6 (+ extension headers) of a well-formed frame. */
export function layoutOf(frame: Buffer): FrameLayout {
  let off = 12;
  let etherType = frame.readUInt16BE(off);
  while (etherType === ETHERTYPE.VLAN || etherType === ETHERTYPE.QinQ) {
    off += VLAN_TAG_LENGTH;
    etherType = frame.readUInt16BE(off);
  }
  const l3 = off + 2;
  if (etherType === ETHERTYPE.IPv4) {
    const ihl = (frame[l3] & 0x0f) * 4;
    return {
      l3Offset: l3, etherType, l4Offset: l3 + ihl, proto: frame[l3 + 9], l3End: l3 + frame.readUInt16BE(l3 + 2),
      src: frame.subarray(l3 + 12, l3 + 16), dst: frame.subarray(l3 + 16, l3 + 20),
    };
  }
  if (etherType === ETHERTYPE.IPv6) {
    let next = frame[l3 + 6];
    let p = l3 + IPV6_HEADER_LENGTH;
    for (;;) {
      if (next === PROTO.HopByHop || next === PROTO.DestOptions || next === PROTO.Routing) {
        const size = (frame[p + 1] + 1) * 8;
        next = frame[p];
        p += size;
      } else if (next === PROTO.Fragment) {
        next = frame[p];
        p += 8;
      } else if (next === PROTO.AH) {
        const size = (frame[p + 1] + 2) * 4;
        next = frame[p];
        p += size;
      } else break;
    }
    return {
      l3Offset: l3, etherType, l4Offset: p, proto: next, l3End: l3 + IPV6_HEADER_LENGTH + frame.readUInt16BE(l3 + 4),
      src: frame.subarray(l3 + 8, l3 + 24), dst: frame.subarray(l3 + 24, l3 + 40),
    };
  }
  throw new Error(`layoutOf: not an IP frame (EtherType 0x${etherType.toString(16)})`);
}

/** The L4 checksum this (unfragmented) frame should carry, computed independently of lib/packet. */
export function expectedL4Checksum(frame: Buffer): number {
  const l = layoutOf(frame);
  return l4Checksum(l.src, l.dst, l.proto, frame.subarray(l.l4Offset, l.l3End));
}

export function storedL4Checksum(frame: Buffer): number {
  const l = layoutOf(frame);
  return frame.readUInt16BE(l.l4Offset + checksumFieldOffset(l.proto));
}

export function l4ChecksumIsValid(frame: Buffer): boolean {
  return storedL4Checksum(frame) === expectedL4Checksum(frame);
}

export function ipv4HeaderChecksumIsValid(frame: Buffer): boolean {
  const l = layoutOf(frame);
  // Summing a header over its own checksum gives 0xffff, i.e. a complement of 0.
  return internetChecksum(frame.subarray(l.l3Offset, l.l4Offset)) === 0;
}

// ---------------------------------------------------------------- link and IP layers

export interface LinkSpec {
  /** VLAN IDs, outer first. One tag: 802.1Q; two: 802.1ad (0x88a8) outside, 802.1Q inside. */
  vlan?: number[];
  /** TPID of each tag, to build stacks the defaults would not (e.g. three tags). */
  vlanTpids?: number[];
  /** PCP bits of each tag (default 0). */
  vlanPcp?: number[];
  srcMac?: string;
  dstMac?: string;
  /** Pad the frame with zero bytes up to this length (60: Ethernet minimum without FCS). */
  padTo?: number;
}

export type Ipv6Extension =
  /** Hop-by-hop or destination options, `units` 8-octet units (default 1) filled with PadN. */
  | { kind: 'hop-by-hop' | 'dest-options'; units?: number }
  /** A segment routing header (RFC 8754) with its segments, segments left 0. */
  | { kind: 'routing'; segments?: string[] }
  /** `offset` in bytes (multiple of 8). */
  | { kind: 'fragment'; offset?: number; more?: boolean; id?: number }
  /** Authentication header (RFC 4302) with an ICV of `icvWords` 32-bit words (default 3). */
  | { kind: 'ah'; icvWords?: number };

export interface IpSpec extends LinkSpec {
  v6?: boolean;
  /** Who sends it: sets the default MACs and addresses (client → VM by default). */
  from?: 'client' | 'vm';
  src?: string;
  dst?: string;
  ipId?: number;
  ttl?: number;
  dontFragment?: boolean;
  /** IPv4 options, padded with EOL to a multiple of 4 bytes. */
  ipv4Options?: Buffer;
  /** IPv6 extension headers, in order, between the IPv6 header and the upper layer. */
  extensions?: Ipv6Extension[];
}

interface Endpoints { src: Buffer; dst: Buffer; srcMac: Buffer; dstMac: Buffer }

function endpointsOf(spec: IpSpec): Endpoints {
  const fromVm = spec.from === 'vm';
  const [srcDefault, dstDefault] = spec.v6 ? [CLIENT_IP6, VM_IP6] : [CLIENT_IP, VM_IP];
  const src = spec.src ?? (fromVm ? dstDefault : srcDefault);
  const dst = spec.dst ?? (fromVm ? srcDefault : dstDefault);
  const parse = spec.v6 ? ipv6Bytes : ipv4Bytes;
  return {
    src: parse(src),
    dst: parse(dst),
    srcMac: macBytes(spec.srcMac ?? (fromVm ? VM_MAC : CLIENT_MAC)),
    dstMac: macBytes(spec.dstMac ?? (fromVm ? CLIENT_MAC : VM_MAC)),
  };
}

/** Ethernet header (+ VLAN tags) + `l3` + padding. */
export function ethernet(spec: LinkSpec & { srcMac?: string; dstMac?: string }, etherType: number, l3: Buffer): Buffer {
  const vlans = spec.vlan ?? [];
  const tpids = spec.vlanTpids ?? (vlans.length === 2 ? [ETHERTYPE.QinQ, ETHERTYPE.VLAN] : vlans.map(() => ETHERTYPE.VLAN));
  const header = Buffer.alloc(ETH_HEADER_LENGTH + VLAN_TAG_LENGTH * vlans.length);
  macBytes(spec.dstMac ?? VM_MAC).copy(header, 0);
  macBytes(spec.srcMac ?? CLIENT_MAC).copy(header, 6);
  let off = 12;
  vlans.forEach((vid, i) => {
    header.writeUInt16BE(tpids[i], off);
    header.writeUInt16BE((((spec.vlanPcp?.[i] ?? 0) & 7) << 13) | (vid & 0x0fff), off + 2);
    off += VLAN_TAG_LENGTH;
  });
  header.writeUInt16BE(etherType, off);
  const frame = Buffer.concat([header, l3]);
  if (spec.padTo !== undefined && frame.length < spec.padTo) return Buffer.concat([frame, Buffer.alloc(spec.padTo - frame.length)]);
  return frame;
}

function ipv4Header(spec: IpSpec, ep: Endpoints, proto: number, payloadLength: number, fragment?: { offset: number; more: boolean }): Buffer {
  const options = spec.ipv4Options ?? Buffer.alloc(0);
  const optionLength = Math.ceil(options.length / 4) * 4;
  const h = Buffer.alloc(IPV4_HEADER_LENGTH + optionLength);
  h[0] = 0x40 | (h.length / 4);
  h.writeUInt16BE(h.length + payloadLength, 2);
  h.writeUInt16BE(spec.ipId ?? 0x1234, 4);
  const flags = (spec.dontFragment ? 0x4000 : 0) | (fragment?.more ? 0x2000 : 0);
  h.writeUInt16BE(flags | ((fragment?.offset ?? 0) / 8), 6);
  h[8] = spec.ttl ?? 64;
  h[9] = proto;
  ep.src.copy(h, 12);
  ep.dst.copy(h, 16);
  options.copy(h, IPV4_HEADER_LENGTH);
  h.writeUInt16BE(internetChecksum(h), 10);
  return h;
}

function extensionHeader(ext: Ipv6Extension, next: number): { type: number; bytes: Buffer } {
  switch (ext.kind) {
    case 'hop-by-hop':
    case 'dest-options': {
      const units = ext.units ?? 1;
      const b = Buffer.alloc(8 * units);
      b[0] = next;
      b[1] = units - 1;
      // PadN options (RFC 8200 §4.2) fill the header after its 2-byte start.
      for (let p = 2; p < b.length; ) {
        const room = b.length - p;
        const dataLength = Math.min(room - 2, 255);
        if (room === 1) { b[p] = 0; p++; continue; } // Pad1
        b[p] = 1;
        b[p + 1] = dataLength;
        p += 2 + dataLength;
      }
      return { type: ext.kind === 'hop-by-hop' ? PROTO.HopByHop : PROTO.DestOptions, bytes: b };
    }
    case 'routing': {
      const segments = (ext.segments ?? [VM_IP6]).map(ipv6Bytes);
      const b = Buffer.alloc(8 + 16 * segments.length);
      b[0] = next;
      b[1] = 2 * segments.length;
      b[2] = 4; // segment routing header
      b[3] = 0; // segments left: the destination in the IPv6 header is final
      b[4] = segments.length - 1; // last entry
      segments.forEach((s, i) => s.copy(b, 8 + 16 * i));
      return { type: PROTO.Routing, bytes: b };
    }
    case 'fragment': {
      const b = Buffer.alloc(8);
      b[0] = next;
      b.writeUInt16BE(((ext.offset ?? 0) / 8) << 3 | (ext.more ? 1 : 0), 2);
      b.writeUInt32BE(ext.id ?? 0xfeed, 4);
      return { type: PROTO.Fragment, bytes: b };
    }
    case 'ah': {
      const icvWords = ext.icvWords ?? 3;
      const b = Buffer.alloc(12 + 4 * icvWords);
      b[0] = next;
      b[1] = b.length / 4 - 2;
      b.writeUInt32BE(0x100, 4); // SPI
      b.writeUInt32BE(1, 8); // sequence number
      return { type: PROTO.AH, bytes: b };
    }
  }
}

/** IPv6 header + extension headers, for an upper layer of `proto` and `upperLength` bytes. */
function ipv6Headers(spec: IpSpec, ep: Endpoints, proto: number, upperLength: number): Buffer {
  const exts: Buffer[] = [];
  let next = proto;
  for (const ext of [...(spec.extensions ?? [])].reverse()) {
    const built = extensionHeader(ext, next);
    exts.unshift(built.bytes);
    next = built.type;
  }
  const extBytes = Buffer.concat(exts);
  const h = Buffer.alloc(IPV6_HEADER_LENGTH);
  h.writeUInt32BE(0x60000000, 0);
  h.writeUInt16BE(extBytes.length + upperLength, 4);
  h[6] = next;
  h[7] = spec.ttl ?? 64;
  ep.src.copy(h, 8);
  ep.dst.copy(h, 24);
  return Buffer.concat([h, extBytes]);
}

/** A frame carrying `upper` (already complete, checksum included) over IPv4 or IPv6. */
export function ipFrame(spec: IpSpec, proto: number, upper: Buffer): Buffer {
  const ep = endpointsOf(spec);
  const l3Header = spec.v6 ? ipv6Headers(spec, ep, proto, upper.length) : ipv4Header(spec, ep, proto, upper.length);
  return ethernet(
    { ...spec, srcMac: formatMac(ep.srcMac), dstMac: formatMac(ep.dstMac) },
    spec.v6 ? ETHERTYPE.IPv6 : ETHERTYPE.IPv4,
    Buffer.concat([l3Header, upper]),
  );
}

function formatMac(b: Buffer): string {
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join(':');
}

function bytesOf(payload: Buffer | string | undefined): Buffer {
  return payload === undefined ? Buffer.alloc(0) : Buffer.from(payload);
}

// ---------------------------------------------------------------- TCP

export interface TcpOptionSpec {
  mss?: number;
  ws?: number;
  sackOk?: boolean;
  /** [TSval, TSecr] */
  ts?: [number, number];
  /** SACK blocks [left, right]. */
  sack?: [number, number][];
  /**
   * No NOP alignment: options back to back, window scale first, so every
   * later field sits at an odd offset (some stacks send this; it is legal).
   */
  packed?: boolean;
}

/** Offsets (from the start of the options) of each option's value, i.e. past its kind and length bytes. */
export interface TcpOptionOffsets { mss?: number; ws?: number; sackOk?: number; ts?: number; sack?: number }

export function encodeTcpOptions(o: TcpOptionSpec): { bytes: Buffer; at: TcpOptionOffsets } {
  const out: number[] = [];
  const at: TcpOptionOffsets = {};
  const u16 = (v: number) => out.push((v >>> 8) & 0xff, v & 0xff);
  const u32 = (v: number) => { u16(v >>> 16); u16(v & 0xffff); };
  const nops = (n: number) => { if (!o.packed) for (let i = 0; i < n; i++) out.push(1); };
  const mss = () => { if (o.mss !== undefined) { out.push(2, 4); at.mss = out.length; u16(o.mss); } };
  const ws = () => { if (o.ws !== undefined) { nops(1); out.push(3, 3); at.ws = out.length; out.push(o.ws); } };
  const sackOkAndTs = () => {
    if (o.sackOk && o.ts) { out.push(4, 2); at.sackOk = out.length; }
    else if (o.sackOk) { nops(2); out.push(4, 2); at.sackOk = out.length; }
    if (o.ts) {
      if (!o.sackOk) nops(2);
      out.push(8, 10);
      at.ts = out.length;
      u32(o.ts[0]);
      u32(o.ts[1]);
    }
  };
  const sack = () => {
    if (o.sack && o.sack.length) {
      nops(2);
      out.push(5, 2 + 8 * o.sack.length);
      at.sack = out.length;
      for (const [l, r] of o.sack) { u32(l); u32(r); }
    }
  };
  // Linux order when aligned; window scale first when packed, to misalign the rest.
  if (o.packed) { ws(); mss(); sackOkAndTs(); sack(); }
  else { mss(); sackOkAndTs(); ws(); sack(); }
  while (out.length % 4) out.push(0); // EOL padding
  return { bytes: Buffer.from(out), at };
}

export interface TcpSpec extends IpSpec {
  sport?: number;
  dport?: number;
  seq?: number;
  ack?: number;
  /** A number, or letters: F S R P A U E C (e.g. 'SA', 'PA'). */
  flags?: number | string;
  window?: number;
  urgent?: number;
  options?: TcpOptionSpec;
  /** Option bytes used as they are (padded with EOL to 4 bytes); replaces `options`. */
  rawOptions?: Buffer | number[];
  /** Overrides the data offset field (32-bit words), for malformed headers. */
  dataOffsetWords?: number;
  /** Overrides the checksum field. */
  checksum?: number;
  payload?: Buffer | string;
}

export function tcpFlags(flags: number | string | undefined): number {
  if (flags === undefined) return FLAG.ACK;
  if (typeof flags === 'number') return flags;
  const letters: Record<string, number> = {
    F: FLAG.FIN, S: FLAG.SYN, R: FLAG.RST, P: FLAG.PSH, A: FLAG.ACK, U: FLAG.URG, E: FLAG.ECE, C: FLAG.CWR,
  };
  let v = 0;
  for (const c of flags) {
    if (!(c in letters)) throw new Error(`unknown TCP flag letter ${c}`);
    v |= letters[c];
  }
  return v;
}

/** The TCP segment alone (header, options, payload), checksummed for the spec's addresses. */
export function tcpSegment(spec: TcpSpec): Buffer {
  const ep = endpointsOf(spec);
  let options = spec.rawOptions !== undefined ? Buffer.from(spec.rawOptions) : encodeTcpOptions(spec.options ?? {}).bytes;
  if (options.length % 4) options = Buffer.concat([options, Buffer.alloc(4 - (options.length % 4))]);
  const h = Buffer.alloc(TCP_HEADER_LENGTH);
  h.writeUInt16BE(spec.sport ?? (spec.from === 'vm' ? 80 : 40000), 0);
  h.writeUInt16BE(spec.dport ?? (spec.from === 'vm' ? 40000 : 80), 2);
  h.writeUInt32BE((spec.seq ?? 1000) >>> 0, 4);
  h.writeUInt32BE((spec.ack ?? 0) >>> 0, 8);
  h[12] = (spec.dataOffsetWords ?? (TCP_HEADER_LENGTH + options.length) / 4) << 4;
  h[13] = tcpFlags(spec.flags);
  h.writeUInt16BE(spec.window ?? 64240, 14);
  h.writeUInt16BE(spec.urgent ?? 0, 18);
  const segment = Buffer.concat([h, options, bytesOf(spec.payload)]);
  segment.writeUInt16BE(spec.checksum ?? l4Checksum(ep.src, ep.dst, PROTO.TCP, segment), 16);
  return segment;
}

export function tcpFrame(spec: TcpSpec): Buffer {
  return ipFrame(spec, PROTO.TCP, tcpSegment(spec));
}

// ---------------------------------------------------------------- UDP

export interface UdpSpec extends IpSpec {
  sport?: number;
  dport?: number;
  payload?: Buffer | string;
  /** Overrides the UDP length field, for malformed datagrams. */
  length?: number;
  /** Overrides the checksum field (0: "no checksum" over IPv4). */
  checksum?: number;
}

export function udpSegment(spec: UdpSpec): Buffer {
  const ep = endpointsOf(spec);
  const payload = bytesOf(spec.payload);
  const d = Buffer.alloc(UDP_HEADER_LENGTH + payload.length);
  d.writeUInt16BE(spec.sport ?? (spec.from === 'vm' ? 53 : 40000), 0);
  d.writeUInt16BE(spec.dport ?? (spec.from === 'vm' ? 40000 : 53), 2);
  d.writeUInt16BE(spec.length ?? d.length, 4);
  payload.copy(d, UDP_HEADER_LENGTH);
  d.writeUInt16BE(spec.checksum ?? l4Checksum(ep.src, ep.dst, PROTO.UDP, d), 6);
  return d;
}

export function udpFrame(spec: UdpSpec = {}): Buffer {
  return ipFrame(spec, PROTO.UDP, udpSegment(spec));
}

// ---------------------------------------------------------------- ICMP, ICMPv6

export interface IcmpSpec extends IpSpec {
  type: number;
  code?: number;
  /** Everything after the 4-byte type/code/checksum start. */
  body?: Buffer | string;
}

function icmpMessage(spec: IcmpSpec, proto: number): Buffer {
  const ep = endpointsOf(spec);
  const m = Buffer.concat([Buffer.alloc(4), bytesOf(spec.body)]);
  m[0] = spec.type;
  m[1] = spec.code ?? 0;
  m.writeUInt16BE(l4Checksum(ep.src, ep.dst, proto, m), 2);
  return m;
}

/** An ICMPv4 message (any type). */
export function icmpFrame(spec: IcmpSpec): Buffer {
  return ipFrame({ ...spec, v6: false }, PROTO.ICMP, icmpMessage({ ...spec, v6: false }, PROTO.ICMP));
}

/** An ICMPv6 message (any type), checksummed with the IPv6 pseudo-header (RFC 4443 §2.3). */
export function icmpv6(spec: IcmpSpec): Buffer {
  return ipFrame({ ...spec, v6: true }, PROTO.ICMPv6, icmpMessage({ ...spec, v6: true }, PROTO.ICMPv6));
}

export interface IcmpEchoSpec extends IpSpec {
  reply?: boolean;
  id?: number;
  seq?: number;
  payload?: Buffer | string;
}

/** Echo request (or reply): ICMP 8/0 over IPv4, ICMPv6 128/129 over IPv6. */
export function icmpEcho(spec: IcmpEchoSpec = {}): Buffer {
  const body = Buffer.concat([Buffer.alloc(4), bytesOf(spec.payload)]);
  body.writeUInt16BE(spec.id ?? 0x4242, 0);
  body.writeUInt16BE(spec.seq ?? 1, 2);
  const type = spec.v6 ? (spec.reply ? 129 : 128) : (spec.reply ? 0 : 8);
  return spec.v6 ? icmpv6({ ...spec, type, body }) : icmpFrame({ ...spec, type, body });
}

// ---------------------------------------------------------------- ARP

export interface ArpSpec extends LinkSpec {
  op?: 'request' | 'reply';
  senderMac?: string;
  senderIp?: string;
  targetMac?: string;
  targetIp?: string;
}

export function arpFrame(spec: ArpSpec = {}): Buffer {
  const reply = spec.op === 'reply';
  const senderMac = spec.senderMac ?? (reply ? VM_MAC : CLIENT_MAC);
  const a = Buffer.alloc(28);
  a.writeUInt16BE(1, 0); // Ethernet
  a.writeUInt16BE(ETHERTYPE.IPv4, 2);
  a[4] = 6;
  a[5] = 4;
  a.writeUInt16BE(reply ? 2 : 1, 6);
  macBytes(senderMac).copy(a, 8);
  ipv4Bytes(spec.senderIp ?? (reply ? VM_IP : CLIENT_IP)).copy(a, 14);
  macBytes(spec.targetMac ?? (reply ? CLIENT_MAC : '00:00:00:00:00:00')).copy(a, 18);
  ipv4Bytes(spec.targetIp ?? (reply ? CLIENT_IP : VM_IP)).copy(a, 24);
  return ethernet(
    { ...spec, srcMac: spec.srcMac ?? senderMac, dstMac: spec.dstMac ?? (reply ? CLIENT_MAC : 'ff:ff:ff:ff:ff:ff') },
    ETHERTYPE.ARP,
    a,
  );
}

// ---------------------------------------------------------------- fragments and extension chains

export interface Ipv4FragmentSpec extends IpSpec {
  /** Protocol of the datagram the piece belongs to (default UDP). */
  proto?: number;
  /** Fragment offset in bytes (a multiple of 8). */
  offset: number;
  more: boolean;
  /** The bytes of the datagram this fragment carries. */
  data: Buffer;
}

/** One IPv4 fragment. Cut an L4 segment (udpSegment/tcpSegment) into `data` pieces to build a datagram. */
export function ipv4Fragment(spec: Ipv4FragmentSpec): Buffer {
  if (spec.offset % 8) throw new Error(`fragment offset ${spec.offset} is not a multiple of 8`);
  const ep = endpointsOf({ ...spec, v6: false });
  const header = ipv4Header(spec, ep, spec.proto ?? PROTO.UDP, spec.data.length, { offset: spec.offset, more: spec.more });
  return ethernet(
    { ...spec, srcMac: formatMac(ep.srcMac), dstMac: formatMac(ep.dstMac) },
    ETHERTYPE.IPv4,
    Buffer.concat([header, spec.data]),
  );
}

export type Ipv6ExtensionsSpec = Omit<TcpSpec & UdpSpec, 'v6' | 'extensions' | 'length' | 'checksum'> & {
  extensions: Ipv6Extension[];
  /** What follows the chain (default TCP). 'none': No Next Header. */
  upper?: 'tcp' | 'udp' | 'icmpv6' | 'none';
};

/** An IPv6 frame whose upper layer follows the given extension headers. */
export function ipv6WithExtensions(spec: Ipv6ExtensionsSpec): Buffer {
  const v6 = { ...spec, v6: true };
  switch (spec.upper ?? 'tcp') {
    case 'tcp': return tcpFrame(v6);
    case 'udp': return udpFrame(v6);
    case 'icmpv6': return icmpEcho(v6);
    case 'none': return ipFrame(v6, PROTO.NoNext, Buffer.alloc(0));
  }
}

// ---------------------------------------------------------------- flows of any size

/** One TCP or UDP flow: addresses, ports, tags. */
export interface FlowSpec extends IpSpec {
  udp: boolean;
  sport: number;
  dport: number;
}

/** A random flow: IPv4 or IPv6, TCP or UDP, untagged, one tag or two, random addresses and ports. */
export function randomFlow(random: () => number): FlowSpec {
  const int = (max: number) => Math.floor(random() * max);
  const v6 = random() < 0.5;
  const tags = int(3);
  return {
    v6, udp: random() < 0.5,
    vlan: tags === 0 ? undefined : tags === 1 ? [1 + int(4094)] : [1 + int(4094), 1 + int(4094)],
    src: v6 ? `fd77::${int(0x10000).toString(16)}:${int(0x10000).toString(16)}` : `10.${int(256)}.${int(256)}.${int(256)}`,
    dst: v6 ? `fd78::${int(0x10000).toString(16)}` : `172.16.${int(256)}.${int(256)}`,
    sport: 1024 + int(64512), dport: [22, 53, 80, 443, 5201][int(5)],
  };
}

/** A frame of `flow` exactly `length` bytes long: `payload`, then dots. Throws if its headers and payload do not fit. */
export function flowFrame(flow: FlowSpec, length: number, payload: Buffer | string = ''): Buffer {
  const build = (p: Buffer) => (flow.udp ? udpFrame({ ...flow, payload: p }) : tcpFrame({ ...flow, payload: p }));
  const head = bytesOf(payload);
  const room = length - build(head).length;
  if (room < 0) throw new Error(`a ${length}-byte frame cannot hold this flow's headers and a ${head.length}-byte payload`);
  return build(Buffer.concat([head, Buffer.alloc(room, 0x2e)]));
}
