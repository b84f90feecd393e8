/**
 * Flow keys. A flow is named by (VLAN, protocol, remote endpoint, VM
 * endpoint): the port a frame arrived on says which side is the VM, so the
 * two directions give the same key without sorting addresses.
 */
import { IpProto } from '../packet/constants';
import { formatIpv4, formatIpv6 } from '../packet/format';
import { DecodedFrame } from '../packet/frame';

export type FlowProtocol = 'tcp' | 'udp' | 'icmp' | 'icmpv6' | 'ip';
/** Which way a frame travels: from the client side toward the VMs, or from a VM. */
export type Direction = 'ingress' | 'egress';

const scratch = Buffer.alloc(48);
/** Second "port" of a non-echo ICMP flow key (echo flows have 0 there). */
const ICMP_NOT_ECHO = 1;

function l4Ports(f: DecodedFrame, dir: Direction): [remote: number, vm: number] {
  switch (f.l4) {
    case 'tcp': {
      const s = f.tcp.srcPort, d = f.tcp.dstPort;
      return dir === 'ingress' ? [s, d] : [d, s];
    }
    case 'udp': {
      const s = f.udp.srcPort, d = f.udp.dstPort;
      return dir === 'ingress' ? [s, d] : [d, s];
    }
    case 'icmp':
    case 'icmpv6': {
      const t = f.icmp.type;
      // Echo request and reply share one flow, told apart by identifier (RFC 792, RFC 4443 §4).
      // Other messages are grouped by type, marked so that type n never shares echo identifier n's flow.
      const echo = f.l4 === 'icmp' ? t === 0 || t === 8 : t === 128 || t === 129;
      return echo ? [f.icmp.echoId, 0] : [t, ICMP_NOT_ECHO];
    }
    default:
      return [0, 0];
  }
}

export function flowProtocolOf(f: DecodedFrame): FlowProtocol {
  switch (f.l4) {
    case 'tcp': return f.fragment ? 'ip' : 'tcp';
    case 'udp': return f.fragment ? 'ip' : 'udp';
    case 'icmp': return 'icmp';
    case 'icmpv6': return 'icmpv6';
    default: return 'ip';
  }
}

function remotePortOf(f: DecodedFrame, dir: Direction): number {
  switch (f.l4) {
    case 'tcp': return dir === 'ingress' ? f.tcp.srcPort : f.tcp.dstPort;
    case 'udp': return dir === 'ingress' ? f.udp.srcPort : f.udp.dstPort;
    default: return l4Ports(f, dir)[0];
  }
}

function vmPortOf(f: DecodedFrame, dir: Direction): number {
  switch (f.l4) {
    case 'tcp': return dir === 'ingress' ? f.tcp.dstPort : f.tcp.srcPort;
    case 'udp': return dir === 'ingress' ? f.udp.dstPort : f.udp.srcPort;
    default: return l4Ports(f, dir)[1];
  }
}

/** Longest key: 3 VLAN + 1 protocol + 2 × 16 address + 4 port bytes. */
export const MAX_FLOW_KEY_BYTES = 40;

/**
 * Writes the key bytes of a decoded IPv4/IPv6 frame (callers check `f.l3`
 * first) into `out`; returns how many.
 */
export function writeFlowKey(f: DecodedFrame, dir: Direction, out: Buffer): number {
  const buf = f.buf;
  const proto = flowProtocolOf(f);
  let n = 0;
  const vlan = f.vlanKey;
  out[n++] = vlan >>> 16; out[n++] = (vlan >>> 8) & 0xff; out[n++] = vlan & 0xff;
  out[n++] = proto === 'ip' ? 0 : f.ipProto;
  let srcOff: number, addrLen: number;
  if (f.l3 === 'ipv4') { srcOff = f.l3Offset + 12; addrLen = 4; }
  else { srcOff = f.l3Offset + 8; addrLen = 16; }
  const remoteOff = dir === 'ingress' ? srcOff : srcOff + addrLen;
  const vmOff = dir === 'ingress' ? srcOff + addrLen : srcOff;
  // Byte loops: for 4 or 16 bytes they beat Buffer#copy's native call.
  for (let i = 0; i < addrLen; i++) out[n++] = buf[remoteOff + i];
  for (let i = 0; i < addrLen; i++) out[n++] = buf[vmOff + i];
  if (proto !== 'ip') {
    const remotePort = remotePortOf(f, dir), vmPort = vmPortOf(f, dir);
    out[n++] = remotePort >> 8; out[n++] = remotePort & 0xff;
    out[n++] = vmPort >> 8; out[n++] = vmPort & 0xff;
  } else {
    out[n++] = f.ipProto;
  }
  return n;
}

/** The key as a string: a latin1 string of the key bytes, cheap to build, exact to compare. */
export function flowKeyOf(f: DecodedFrame, dir: Direction): string {
  return scratch.toString('latin1', 0, writeFlowKey(f, dir, scratch));
}

/** "tcp 10.0.0.1:40000 > 10.0.0.2:80" — remote (client side) first, VM second. */
export function describeFlow(f: DecodedFrame, dir: Direction): string {
  return describeKey(flowKeyOf(f, dir));
}

/** IP protocols that have a class of their own: under class 'ip' they can only be fragments. */
const FRAGMENT_ONLY_IN_IP_CLASS = new Set<number>([IpProto.TCP, IpProto.UDP, IpProto.ICMP, IpProto.ICMPv6]);
const keyBytes = Buffer.alloc(MAX_FLOW_KEY_BYTES);
/** Longest name: "icmpv6 [" + 2 × 39 address characters + " vlan 4095.4095" and the rest. */
const text = Buffer.alloc(160);
let at = 0;

function put(s: string): void {
  for (let i = 0; i < s.length; i++) text[at++] = s.charCodeAt(i);
}

function putDec(v: number): void {
  if (v >= 10) putDec(Math.floor(v / 10));
  text[at++] = 48 + (v % 10);
}

function putAddress(b: Buffer, o: number, v4: boolean): void {
  if (!v4) {
    put(`[${formatIpv6(b, o)}]`);
    return;
  }
  for (let i = 0; i < 4; i++) {
    if (i) text[at++] = 46;
    putDec(b[o + i]);
  }
}

/**
 * The text form of a flow key (see writeFlowKey), as describeFlow gives it:
 * written byte by byte into one buffer, so a flow's name is one flat string
 * (a template literal would leave a tree of string pieces behind, several
 * hundred bytes per flow). An unknown layout gives the key's hex.
 */
export function describeKey(key: string): string {
  const n = Math.min(key.length, MAX_FLOW_KEY_BYTES);
  const b = keyBytes;
  for (let i = 0; i < n; i++) b[i] = key.charCodeAt(i);
  const v4 = n === 16 || n === 13;
  const ports = n === 16 || n === 40;
  if (!v4 && n !== 40 && n !== 37) return `key ${b.toString('hex', 0, n)}`;
  const len = v4 ? 4 : 16;
  const end = 4 + 2 * len;
  const proto = ports ? b[3] : b[end];
  at = 0;
  if (!ports) { put('ip proto '); putDec(proto); text[at++] = 32; }
  else put(proto === IpProto.TCP ? 'tcp ' : proto === IpProto.UDP ? 'udp ' : proto === IpProto.ICMP ? 'icmp ' : 'icmpv6 ');
  putAddress(b, 4, v4);
  const tcpOrUdp = ports && (proto === IpProto.TCP || proto === IpProto.UDP);
  if (tcpOrUdp) { text[at++] = 58; putDec(b.readUInt16BE(end)); }
  put(' > ');
  putAddress(b, 4 + len, v4);
  if (tcpOrUdp) { text[at++] = 58; putDec(b.readUInt16BE(end + 2)); }
  else if (ports) { put(' id/type '); putDec(b.readUInt16BE(end)); }
  else if (FRAGMENT_ONLY_IN_IP_CLASS.has(proto)) put(' (fragments)');
  const vlanKey = (b[0] << 16) | (b[1] << 8) | b[2];
  if (vlanKey !== 0) {
    put(' vlan ');
    putDec(Math.floor(vlanKey / 4096));
    if (vlanKey % 4096) { text[at++] = 46; putDec(vlanKey % 4096); }
  }
  return text.toString('latin1', 0, at);
}
