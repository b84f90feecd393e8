/**
 * Frames the failover stage sends itself:
 *
 * - a liveness probe: an ICMP (or ICMPv6) echo request to the active
 *   replica alone, from a client's address, built from a frame the standby
 *   sent (VM → client), so MACs, VLAN tags and addresses are ones the VM
 *   already uses. Its reply is recognized by the identifier and never
 *   reaches a client.
 * - neighbour announcements after a promotion, for setups where the path
 *   to the VM's address moves: a gratuitous ARP reply (RFC 5227 §3) and an
 *   unsolicited neighbour advertisement (RFC 4861 §7.2.6).
 */
import { DecodedFrame, decodeFrame } from '../packet/frame';
import { computeL4Checksum, ipv4HeaderChecksum } from '../packet/l4-checksum';

/** "SV": the echo identifier of shadowvm's probes. */
export const PROBE_ECHO_ID = 0x5356;
const PROBE_PAYLOAD = Buffer.from('shadowvm liveness probe ');
const ETHERTYPE_IPV4 = 0x0800;
const ETHERTYPE_IPV6 = 0x86dd;

/** The echo request, or null when the template is not an IP frame from a VM. */
export function buildEchoProbe(template: Buffer, sequence: number, echoId = PROBE_ECHO_ID): Buffer | null {
  const t = decodeFrame(template);
  if (t.error || (t.l3 !== 'ipv4' && t.l3 !== 'ipv6')) return null;
  const l2 = t.l3Offset - t.base;
  const v6 = t.l3 === 'ipv6';
  const l3Length = v6 ? 40 : 20;
  const icmpLength = 8 + PROBE_PAYLOAD.length;
  const out = Buffer.alloc(l2 + l3Length + icmpLength);
  // Ethernet (and VLAN tags): to the VM from the client.
  t.buf.copy(out, 0, t.base, t.base + l2);
  t.buf.copy(out, 0, t.base + 6, t.base + 12);
  t.buf.copy(out, 6, t.base, t.base + 6);
  out.writeUInt16BE(v6 ? ETHERTYPE_IPV6 : ETHERTYPE_IPV4, l2 - 2);
  if (v6) {
    out.writeUInt32BE(0x60000000, l2);
    out.writeUInt16BE(icmpLength, l2 + 4);
    out[l2 + 6] = 58;
    out[l2 + 7] = 64;
    t.buf.copy(out, l2 + 8, t.l3Offset + 24, t.l3Offset + 40);
    t.buf.copy(out, l2 + 24, t.l3Offset + 8, t.l3Offset + 24);
  } else {
    out[l2] = 0x45;
    out.writeUInt16BE(l3Length + icmpLength, l2 + 2);
    out[l2 + 8] = 64;
    out[l2 + 9] = 1;
    t.buf.copy(out, l2 + 12, t.l3Offset + 16, t.l3Offset + 20);
    t.buf.copy(out, l2 + 16, t.l3Offset + 12, t.l3Offset + 16);
  }
  const icmp = l2 + l3Length;
  out[icmp] = v6 ? 128 : 8;
  out.writeUInt16BE(echoId & 0xffff, icmp + 4);
  out.writeUInt16BE(sequence & 0xffff, icmp + 6);
  PROBE_PAYLOAD.copy(out, icmp + 8);
  const d = decodeFrame(out);
  if (d.l3 === 'ipv4') d.ipv4.checksum = ipv4HeaderChecksum(d);
  d.icmp.checksum = computeL4Checksum(d);
  return out;
}

/** Whether a VM frame is the reply to one of our probes (identifiers PROBE_ECHO_ID to PROBE_ECHO_ID + PROBE_ID_SPAN − 1). */
export function isProbeReply(f: DecodedFrame): boolean {
  if (f.l4 === 'icmp') return f.icmp.type === 0 && isProbeId(f.icmp.echoId);
  if (f.l4 === 'icmpv6') return f.icmp.type === 129 && isProbeId(f.icmp.echoId);
  return false;
}

/**
 * The identifiers a probe may carry. One data-plane worker of several
 * (`run --workers`) sees only the frames of its shard, and an echo's shard
 * depends on its identifier (dataplane/shard.ts): each worker probes with
 * an identifier of this span whose reply comes back to it.
 */
export const PROBE_ID_SPAN = 1024;

function isProbeId(id: number): boolean {
  return ((id - PROBE_ECHO_ID) & 0xffff) < PROBE_ID_SPAN;
}

/**
 * A probe built from `template` whose reply reaches worker `shard.index` of
 * `shard.count`: the first identifier of the span that hashes there (its
 * request and its reply hash alike). Null when the template makes no probe,
 * or no identifier lands there (for 64 workers, about 1 in 10^7).
 */
export function buildShardedEchoProbe(template: Buffer, sequence: number, shard: { count: number; index: number }, shardOf: (frame: Buffer, count: number) => number): Buffer | null {
  for (let k = 0; k < PROBE_ID_SPAN; k++) {
    const probe = buildEchoProbe(template, sequence, PROBE_ECHO_ID + k);
    if (!probe || shardOf(probe, shard.count) === shard.index) return probe;
  }
  return null;
}

/**
 * Announcements of the VM's addresses after a promotion, built from a frame
 * the VM sent (its MAC, VLAN tags and address): a gratuitous ARP for IPv4,
 * an unsolicited neighbour advertisement (override flag set) for IPv6.
 */
export function buildAnnouncement(vmFrame: Buffer): Buffer | null {
  const t = decodeFrame(vmFrame);
  if (t.error) return null;
  const l2 = t.l3Offset - t.base;
  const vmMac = t.buf.subarray(t.base + 6, t.base + 12);
  if (t.l3 === 'ipv4') {
    const out = Buffer.alloc(Math.max(60, l2 + 28));
    t.buf.copy(out, 0, t.base, t.base + l2);
    out.fill(0xff, 0, 6);
    out.writeUInt16BE(0x0806, l2 - 2);
    const a = l2;
    out.writeUInt16BE(1, a); // Ethernet
    out.writeUInt16BE(ETHERTYPE_IPV4, a + 2);
    out[a + 4] = 6;
    out[a + 5] = 4;
    out.writeUInt16BE(2, a + 6); // reply: RFC 5227 allows either; replies update more caches
    vmMac.copy(out, a + 8);
    t.buf.copy(out, a + 14, t.l3Offset + 12, t.l3Offset + 16);
    out.fill(0xff, a + 18, a + 24);
    t.buf.copy(out, a + 24, t.l3Offset + 12, t.l3Offset + 16);
    return out;
  }
  if (t.l3 === 'ipv6') {
    const icmpLength = 24 + 8; // NA + target link-layer address option
    const out = Buffer.alloc(l2 + 40 + icmpLength);
    t.buf.copy(out, 0, t.base, t.base + l2);
    // All-nodes multicast 33:33:00:00:00:01 / ff02::1.
    Buffer.from([0x33, 0x33, 0, 0, 0, 1]).copy(out, 0);
    out.writeUInt16BE(ETHERTYPE_IPV6, l2 - 2);
    out.writeUInt32BE(0x60000000, l2);
    out.writeUInt16BE(icmpLength, l2 + 4);
    out[l2 + 6] = 58;
    out[l2 + 7] = 255; // RFC 4861 §7.1.2: hop limit 255
    t.buf.copy(out, l2 + 8, t.l3Offset + 8, t.l3Offset + 24);
    Buffer.from('ff020000000000000000000000000001', 'hex').copy(out, l2 + 24);
    const icmp = l2 + 40;
    out[icmp] = 136;
    out[icmp + 4] = 0x20; // override
    t.buf.copy(out, icmp + 8, t.l3Offset + 8, t.l3Offset + 24);
    out[icmp + 24] = 2; // target link-layer address
    out[icmp + 25] = 1;
    vmMac.copy(out, icmp + 26);
    const d = decodeFrame(out);
    d.icmp.checksum = computeL4Checksum(d);
    return out;
  }
  return null;
}

export type { DecodedFrame };

/**
 * A bare reset (RST, no ACK, no options, no payload) on the connection of
 * the TCP frame `t`: to where `t` was going (`back` false) or back to its
 * sender (`back` true: MACs, addresses and ports swapped), with sequence
 * number `seq`. RFC 9293 3.10.7.4 / RFC 5961 §3: a reset whose sequence
 * number is exactly the receiver's RCV.NXT closes the connection at once.
 * Null when `t` is not TCP over IP.
 */
export function buildTcpReset(t: DecodedFrame, back: boolean, seq: number): Buffer | null {
  return buildBareTcp(t, back, seq, 0x04, 0, 0);
}

/**
 * A bare ACK (no options, no payload) on the connection of the TCP frame
 * `t`, back to its sender: sequence number `seq`, acknowledging `ack`, with
 * the raw (unscaled) window field `window`. Null when `t` is not TCP over IP.
 */
export function buildTcpAck(t: DecodedFrame, seq: number, ack: number, window: number): Buffer | null {
  return buildBareTcp(t, true, seq, 0x10, ack, window);
}

function buildBareTcp(t: DecodedFrame, back: boolean, seq: number, flags: number, ack: number, window: number): Buffer | null {
  if (t.error || t.l4 !== 'tcp' || (t.l3 !== 'ipv4' && t.l3 !== 'ipv6')) return null;
  const l2 = t.l3Offset - t.base;
  const v6 = t.l3 === 'ipv6';
  const l3Length = v6 ? 40 : 20;
  const out = Buffer.alloc(l2 + l3Length + 20);
  t.buf.copy(out, 0, t.base, t.base + l2);
  if (back) {
    t.buf.copy(out, 0, t.base + 6, t.base + 12);
    t.buf.copy(out, 6, t.base, t.base + 6);
  }
  out.writeUInt16BE(v6 ? ETHERTYPE_IPV6 : ETHERTYPE_IPV4, l2 - 2);
  const addrLength = v6 ? 16 : 4;
  const src = t.l3Offset + (v6 ? 8 : 12);
  const dst = src + addrLength;
  const outSrc = l2 + (v6 ? 8 : 12);
  t.buf.copy(out, outSrc, back ? dst : src, (back ? dst : src) + addrLength);
  t.buf.copy(out, outSrc + addrLength, back ? src : dst, (back ? src : dst) + addrLength);
  if (v6) {
    out.writeUInt32BE(0x60000000, l2);
    out.writeUInt16BE(20, l2 + 4);
    out[l2 + 6] = 6;
    out[l2 + 7] = 64;
  } else {
    out[l2] = 0x45;
    out.writeUInt16BE(l3Length + 20, l2 + 2);
    out[l2 + 8] = 64;
    out[l2 + 9] = 6;
  }
  const tcp = l2 + l3Length;
  out.writeUInt16BE(back ? t.tcp.dstPort : t.tcp.srcPort, tcp);
  out.writeUInt16BE(back ? t.tcp.srcPort : t.tcp.dstPort, tcp + 2);
  out.writeUInt32BE(seq >>> 0, tcp + 4);
  out.writeUInt32BE(ack >>> 0, tcp + 8);
  out[tcp + 12] = 5 << 4;
  out[tcp + 13] = flags;
  out.writeUInt16BE(window & 0xffff, tcp + 14);
  const d = decodeFrame(out);
  if (d.l3 === 'ipv4') d.ipv4.checksum = ipv4HeaderChecksum(d);
  d.tcp.checksum = computeL4Checksum(d);
  return out;
}
