/**
 * Sharding the data plane by flow: which of N workers takes a frame.
 *
 * Every worker opens its own AF_PACKET socket on each of the three ports,
 * with a classic BPF filter (SO_ATTACH_FILTER) that accepts only its shard's
 * frames (a split-ring port's two sockets: the shard filter, then the ring's
 * length test, composed by andFilters). The kernel offers each frame to
 * every socket; each filter runs a few dozen instructions and all but one
 * drop it before it is copied.
 *
 * The shard of a frame is symmetric in its endpoints: the XOR of the two
 * addresses and the XOR of the two ports, folded, mixed by a multiplication and taken modulo N. So both
 * directions of a connection, and the primary's and the backup's answers
 * (clones: same addresses, same ports), land in the same worker, which can
 * own that flow's whole state. What the hash covers:
 *
 *   - IPv4 and IPv6, behind up to two 802.1Q/802.1ad tags or none (the
 *     kernel may have moved the outer tag out of the frame before a packet
 *     socket sees it: the filter then finds the ethertype one tag earlier);
 *   - TCP, UDP and SCTP ports, when the ports are at a fixed place: not for
 *     IPv4 fragments (flags MF or an offset), not behind IPv6 extension
 *     headers. Those frames hash on the addresses alone, so every fragment
 *     of a datagram goes to one worker, though not necessarily the one its
 *     unfragmented siblings go to;
 *   - the identifier of ICMP and ICMPv6 echo requests and replies, as if it
 *     were a port: a ping and its answers meet in one worker, and the
 *     worker that probes a silent primary picks an identifier whose reply
 *     comes back to it (failover/frames.ts, probeEchoId). Other ICMP
 *     messages hash on the addresses alone;
 *   - anything else (ARP, other ethertypes): worker 0.
 *
 * Why per-socket filters and not PACKET_FANOUT: a fanout group picks the
 * member by its position in the group, and a member that leaves is replaced
 * by the last one. Reopening one worker's socket on an interface (a backup
 * moved to a new port, a fresh socket after a COLO checkpoint) would then
 * reorder the group and move flows between workers. A filter names its
 * shard; any socket can be closed and reopened alone.
 *
 * `shardOf` is the same function in TypeScript, for tests.
 */

/** struct sock_filter: code (u16), jt (u8), jf (u8), k (u32), native byte order. */
const INSN_BYTES = 8;

// Classic BPF opcodes (linux/bpf_common.h, linux/filter.h).
const BPF_LD = 0x00, BPF_LDX = 0x01, BPF_ST = 0x02, BPF_STX = 0x03, BPF_ALU = 0x04, BPF_JMP = 0x05, BPF_RET = 0x06, BPF_MISC = 0x07;
const BPF_W = 0x00, BPF_H = 0x08, BPF_B = 0x10;
const BPF_IMM = 0x00, BPF_ABS = 0x20, BPF_IND = 0x40, BPF_MEM = 0x60, BPF_LEN = 0x80;
const BPF_AND = 0x50, BPF_LSH = 0x60, BPF_RSH = 0x70, BPF_ADD = 0x00, BPF_XOR = 0xa0, BPF_MOD = 0x90, BPF_MUL = 0x20;
const BPF_JA = 0x00, BPF_JEQ = 0x10, BPF_JGT = 0x20;
const BPF_K = 0x00, BPF_X = 0x08;
const BPF_TAX = 0x00;

const ETHERTYPE_IPV4 = 0x0800, ETHERTYPE_IPV6 = 0x86dd, ETHERTYPE_VLAN = 0x8100, ETHERTYPE_QINQ = 0x88a8;
const PORTED = [6, 17, 132]; // TCP, UDP, SCTP
const ICMP = 1, ICMPV6 = 58;
/** Echo request and reply types: ICMP 8 and 0, ICMPv6 128 and 129. Their identifier counts as a port. */
const ECHO_TYPES: Record<number, readonly number[]> = { [ICMP]: [8, 0], [ICMPV6]: [128, 129] };

/** Largest worker count a filter is made for. */
export const MAX_SHARDS = 64;

export class ShardError extends Error {}

/** Knuth's multiplicative constant (2^32 / the golden ratio, odd). */
const MIX = 0x9e3779b1;

/**
 * The 32-bit mix both the filter and shardOf end with: the folds, then a
 * multiplication whose upper half depends on every bit below it. The folds
 * alone sent connections from one client to one server, whose ports Linux
 * picks close together and even (connect() prefers even ports), all to
 * one worker of two: 8 downloads out of 8 in the first run of `--workers 2`.
 */
function mix(h: number): number {
  h = (h ^ (h >>> 16)) >>> 0;
  h = (h ^ (h >>> 8)) >>> 0;
  return Math.imul(h, MIX) >>> 16;
}

/** The worker (0 … count − 1) that takes `frame`, as the filters of `shardFilter(count, …)` decide. */
export function shardOf(frame: Uint8Array, count: number): number {
  if (count <= 1) return 0;
  const dv = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  const u8 = (at: number) => (at < frame.length ? frame[at] : -1);
  const u16 = (at: number) => (at + 2 <= frame.length ? dv.getUint16(at) : -1);
  const u32 = (at: number) => (at + 4 <= frame.length ? dv.getUint32(at) : -1);
  // A load past the end makes the kernel's filter return 0, in every worker: "no worker" (-1).
  let type = u16(12);
  if (type < 0) return -1;
  let tag = 0;
  // Up to two tags (802.1ad outside 802.1Q): the kernel may have moved the outer one out of the frame
  // before a packet socket sees it, so the inner ethertype must be found either way.
  while (tag < 8 && (type === ETHERTYPE_VLAN || type === ETHERTYPE_QINQ)) {
    tag += 4;
    type = u16(12 + tag);
    if (type < 0) return -1;
  }
  const l3 = 14 + tag;
  let h: number;
  if (type === ETHERTYPE_IPV4) {
    const s = u32(l3 + 12), d = u32(l3 + 16);
    if (s < 0 || d < 0) return -1;
    h = (s ^ d) >>> 0;
    const frag = u16(l3 + 6);
    if (frag < 0) return -1;
    if ((frag & 0x3fff) === 0) {
      const proto = u8(l3 + 9);
      if (proto < 0) return -1;
      const l4 = l3 + (frame[l3] & 0xf) * 4;
      if (PORTED.includes(proto)) {
        const ports = u32(l4);
        if (ports < 0) return -1;
        h = (h ^ ((ports >>> 16) ^ (ports & 0xffff))) >>> 0;
      } else if (proto === ICMP) {
        const id = echoId(u8, u32, l4, ICMP);
        if (id < 0) return -1;
        h = (h ^ id) >>> 0;
      }
    }
  } else if (type === ETHERTYPE_IPV6) {
    h = 0;
    for (let w = 0; w < 8; w++) {
      const v = u32(l3 + 8 + 4 * w);
      if (v < 0) return -1;
      h = (h ^ v) >>> 0;
    }
    const next = u8(l3 + 6);
    if (next < 0) return -1;
    if (PORTED.includes(next)) {
      const ports = u32(l3 + 40);
      if (ports < 0) return -1;
      h = (h ^ ((ports >>> 16) ^ (ports & 0xffff))) >>> 0;
    } else if (next === ICMPV6) {
      const id = echoId(u8, u32, l3 + 40, ICMPV6);
      if (id < 0) return -1;
      h = (h ^ id) >>> 0;
    }
  } else {
    return 0;
  }
  return mix(h) % count;
}

/** An echo request's or reply's identifier (0 for other ICMP messages); -1: past the frame's end. */
function echoId(u8: (at: number) => number, u32: (at: number) => number, l4: number, proto: number): number {
  const type = u8(l4);
  if (type < 0) return -1;
  if (!ECHO_TYPES[proto].includes(type)) return 0;
  const word = u32(l4 + 4);
  return word < 0 ? -1 : word >>> 16;
}

type Insn = { code: number; jt: number | string; jf: number | string; k: number; label?: string };

/** A tiny classic-BPF assembler: instructions with optional labels; jumps name labels, resolved to offsets (also SplitRingPort's length filters). */
export class BpfProgram {
  private readonly insns: Insn[] = [];
  private pendingLabel: string | undefined;

  label(name: string): this {
    this.pendingLabel = name;
    return this;
  }

  op(code: number, k = 0, jt: number | string = 0, jf: number | string = 0): this {
    this.insns.push({ code, jt, jf, k: k >>> 0, label: this.pendingLabel });
    this.pendingLabel = undefined;
    return this;
  }

  /** Jump to `to` if A == k, else to `otherwise` (a label, or 0: the next instruction). */
  jeq(k: number, to: string, otherwise: string | 0 = 0): this {
    return this.op(BPF_JMP | BPF_JEQ | BPF_K, k, to, otherwise);
  }

  ja(to: string): this {
    return this.op(BPF_JMP | BPF_JA, 0, to, 0);
  }

  /** A ^= M[slot] (X is clobbered). */
  xorMem(slot: number): this {
    return this.op(BPF_LDX | BPF_MEM, slot).op(BPF_ALU | BPF_XOR | BPF_X);
  }

  assemble(): Buffer {
    const at = new Map<string, number>();
    this.insns.forEach((i, n) => { if (i.label) at.set(i.label, n); });
    const out = Buffer.alloc(this.insns.length * INSN_BYTES);
    this.insns.forEach((i, n) => {
      const target = (j: number | string, field: string): number => {
        if (typeof j === 'number') return j;
        const to = at.get(j);
        if (to === undefined) throw new ShardError(`shard filter: no label ${j}`);
        const off = to - n - 1;
        if (off < 0 || off > (field === 'k' ? 0xffffffff : 255)) throw new ShardError(`shard filter: jump to ${j} out of range`);
        return off;
      };
      let k = i.k;
      let jt = i.jt, jf = i.jf;
      if (i.code === (BPF_JMP | BPF_JA)) {
        k = target(i.jt, 'k');
        jt = 0;
        jf = 0;
      }
      out.writeUInt16LE(i.code, n * INSN_BYTES);
      out.writeUInt8(target(jt, 'jt'), n * INSN_BYTES + 2);
      out.writeUInt8(target(jf, 'jf'), n * INSN_BYTES + 3);
      out.writeUInt32LE(k >>> 0, n * INSN_BYTES + 4);
    });
    return out;
  }
}

/**
 * The classic BPF program (struct sock_filter[], host byte order: little
 * endian here) that accepts the frames of worker `index` out of `count`:
 * those `shardOf(frame, count) === index`. Scratch memory: M[0] the tags'
 * length (0, 4 or 8), M[1] the hash, M[2] and M[3] temporaries.
 */
export function shardFilter(count: number, index: number): Buffer {
  if (!Number.isInteger(count) || count < 2 || count > MAX_SHARDS) throw new ShardError(`shard count must be 2 to ${MAX_SHARDS}, not ${count}`);
  if (!Number.isInteger(index) || index < 0 || index >= count) throw new ShardError(`shard index must be 0 to ${count - 1}, not ${index}`);
  const p = new BpfProgram();
  const ldInd = (size: number, k: number) => p.op(BPF_LD | size | BPF_IND, k);
  const foldPorts = () => p
    // A = sport << 16 | dport  →  A = sport ^ dport, then into the hash.
    .op(BPF_ST, 2).op(BPF_ALU | BPF_RSH | BPF_K, 16).op(BPF_MISC | BPF_TAX)
    .op(BPF_LD | BPF_MEM, 2).op(BPF_ALU | BPF_AND | BPF_K, 0xffff).op(BPF_ALU | BPF_XOR | BPF_X)
    .xorMem(1).op(BPF_ST, 1);
  p.op(BPF_LD | BPF_H | BPF_ABS, 12)
    .jeq(ETHERTYPE_VLAN, 'tagged').jeq(ETHERTYPE_QINQ, 'tagged')
    .op(BPF_LDX | BPF_IMM, 0).ja('l3');
  p.label('tagged').op(BPF_LD | BPF_H | BPF_ABS, 16).op(BPF_LDX | BPF_IMM, 4)
    .jeq(ETHERTYPE_VLAN, 'tagged2').jeq(ETHERTYPE_QINQ, 'tagged2').ja('l3');
  p.label('tagged2').op(BPF_LD | BPF_H | BPF_ABS, 20).op(BPF_LDX | BPF_IMM, 8);
  p.label('l3').op(BPF_STX, 0)
    .jeq(ETHERTYPE_IPV4, 'v4').jeq(ETHERTYPE_IPV6, 'v6').ja('other');
  // X = the tags' length (0, 4 or 8), kept in M[0]. IPv4: addresses at 12 and 16 of the header (26 and 30 of an untagged frame).
  p.label('v4');
  ldInd(BPF_W, 26).op(BPF_ST, 1);
  ldInd(BPF_W, 30).xorMem(1).op(BPF_ST, 1);
  p.op(BPF_LDX | BPF_MEM, 0);
  ldInd(BPF_H, 20).op(BPF_ALU | BPF_AND | BPF_K, 0x3fff).jeq(0, 'v4proto', 'mix');
  p.label('v4proto');
  ldInd(BPF_B, 23);
  for (const proto of PORTED) p.jeq(proto, 'v4ports');
  p.jeq(ICMP, 'v4icmp');
  p.ja('mix');
  // X = the tags' length + the IPv4 header's: the L4 header is at X + 14.
  const toL4 = () => ldInd(BPF_B, 14).op(BPF_ALU | BPF_AND | BPF_K, 0xf).op(BPF_ALU | BPF_LSH | BPF_K, 2).op(BPF_ALU | BPF_ADD | BPF_X).op(BPF_MISC | BPF_TAX);
  p.label('v4ports');
  toL4();
  ldInd(BPF_W, 14);
  foldPorts();
  p.ja('mix');
  // An echo request or reply whose L4 header is at X + l4: its identifier (the word's upper half) as the ports.
  const echoIdentifier = (proto: number, l4: number, echo: string) => {
    ldInd(BPF_B, l4);
    for (const type of ECHO_TYPES[proto]) p.jeq(type, echo);
    p.ja('mix');
    p.label(echo);
    ldInd(BPF_W, l4 + 4).op(BPF_ALU | BPF_AND | BPF_K, 0xffff0000);
    foldPorts();
    p.ja('mix');
  };
  p.label('v4icmp');
  toL4();
  echoIdentifier(ICMP, 14, 'v4echo');
  // IPv6: the 8 words of both addresses, from 8 of the header (22 of an untagged frame).
  p.label('v6');
  ldInd(BPF_W, 22).op(BPF_ST, 1);
  for (let w = 1; w < 8; w++) {
    p.op(BPF_LDX | BPF_MEM, 0);
    ldInd(BPF_W, 22 + 4 * w).xorMem(1).op(BPF_ST, 1);
  }
  p.op(BPF_LDX | BPF_MEM, 0);
  ldInd(BPF_B, 20);
  for (const proto of PORTED) p.jeq(proto, 'v6ports');
  p.jeq(ICMPV6, 'v6icmp');
  p.ja('mix');
  p.label('v6icmp');
  echoIdentifier(ICMPV6, 54, 'v6echo');
  p.label('v6ports').op(BPF_LDX | BPF_MEM, 0);
  ldInd(BPF_W, 54);
  foldPorts();
  p.label('mix').op(BPF_LD | BPF_MEM, 1)
    .op(BPF_ST, 3).op(BPF_ALU | BPF_RSH | BPF_K, 16).op(BPF_MISC | BPF_TAX).op(BPF_LD | BPF_MEM, 3).op(BPF_ALU | BPF_XOR | BPF_X)
    .op(BPF_ST, 3).op(BPF_ALU | BPF_RSH | BPF_K, 8).op(BPF_MISC | BPF_TAX).op(BPF_LD | BPF_MEM, 3).op(BPF_ALU | BPF_XOR | BPF_X)
    .op(BPF_ALU | BPF_MUL | BPF_K, MIX).op(BPF_ALU | BPF_RSH | BPF_K, 16)
    .op(BPF_ALU | BPF_MOD | BPF_K, count)
    .jeq(index, 'accept', 'drop');
  p.label('other').op(BPF_LD | BPF_IMM, 0).jeq(index, 'accept', 'drop');
  p.label('accept').op(BPF_RET | BPF_K, 0xffffffff);
  p.label('drop').op(BPF_RET | BPF_K, 0);
  return p.assemble();
}

/** Linux's limit on a classic BPF program's length (linux/bpf_common.h BPF_MAXINSNS). */
export const BPF_MAXINSNS = 4096;

const BPF_RET_K = BPF_RET | BPF_K, BPF_RET_A = BPF_RET | 0x10;

type RawInsn = { code: number; jt: number; jf: number; k: number };

/** The instructions of a program, checked for what composing it relies on (the kernel checks the rest when it is attached): whole, 1 to BPF_MAXINSNS, jumps inside it, a return last. */
function decodeProgram(program: Uint8Array, which: string): RawInsn[] {
  const bytes = Buffer.from(program.buffer, program.byteOffset, program.byteLength);
  const n = bytes.length / INSN_BYTES;
  if (!Number.isInteger(n) || n < 1 || n > BPF_MAXINSNS) throw new ShardError(`${which} filter: ${bytes.length} bytes is not 1 to ${BPF_MAXINSNS} whole instructions`);
  const insns: RawInsn[] = [];
  for (let at = 0; at < n; at++) {
    const i = { code: bytes.readUInt16LE(at * INSN_BYTES), jt: bytes.readUInt8(at * INSN_BYTES + 2), jf: bytes.readUInt8(at * INSN_BYTES + 3), k: bytes.readUInt32LE(at * INSN_BYTES + 4) };
    if ((i.code & 0x07) === BPF_JMP) {
      const far = (i.code & 0xf0) === BPF_JA ? i.k : Math.max(i.jt, i.jf);
      if (at + 1 + far >= n) throw new ShardError(`${which} filter: the jump at ${at} leaves the program`);
    }
    insns.push(i);
  }
  const last = insns[n - 1].code;
  if (last !== BPF_RET_K && last !== BPF_RET_A) throw new ShardError(`${which} filter: does not end with a return`);
  return insns;
}

/** Copies `i` (instruction `at` of a program whose instructions are labelled `${prefix}${n}`) into `p`, its jumps by label. */
function copyInsn(p: BpfProgram, i: RawInsn, at: number, prefix: string): void {
  const to = (offset: number) => `${prefix}${at + 1 + offset}`;
  if ((i.code & 0x07) !== BPF_JMP) p.op(i.code, i.k, i.jt, i.jf);
  else if ((i.code & 0xf0) === BPF_JA) p.ja(to(i.k));
  else p.op(i.code, i.k, to(i.jt), to(i.jf));
}

/**
 * A classic BPF program that accepts a frame when `first` and `second` both
 * do: a worker's shard and a split ring's length class in one socket filter
 * (splitRingOptions). `first` runs as it is, except that each of its
 * accepting returns (RET k with k != 0; RET A when A != 0) goes on to
 * `second`. Each return is replaced by one instruction, so every jump of
 * `first` keeps its offset; the new jumps are JAs (32-bit offsets), a RET
 * A's through a three-instruction test placed after `first`. `second` starts
 * with A and X at 0, as the kernel starts a program; its scratch memory needs
 * no reset (the kernel refuses a program that reads M[i] before writing it).
 * When it accepts, the composition returns what `second` returns: that snap
 * length, not the smaller of the two (the filters here accept whole frames).
 * Throws a ShardError if the result is longer than BPF_MAXINSNS.
 */
export function andFilters(first: Uint8Array, second: Uint8Array): Buffer {
  const a = decodeProgram(first, 'first'), b = decodeProgram(second, 'second');
  const p = new BpfProgram();
  let tests = 0;
  a.forEach((i, at) => {
    p.label(`a${at}`);
    if (i.code === BPF_RET_K && i.k !== 0) p.ja('second');
    else if (i.code === BPF_RET_A) p.ja(`a-test${tests++}`);
    else copyInsn(p, i, at, 'a');
  });
  // A RET A accepts when A != 0: fall to the drop only when A == 0.
  for (let t = 0; t < tests; t++) p.label(`a-test${t}`).op(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 1).op(BPF_RET_K, 0).ja('second');
  p.label('second').op(BPF_LD | BPF_IMM, 0).op(BPF_LDX | BPF_IMM, 0);
  b.forEach((i, at) => copyInsn(p.label(`b${at}`), i, at, 'b'));
  const out = p.assemble();
  if (out.length / INSN_BYTES > BPF_MAXINSNS) throw new ShardError(`the filters together are ${out.length / INSN_BYTES} instructions, more than the kernel's ${BPF_MAXINSNS}`);
  return out;
}

/**
 * Runs a classic BPF program on `frame` the way the kernel's interpreter
 * does for socket filters (a load past the end returns 0): the return value.
 * For tests and for checking a program before it is attached.
 */
export function runFilter(program: Buffer, frame: Uint8Array): number {
  const n = program.length / INSN_BYTES;
  const mem = new Uint32Array(16);
  let a = 0, x = 0;
  const dv = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  const load = (size: number, at: number): number | null => {
    const len = size === BPF_W ? 4 : size === BPF_H ? 2 : 1;
    if (at < 0 || at + len > frame.length) return null;
    return size === BPF_W ? dv.getUint32(at) : size === BPF_H ? dv.getUint16(at) : frame[at];
  };
  for (let pc = 0; pc < n; pc++) {
    const code = program.readUInt16LE(pc * INSN_BYTES);
    const jt = program.readUInt8(pc * INSN_BYTES + 2), jf = program.readUInt8(pc * INSN_BYTES + 3);
    const k = program.readUInt32LE(pc * INSN_BYTES + 4);
    const cls = code & 0x07;
    if (cls === BPF_LD || cls === BPF_LDX) {
      const mode = code & 0xe0, size = code & 0x18;
      let v: number | null;
      if (mode === BPF_IMM) v = k;
      else if (mode === BPF_MEM) v = mem[k & 15];
      else if (mode === BPF_ABS) v = load(size, k);
      else if (mode === BPF_IND) v = load(size, x + k);
      else if (mode === BPF_LEN) v = frame.length;
      else throw new ShardError(`runFilter: load mode ${mode.toString(16)} not supported`);
      if (v === null) return 0;
      if (cls === BPF_LD) a = v >>> 0; else x = v >>> 0;
    } else if (cls === BPF_ST) mem[k & 15] = a;
    else if (cls === BPF_STX) mem[k & 15] = x;
    else if (cls === BPF_ALU) {
      const src = (code & BPF_X) ? x : k;
      switch (code & 0xf0) {
        case BPF_ADD: a = (a + src) >>> 0; break;
        case BPF_AND: a = (a & src) >>> 0; break;
        case BPF_LSH: a = (a << src) >>> 0; break;
        case BPF_RSH: a = a >>> src; break;
        case BPF_XOR: a = (a ^ src) >>> 0; break;
        case BPF_MUL: a = Math.imul(a, src) >>> 0; break;
        case BPF_MOD: if (src === 0) return 0; a = a % src; break;
        default: throw new ShardError(`runFilter: ALU op ${(code & 0xf0).toString(16)} not supported`);
      }
    } else if (cls === BPF_JMP) {
      if ((code & 0xf0) === BPF_JA) pc += k;
      else if ((code & 0xf0) === BPF_JEQ) pc += a === ((code & BPF_X) ? x : k) ? jt : jf;
      else if ((code & 0xf0) === BPF_JGT) pc += a > ((code & BPF_X) ? x : k) >>> 0 ? jt : jf;
      else throw new ShardError(`runFilter: jump ${(code & 0xf0).toString(16)} not supported`);
    } else if (cls === BPF_RET) return (code & 0x18) === 0x10 ? a : k;
    else if (cls === BPF_MISC) {
      if ((code & 0xf8) === BPF_TAX) x = a; else a = x;
    }
  }
  throw new ShardError('runFilter: fell off the end of the program');
}
