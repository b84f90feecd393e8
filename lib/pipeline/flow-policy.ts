/**
 * The per-flow policy table (`flowPolicy`): which flows are compared, which
 * pass unchecked, and which the backup never sees.
 *
 * In:  the table as the config holds it (a list of rules); at flow creation,
 *      the flow's protocol, VM-side port and client address.
 * Out: the action of the first rule that matches (`compare` when none does).
 *
 * The table is compiled once (CIDRs to 32-bit words and masks, port ranges
 * to two numbers), so a match is a few integer comparisons per rule and no
 * text is read per flow. The same parsers check the config (`config check`),
 * so a table that passes validation always compiles.
 */
import { isIPv4, isIPv6 } from 'node:net';
import { IpProto } from '../packet/constants';
import type { DecodedFrame } from '../packet/frame';

/** What the bridge does with a flow. */
export type FlowPolicyAction = 'compare' | 'pass' | 'drop-backup-only';
export const FLOW_POLICY_ACTIONS: readonly FlowPolicyAction[] = ['compare', 'pass', 'drop-backup-only'];
export type FlowPolicyProtocol = 'tcp' | 'udp' | 'icmp' | 'any';
export const FLOW_POLICY_PROTOCOLS: readonly FlowPolicyProtocol[] = ['tcp', 'udp', 'icmp', 'any'];

/** One rule as written in the config. Missing keys match everything. */
export interface FlowPolicyRule {
  /** `icmp` covers ICMP and ICMPv6. Default `any`. */
  protocol?: FlowPolicyProtocol;
  /** The VM-side port: one (`443`) or an inclusive range (`"8000-8099"`). TCP and UDP only. */
  port?: number | string;
  /** The client-side address block: `"10.0.0.0/8"`, `"2001:db8::/32"`, or one address. */
  cidr?: string;
  action: FlowPolicyAction;
}

/** A port setting as two numbers, or the reason it is not one. */
export function parsePortRange(v: unknown): { lo: number; hi: number } | string {
  const isPort = (n: number) => Number.isInteger(n) && n >= 0 && n <= 65535;
  if (typeof v === 'number') return isPort(v) ? { lo: v, hi: v } : 'a port is an integer from 0 to 65535';
  if (typeof v !== 'string') return 'not a number or a string';
  const m = /^\s*(\d{1,5})\s*(?:-\s*(\d{1,5})\s*)?$/.exec(v);
  if (!m) return 'write one port (443) or a range ("8000-8099")';
  const lo = Number(m[1]);
  const hi = m[2] === undefined ? lo : Number(m[2]);
  if (!isPort(lo) || !isPort(hi)) return 'a port is an integer from 0 to 65535';
  if (hi < lo) return `the range runs backwards (${lo} > ${hi})`;
  return { lo, hi };
}

/** An address block as four big-endian 32-bit words and masks (IPv4: the first word only). */
export interface CompiledCidr {
  v6: boolean;
  words: Uint32Array;
  masks: Uint32Array;
}

function ipv6Words(text: string): Uint32Array {
  // `isIPv6` has accepted it: at most one "::", groups of hex, maybe a dotted IPv4 tail.
  let s = text;
  const tail: number[] = [];
  const dotted = /(\d+\.\d+\.\d+\.\d+)$/.exec(s);
  if (dotted) {
    const [a, b, c, d] = dotted[1].split('.').map(Number);
    tail.push((a << 8) | b, (c << 8) | d);
    s = s.slice(0, s.length - dotted[1].length);
    if (s.endsWith(':') && !s.endsWith('::')) s = s.slice(0, -1);
  }
  const [head, rest] = s.includes('::') ? s.split('::') : [s, undefined];
  const groups = (part: string | undefined) => (part ? part.split(':').filter((g) => g !== '').map((g) => parseInt(g, 16)) : []);
  const front = groups(head);
  const back = [...groups(rest), ...tail];
  const all = rest === undefined && !s.includes('::') ? [...front, ...tail] : [...front, ...new Array(8 - front.length - back.length).fill(0), ...back];
  const words = new Uint32Array(4);
  for (let i = 0; i < 4; i++) words[i] = ((all[2 * i] << 16) | all[2 * i + 1]) >>> 0;
  return words;
}

/** A CIDR as words and masks, or the reason it is not one. Host bits must be zero (as `ip route` wants). */
export function parseCidr(v: unknown): CompiledCidr | string {
  if (typeof v !== 'string') return 'not a string';
  const slash = v.indexOf('/');
  const addr = slash < 0 ? v : v.slice(0, slash);
  const v6 = isIPv6(addr);
  if (!v6 && !isIPv4(addr)) return `${JSON.stringify(addr)} is not an IPv4 or IPv6 address`;
  const maxBits = v6 ? 128 : 32;
  const lenText = slash < 0 ? String(maxBits) : v.slice(slash + 1);
  if (!/^\d{1,3}$/.test(lenText) || Number(lenText) > maxBits) return `the prefix length must be 0 to ${maxBits}`;
  const bits = Number(lenText);
  const words = v6 ? ipv6Words(addr) : Uint32Array.of(addr.split('.').reduce((w, o) => ((w << 8) | Number(o)) >>> 0, 0), 0, 0, 0);
  const masks = new Uint32Array(4);
  for (let i = 0; i < 4; i++) {
    const left = Math.max(0, Math.min(32, bits - 32 * i));
    masks[i] = left === 0 ? 0 : (0xffffffff << (32 - left)) >>> 0;
  }
  for (let i = 0; i < 4; i++) {
    if ((words[i] & ~masks[i]) >>> 0 !== 0) return `host bits are set after /${bits} (write the block's first address)`;
  }
  return { v6, words, masks };
}

interface CompiledRule {
  /** 0: any protocol. Else IpProto.TCP, IpProto.UDP, or IpProto.ICMP standing for both ICMPs. */
  proto: number;
  hasPort: boolean;
  portLo: number;
  portHi: number;
  cidr: CompiledCidr | null;
  action: FlowPolicyAction;
}

const PROTO_NUMBER: Record<FlowPolicyProtocol, number> = { any: 0, tcp: IpProto.TCP, udp: IpProto.UDP, icmp: IpProto.ICMP };

/** The compiled table. `match` is called once per new flow. */
export class FlowPolicyTable {
  private readonly rules: CompiledRule[];
  /** Whether some rule keeps frames from the backup: only then does ingress judge datagrams. */
  readonly dropsBackup: boolean;

  /** `rules` must have passed `flowPolicyRuleProblem` (the config rules do it). */
  constructor(rules: readonly FlowPolicyRule[]) {
    this.rules = rules.map((r) => {
      const port = r.port === undefined ? null : parsePortRange(r.port);
      const cidr = r.cidr === undefined ? null : parseCidr(r.cidr);
      if (typeof port === 'string' || typeof cidr === 'string') throw new Error(`flow policy rule not validated: ${JSON.stringify(r)}`);
      return { proto: PROTO_NUMBER[r.protocol ?? 'any'], hasPort: port !== null, portLo: port?.lo ?? 0, portHi: port?.hi ?? 65535, cidr, action: r.action };
    });
    this.dropsBackup = this.rules.some((r) => r.action === 'drop-backup-only');
  }

  get empty(): boolean {
    return this.rules.length === 0;
  }

  /**
   * The action for a flow whose frame `f` went `dir` (ingress: client → VM).
   * Fragments have no ports: only rules without one match them.
   */
  match(f: DecodedFrame, dir: 'ingress' | 'egress'): FlowPolicyAction {
    if (this.rules.length === 0 || (f.l3 !== 'ipv4' && f.l3 !== 'ipv6')) return 'compare';
    const v6 = f.l3 === 'ipv6';
    let proto = 0;
    let vmPort = -1;
    if (f.l4 === 'tcp' && !f.fragment) {
      proto = IpProto.TCP;
      vmPort = dir === 'ingress' ? f.tcp.dstPort : f.tcp.srcPort;
    } else if (f.l4 === 'udp' && !f.fragment) {
      proto = IpProto.UDP;
      vmPort = dir === 'ingress' ? f.udp.dstPort : f.udp.srcPort;
    } else if (f.l4 === 'icmp' || f.l4 === 'icmpv6') {
      proto = IpProto.ICMP;
    }
    // The client's address: the source going in, the destination coming out.
    const at = f.l3Offset + (v6 ? 8 : 12) + (dir === 'ingress' ? 0 : v6 ? 16 : 4);
    const buf = f.buf;
    for (const r of this.rules) {
      if (r.proto !== 0 && r.proto !== proto) continue;
      if (r.hasPort && (vmPort < r.portLo || vmPort > r.portHi)) continue;
      const c = r.cidr;
      if (c) {
        if (c.v6 !== v6) continue;
        if (((buf.readUInt32BE(at) & c.masks[0]) >>> 0) !== c.words[0]) continue;
        if (v6 && !(((buf.readUInt32BE(at + 4) & c.masks[1]) >>> 0) === c.words[1]
          && ((buf.readUInt32BE(at + 8) & c.masks[2]) >>> 0) === c.words[2]
          && ((buf.readUInt32BE(at + 12) & c.masks[3]) >>> 0) === c.words[3])) continue;
      }
      return r.action;
    }
    return 'compare';
  }
}

/**
 * What is wrong with one rule as a whole (its keys one by one are checked by
 * the setting rules): null when nothing is. `key` names the key at fault.
 */
export function flowPolicyRuleProblem(r: FlowPolicyRule): { key: string; detail: string } | null {
  if (r.action === undefined) return { key: 'action', detail: `is required: one of ${FLOW_POLICY_ACTIONS.map((a) => JSON.stringify(a)).join(', ')}` };
  if (r.port !== undefined && r.protocol === 'icmp') return { key: 'port', detail: 'ICMP has no ports: drop "port" or use protocol "tcp", "udp" or "any"' };
  return null;
}
