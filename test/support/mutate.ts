/**
 * Frame mutators for the pipeline fuzz test and the robustness bench.
 *
 * In:  real frames (the fixtures' pcaps) and a seeded random source.
 * Out: broken variants of them, and frames built to the edge of what the
 *      decoder accepts (VLAN stacks, IPv6 extension chains, fragments, TCP
 *      option garbage, bad checksums). Each function returns a fresh Buffer
 *      and names the kind it made, so a report can count them.
 *
 * `mutateFrame` draws from `rnd` exactly as the fuzz test always did, so the
 * test's seeded run is unchanged by the move.
 */
import { FLAG, PROTO, ETHERTYPE, Ipv6Extension, ipv4Fragment, ipv6WithExtensions, layoutOf, tcpFrame, udpFrame, udpSegment, tcpSegment } from './frames';

export type Rnd = () => number;

const int = (rnd: Rnd, n: number): number => Math.floor(rnd() * n);

function randomBytes(rnd: Rnd, n: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = int(rnd, 256);
  return b;
}

/** The fuzz test's byte-level mutations, in the order they are drawn. */
export const BYTE_MUTATIONS = ['header-bytes', 'truncated', 'header-extreme', 'garbage-appended', 'spliced', 'unchanged'] as const;
export type ByteMutation = typeof BYTE_MUTATIONS[number];

/** Byte-level damage to a real frame: header bytes flipped, truncated, extended, spliced with `other`, or left as is. */
export function mutateFrame(src: Buffer, other: Buffer, rnd: Rnd): Buffer {
  return mutateFrameNamed(src, other, rnd).frame;
}

export function mutateFrameNamed(src: Buffer, other: Buffer, rnd: Rnd): { kind: ByteMutation; frame: Buffer } {
  const kind = BYTE_MUTATIONS[int(rnd, 6)];
  const b = Buffer.from(src);
  const headerSpan = Math.min(b.length, 96);
  switch (kind) {
    case 'header-bytes': {
      const n = 1 + int(rnd, 4);
      for (let i = 0; i < n && headerSpan > 0; i++) b[int(rnd, headerSpan)] = int(rnd, 256);
      return { kind, frame: b };
    }
    case 'truncated':
      return { kind, frame: b.subarray(0, int(rnd, b.length)) };
    case 'header-extreme':
      if (headerSpan > 0) b[int(rnd, headerSpan)] = rnd() < 0.5 ? 0 : 0xff;
      return { kind, frame: b };
    case 'garbage-appended':
      return { kind, frame: Buffer.concat([b, Buffer.from(Array.from({ length: int(rnd, 64) }, () => int(rnd, 256)))]) };
    case 'spliced': {
      const cut = int(rnd, Math.min(b.length, other.length));
      return { kind, frame: Buffer.concat([b.subarray(0, cut), other.subarray(cut)]) };
    }
    case 'unchanged':
      return { kind, frame: b };
  }
}

/** Structural damage to a real frame, at the layer it names. */
export const STRUCTURAL_MUTATIONS = ['vlan-stack', 'bad-l4-checksum', 'bad-ipv4-checksum', 'tcp-option-garbage', 'bit-flips', 'fragment-bits'] as const;
export type StructuralMutation = typeof STRUCTURAL_MUTATIONS[number];

/** Where the IP and L4 headers of a (possibly odd) frame start; null when it is not IP or too short to say. */
function layoutOrNull(frame: Buffer): ReturnType<typeof layoutOf> | null {
  try {
    const l = layoutOf(frame);
    return l.l4Offset < frame.length ? l : null;
  } catch {
    return null;
  }
}

/** 1 to 4 VLAN tags pushed after the MACs, with TPIDs 0x8100, 0x88a8 and 0x9100 mixed (QinQ, 3+ tag stacks). */
export function pushVlanTags(frame: Buffer, rnd: Rnd, tags = 1 + int(rnd, 4)): Buffer {
  if (frame.length < 14) return Buffer.from(frame);
  const tpids = [ETHERTYPE.VLAN, ETHERTYPE.QinQ, 0x9100];
  const stack = Buffer.alloc(4 * tags);
  for (let t = 0; t < tags; t++) {
    stack.writeUInt16BE(tpids[int(rnd, tpids.length)], 4 * t);
    stack.writeUInt16BE(int(rnd, 0x10000), 4 * t + 2); // PCP, DEI and VID all random
  }
  return Buffer.concat([frame.subarray(0, 12), stack, frame.subarray(12)]);
}

export function mutateStructure(src: Buffer, rnd: Rnd): { kind: StructuralMutation; frame: Buffer } {
  const kind = STRUCTURAL_MUTATIONS[int(rnd, STRUCTURAL_MUTATIONS.length)];
  const b = Buffer.from(src);
  const l = layoutOrNull(b);
  switch (kind) {
    case 'vlan-stack':
      return { kind, frame: pushVlanTags(b, rnd) };
    case 'bad-l4-checksum': {
      // The checksum field of TCP (offset 16) or UDP (offset 6), made wrong.
      const at = l ? l.l4Offset + (l.proto === PROTO.TCP ? 16 : l.proto === PROTO.UDP ? 6 : 2) : -1;
      if (at >= 0 && at + 2 <= b.length) b.writeUInt16BE(b.readUInt16BE(at) ^ (1 + int(rnd, 0xffff)), at);
      return { kind, frame: b };
    }
    case 'bad-ipv4-checksum': {
      if (l && l.etherType === ETHERTYPE.IPv4 && l.l3Offset + 12 <= b.length) b.writeUInt16BE(b.readUInt16BE(l.l3Offset + 10) ^ (1 + int(rnd, 0xffff)), l.l3Offset + 10);
      return { kind, frame: b };
    }
    case 'tcp-option-garbage': {
      // Random bytes over the options (or a data offset raised over the payload), lengths included.
      if (!l || l.proto !== PROTO.TCP || l.l4Offset + 20 > b.length) return { kind, frame: b };
      const off = l.l4Offset;
      let words = b[off + 12] >> 4;
      if (words <= 5 || rnd() < 0.3) {
        words = 6 + int(rnd, 10);
        b[off + 12] = (words << 4) | (b[off + 12] & 0x0f);
      }
      const end = Math.min(b.length, off + 4 * words);
      for (let i = off + 20; i < end; i++) b[i] = rnd() < 0.3 ? [0, 1, 2, 3, 4, 5, 8, 255][int(rnd, 8)] : int(rnd, 256);
      return { kind, frame: b };
    }
    case 'bit-flips': {
      const n = 1 + int(rnd, 8);
      for (let i = 0; i < n && b.length > 0; i++) b[int(rnd, b.length)] ^= 1 << int(rnd, 8);
      return { kind, frame: b };
    }
    case 'fragment-bits': {
      // A real IPv4 datagram made a fragment: MF set and/or a random offset.
      if (l && l.etherType === ETHERTYPE.IPv4 && l.l3Offset + 8 <= b.length) {
        b.writeUInt16BE((rnd() < 0.5 ? 0x2000 : 0) | int(rnd, 0x2000), l.l3Offset + 6);
      }
      return { kind, frame: b };
    }
  }
}

/** Frames built to the edge of the decoder, not derived from a recording. */
export const GENERATED_KINDS = ['qinq-tcp', 'vlan-3plus', 'ipv6-ext-chain', 'ipv6-ext-truncated', 'ipv4-fragment', 'ipv6-fragment', 'tcp-options-garbage', 'udp-bad-checksum'] as const;
export type GeneratedKind = typeof GENERATED_KINDS[number];

export interface GeneratedSide {
  /** Who sends: sets the default MACs, addresses and port direction of the builder. */
  from: 'client' | 'vm';
}

function randomExtension(rnd: Rnd): Ipv6Extension {
  switch (int(rnd, 5)) {
    case 0: return { kind: 'hop-by-hop', units: 1 + int(rnd, 3) };
    case 1: return { kind: 'dest-options', units: 1 + int(rnd, 4) };
    case 2: return { kind: 'routing', segments: Array.from({ length: int(rnd, 3) }, (_, k) => `fd77::${k + 10}`) };
    case 3: return { kind: 'fragment', offset: 8 * int(rnd, 4), more: rnd() < 0.5, id: int(rnd, 2 ** 31) };
    default: return { kind: 'ah', icvWords: 1 + int(rnd, 4) };
  }
}

/**
 * A generated frame of a random kind. Client ports come from a range of
 * 2048, so some of them land in the same flow as each other.
 */
export function generatedFrame(rnd: Rnd, side: GeneratedSide): { kind: GeneratedKind; frame: Buffer } {
  const kind = GENERATED_KINDS[int(rnd, GENERATED_KINDS.length)];
  const from = side.from;
  const clientPort = 40000 + int(rnd, 2048);
  const ports = from === 'client' ? { sport: clientPort, dport: 80 } : { sport: 80, dport: clientPort };
  const tcp = { from, ...ports, seq: int(rnd, 2 ** 32), ack: int(rnd, 2 ** 32), flags: rnd() < 0.2 ? FLAG.SYN : FLAG.ACK | FLAG.PSH, payload: randomBytes(rnd, int(rnd, 200)) };
  switch (kind) {
    case 'qinq-tcp':
      return { kind, frame: tcpFrame({ ...tcp, vlan: [int(rnd, 4095), int(rnd, 4095)] }) };
    case 'vlan-3plus': {
      const n = 3 + int(rnd, 3);
      const tpids = Array.from({ length: n }, () => [ETHERTYPE.VLAN, ETHERTYPE.QinQ, 0x9100][int(rnd, 3)]);
      return { kind, frame: tcpFrame({ ...tcp, vlan: Array.from({ length: n }, () => int(rnd, 4095)), vlanTpids: tpids }) };
    }
    case 'ipv6-ext-chain': {
      const extensions = Array.from({ length: 1 + int(rnd, 5) }, () => randomExtension(rnd));
      const upper = (['tcp', 'udp', 'icmpv6', 'none'] as const)[int(rnd, 4)];
      // An echo's sequence number is 16 bits.
      return { kind, frame: ipv6WithExtensions({ ...tcp, seq: upper === 'icmpv6' ? tcp.seq & 0xffff : tcp.seq, extensions, upper }) };
    }
    case 'ipv6-ext-truncated': {
      const f = ipv6WithExtensions({ ...tcp, extensions: Array.from({ length: 2 + int(rnd, 4) }, () => randomExtension(rnd)) });
      return { kind, frame: f.subarray(0, 14 + 40 + int(rnd, Math.max(1, f.length - 54))) };
    }
    case 'ipv4-fragment': {
      const isTcp = rnd() < 0.5;
      const segment = isTcp ? tcpSegment(tcp) : udpSegment({ from, ...ports, payload: randomBytes(rnd, 64 + int(rnd, 400)) });
      const start = 8 * int(rnd, Math.max(1, segment.length >> 3));
      const data = segment.subarray(start, Math.min(segment.length, start + 8 * (1 + int(rnd, 40))));
      return { kind, frame: ipv4Fragment({ from, proto: isTcp ? PROTO.TCP : PROTO.UDP, offset: start, more: rnd() < 0.6, data, ipId: int(rnd, 65536) }) };
    }
    case 'ipv6-fragment':
      return { kind, frame: ipv6WithExtensions({ ...tcp, extensions: [{ kind: 'fragment', offset: 8 * int(rnd, 200), more: rnd() < 0.5, id: int(rnd, 2 ** 31) }], upper: rnd() < 0.5 ? 'tcp' : 'udp' }) };
    case 'tcp-options-garbage': {
      const raw = randomBytes(rnd, 4 * int(rnd, 11));
      for (let i = 0; i < raw.length; i++) if (rnd() < 0.3) raw[i] = [0, 1, 2, 3, 4, 5, 8, 0xff][int(rnd, 8)];
      return { kind, frame: tcpFrame({ ...tcp, v6: rnd() < 0.3, rawOptions: raw }) };
    }
    case 'udp-bad-checksum':
      return { kind, frame: udpFrame({ from, ...(from === 'client' ? { sport: clientPort, dport: 53 } : { sport: 53, dport: clientPort }), payload: randomBytes(rnd, 8 + int(rnd, 100)), checksum: 1 + int(rnd, 0xfffe), v6: rnd() < 0.3 }) };
  }
}
