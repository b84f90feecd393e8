/**
 * fixture-check: an independent, deliberately simple look at a recorded
 * fixture (client.pcap, primary.pcap, backup.pcap), used by the recorder to
 * decide whether a recording shows what its scenario promises. It is not the
 * replay engine (lib/replay) and shares no code with it, so a bug in one does
 * not hide the same bug in the other.
 *
 * In:  a fixture folder (and `client-rx.pcap` when the scenario recorded
 *      what the client received).
 * Out: frame counts per file, frames that are not the scenario's traffic,
 *      and a verdict: per VM flow, the primary's and the backup's byte
 *      streams (TCP: by offset from the ISN, retransmissions collapsed;
 *      SYN/FIN/RST as events) or datagrams (UDP) compared; the first
 *      mismatch in the primary's time order. With `client-rx.pcap`, the
 *      server → client streams the client received, for failover fixtures:
 *      the primary's stream stops at its death, the backup's goes on, and
 *      what the client got must be the backup's whole stream.
 *
 * Usage: node dist/scripts/fixture-check.js fixtures/<name> [...]
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

export interface CapturedFrame {
  readonly timeUs: number;
  readonly bytes: Buffer;
}

export class FixtureFormatError extends Error {
  constructor(readonly file: string, detail: string) {
    super(`${file}: ${detail}`);
    this.name = 'FixtureFormatError';
  }
}

/** Classic pcap (µs or ns, either byte order), Ethernet link type only. */
export function readPcapFile(file: string): CapturedFrame[] {
  const buf = fs.readFileSync(file);
  if (buf.length < 24) throw new FixtureFormatError(file, 'shorter than a pcap header');
  const magicLe = buf.readUInt32LE(0);
  let le: boolean;
  let nanos: boolean;
  if (magicLe === 0xa1b2c3d4 || magicLe === 0xa1b23c4d) {
    le = true;
    nanos = magicLe === 0xa1b23c4d;
  } else if (buf.readUInt32BE(0) === 0xa1b2c3d4 || buf.readUInt32BE(0) === 0xa1b23c4d) {
    le = false;
    nanos = buf.readUInt32BE(0) === 0xa1b23c4d;
  } else {
    throw new FixtureFormatError(file, `not a classic pcap file (magic 0x${magicLe.toString(16)})`);
  }
  const u32 = (off: number): number => (le ? buf.readUInt32LE(off) : buf.readUInt32BE(off));
  if (u32(20) !== 1) throw new FixtureFormatError(file, `link type ${u32(20)}, expected Ethernet (1)`);
  const frames: CapturedFrame[] = [];
  let off = 24;
  while (off < buf.length) {
    if (off + 16 > buf.length) throw new FixtureFormatError(file, `truncated record header at ${off}`);
    const sec = u32(off);
    const frac = u32(off + 4);
    const capLen = u32(off + 8);
    if (off + 16 + capLen > buf.length) throw new FixtureFormatError(file, `truncated frame at ${off}`);
    frames.push({ timeUs: sec * 1e6 + (nanos ? Math.floor(frac / 1000) : frac), bytes: buf.subarray(off + 16, off + 16 + capLen) });
    off += 16 + capLen;
  }
  return frames;
}

export interface DecodedSegment {
  readonly family: 4 | 6;
  readonly proto: 'tcp' | 'udp' | 'icmp' | 'icmp6' | 'other';
  readonly src: string;
  readonly dst: string;
  readonly srcPort: number;
  readonly dstPort: number;
  readonly seq: number;
  readonly flags: number;
  readonly payload: Buffer;
  /** For `other` and ICMP: a short label (ICMPv6 type, EtherType…). */
  readonly label: string;
}

export const TCP_FIN = 0x01;
export const TCP_SYN = 0x02;
export const TCP_RST = 0x04;
export const TCP_ACK = 0x10;

/** RFC 5952 text form: the longest run of two or more zero words becomes `::`. */
function ipv6String(b: Buffer): string {
  const words: number[] = [];
  for (let i = 0; i < 16; i += 2) words.push(b.readUInt16BE(i));
  let bestStart = -1;
  let bestLen = 1;
  for (let i = 0; i < 8;) {
    let j = i;
    while (j < 8 && words[j] === 0) j++;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j === i ? i + 1 : j;
  }
  const hex = (ws: number[]): string => ws.map((w) => w.toString(16)).join(':');
  if (bestStart < 0) return hex(words);
  return `${hex(words.slice(0, bestStart))}::${hex(words.slice(bestStart + bestLen))}`;
}

/** Ethernet (+802.1Q) → IPv4/IPv6 (+extension headers) → TCP/UDP/ICMP. */
export function decodeFrame(frame: Buffer): DecodedSegment | { proto: 'non-ip'; label: string } {
  let off = 12;
  let etherType = frame.readUInt16BE(off);
  while (etherType === 0x8100 || etherType === 0x88a8) {
    off += 4;
    etherType = frame.readUInt16BE(off);
  }
  off += 2;
  let family: 4 | 6;
  let next: number;
  let src: string;
  let dst: string;
  let end: number;
  if (etherType === 0x0800) {
    family = 4;
    const ihl = (frame[off] & 0x0f) * 4;
    end = off + frame.readUInt16BE(off + 2);
    next = frame[off + 9];
    src = [...frame.subarray(off + 12, off + 16)].join('.');
    dst = [...frame.subarray(off + 16, off + 20)].join('.');
    if ((frame.readUInt16BE(off + 6) & 0x3fff) !== 0) {
      return { family, proto: 'other', src, dst, srcPort: 0, dstPort: 0, seq: 0, flags: 0, payload: Buffer.alloc(0), label: 'IPv4 fragment' };
    }
    off += ihl;
  } else if (etherType === 0x86dd) {
    family = 6;
    end = off + 40 + frame.readUInt16BE(off + 4);
    next = frame[off + 6];
    src = ipv6String(frame.subarray(off + 8, off + 24));
    dst = ipv6String(frame.subarray(off + 24, off + 40));
    off += 40;
    while (next === 0 || next === 43 || next === 60) {
      const nh = frame[off];
      off += (frame[off + 1] + 1) * 8;
      next = nh;
    }
  } else {
    return { proto: 'non-ip', label: etherType === 0x0806 ? 'ARP' : `EtherType 0x${etherType.toString(16)}` };
  }
  if (next === 6) {
    const dataOff = (frame[off + 12] >> 4) * 4;
    return {
      family, proto: 'tcp', src, dst, srcPort: frame.readUInt16BE(off), dstPort: frame.readUInt16BE(off + 2),
      seq: frame.readUInt32BE(off + 4), flags: frame[off + 13], payload: frame.subarray(off + dataOff, end), label: 'TCP',
    };
  }
  if (next === 17) {
    return {
      family, proto: 'udp', src, dst, srcPort: frame.readUInt16BE(off), dstPort: frame.readUInt16BE(off + 2),
      seq: 0, flags: 0, payload: frame.subarray(off + 8, end), label: 'UDP',
    };
  }
  const proto = next === 1 ? 'icmp' : next === 58 ? 'icmp6' : 'other';
  const label = next === 58 ? `ICMPv6 type ${frame[off]}` : next === 1 ? `ICMP type ${frame[off]}` : `IP protocol ${next}`;
  return { family, proto, src, dst, srcPort: 0, dstPort: 0, seq: 0, flags: 0, payload: Buffer.alloc(0), label };
}

/** Server → client byte stream of one TCP flow as one VM sent it. */
interface VmTcpStream {
  isn: number | undefined;
  /** Bytes by offset from ISN+1; the first copy of a byte wins (retransmissions collapse). */
  bytes: Map<number, number>;
  finOffset: number | undefined;
  rstOffset: number | undefined;
  /** Capture time of the frame that first carried each offset. */
  firstSeenUs: Map<number, number>;
  firstFrameUs: number;
}

interface VmDatagrams {
  payloads: Buffer[];
  timesUs: number[];
}

export interface FlowKeyParts {
  proto: 'tcp' | 'udp';
  vmPort: number;
  client: string;
  clientPort: number;
}

function flowKey(seg: DecodedSegment): string {
  return `${seg.proto} ${seg.srcPort} ${seg.dst} ${seg.dstPort}`;
}

function parseKey(key: string): FlowKeyParts {
  const [proto, vmPort, client, clientPort] = key.split(' ');
  return { proto: proto as 'tcp' | 'udp', vmPort: Number(vmPort), client, clientPort: Number(clientPort) };
}

interface VmOutput {
  tcp: Map<string, VmTcpStream>;
  udp: Map<string, VmDatagrams>;
}

function collectVmOutput(frames: readonly CapturedFrame[]): VmOutput {
  const out: VmOutput = { tcp: new Map(), udp: new Map() };
  for (const { timeUs, bytes } of frames) {
    const seg = decodeFrame(bytes);
    if (seg.proto === 'udp') {
      const key = flowKey(seg);
      const flow = out.udp.get(key) ?? { payloads: [], timesUs: [] };
      flow.payloads.push(Buffer.from(seg.payload));
      flow.timesUs.push(timeUs);
      out.udp.set(key, flow);
      continue;
    }
    if (seg.proto !== 'tcp') continue;
    const key = flowKey(seg);
    let flow = out.tcp.get(key);
    if (!flow) {
      flow = { isn: undefined, bytes: new Map(), finOffset: undefined, rstOffset: undefined, firstSeenUs: new Map(), firstFrameUs: timeUs };
      out.tcp.set(key, flow);
    }
    if (seg.flags & TCP_SYN) {
      flow.isn = seg.seq;
      continue;
    }
    if (flow.isn === undefined) {
      // A reset of a connection the VM never accepted (e.g. SYN to a closed port).
      if (seg.flags & TCP_RST) flow.rstOffset = 0;
      continue;
    }
    const start = (seg.seq - flow.isn - 1) | 0;
    for (let i = 0; i < seg.payload.length; i++) {
      if (!flow.bytes.has(start + i)) {
        flow.bytes.set(start + i, seg.payload[i]);
        flow.firstSeenUs.set(start + i, timeUs);
      }
    }
    if (seg.flags & TCP_FIN) flow.finOffset = start + seg.payload.length;
    if (seg.flags & TCP_RST && flow.rstOffset === undefined) flow.rstOffset = start;
  }
  return out;
}

/** The contiguous stream from offset 0 (a gap ends it). */
function contiguous(stream: VmTcpStream): Buffer {
  const bytes: number[] = [];
  while (stream.bytes.has(bytes.length)) bytes.push(stream.bytes.get(bytes.length) as number);
  return Buffer.from(bytes);
}

export interface Mismatch {
  readonly flow: FlowKeyParts;
  /**
   * `primary-stopped`: the primary's stream is a proper prefix of the
   * backup's and the primary never closed it (no FIN, no RST): it went
   * silent mid-stream, which is what a primary's death looks like.
   */
  readonly kind: 'bytes' | 'length' | 'primary-stopped' | 'fin' | 'rst' | 'backup-silent' | 'datagram' | 'datagram-count';
  /** TCP: offset in the server → client stream (0 = first byte after the SYN). UDP: datagram index. */
  readonly offset: number;
  /** The primary's bytes around the mismatch, as text (the line holding it for text protocols). */
  readonly primaryContext: string;
  readonly backupContext: string;
  /** When the primary sent the mismatching byte (ordering mismatches across flows). */
  readonly timeUs: number;
}

export interface FlowSummary {
  readonly flow: FlowKeyParts;
  readonly primaryBytes: number;
  readonly backupBytes: number;
  /** Index of "\r\n\r\n" + 4 in the primary's stream, for HTTP flows. */
  readonly httpHeaderLength?: number;
}

export interface FixtureReport {
  readonly dir: string;
  readonly frameCounts: Record<'client' | 'primary' | 'backup', number>;
  /** Frames that are neither TCP nor UDP between the lab's client and service, per file. */
  readonly otherFrames: Record<'client' | 'primary' | 'backup', string[]>;
  readonly flows: FlowSummary[];
  readonly mismatches: Mismatch[];
  /** From `client-rx.pcap` (what the client received), when the fixture has one; else absent. */
  readonly clientReceived?: ReceivedStream[];
}

/** The server → client stream of one TCP flow as the client received it. */
export interface ReceivedStream {
  readonly flow: FlowKeyParts;
  /** Contiguous bytes from offset 0 (relative to the SYN-ACK the client received). */
  readonly bytes: number;
  readonly sha256: string;
  /** Whether a FIN closed it right after those bytes. */
  readonly fin: boolean;
  /** Whether it equals, byte for byte, the backup's whole stream of the same flow. */
  readonly equalsBackupStream: boolean;
  /** Whether the primary's stream of the same flow is a prefix of it. */
  readonly primaryIsPrefix: boolean;
}

function lineAround(stream: Buffer, offset: number): string {
  if (offset >= stream.length) return '(end of stream)';
  // lastIndexOf with a negative start would search from the end.
  const from = offset === 0 ? 0 : Math.max(stream.lastIndexOf(0x0a, offset - 1) + 1, offset - 60);
  let to = stream.indexOf(0x0a, offset);
  to = to < 0 ? Math.min(stream.length, offset + 60) : Math.min(to + 1, offset + 60);
  return stream.subarray(from, to).toString('latin1').replace(/[^\x20-\x7e]/g, (c) => (c === '\n' ? '\\n' : c === '\r' ? '\\r' : '.'));
}

function compareTcp(key: string, primary: VmTcpStream, backup: VmTcpStream | undefined, mismatches: Mismatch[]): FlowSummary {
  const flow = parseKey(key);
  const p = contiguous(primary);
  const b = backup ? contiguous(backup) : Buffer.alloc(0);
  const headerEnd = flow.vmPort === 80 ? p.indexOf('\r\n\r\n') : -1;
  const summary: FlowSummary = {
    flow, primaryBytes: p.length, backupBytes: b.length, ...(headerEnd >= 0 ? { httpHeaderLength: headerEnd + 4 } : {}),
  };
  const at = (offset: number): number => primary.firstSeenUs.get(Math.min(offset, p.length - 1)) ?? primary.firstFrameUs;
  const push = (kind: Mismatch['kind'], offset: number): void => {
    mismatches.push({ flow, kind, offset, primaryContext: lineAround(p, offset), backupContext: lineAround(b, offset), timeUs: at(offset) });
  };
  if (!backup || backup.isn === undefined) {
    push('backup-silent', 0);
    return summary;
  }
  const common = Math.min(p.length, b.length);
  for (let i = 0; i < common; i++) {
    if (p[i] !== b[i]) {
      push('bytes', i);
      return summary;
    }
  }
  if (p.length < b.length && primary.finOffset === undefined && primary.rstOffset === undefined) push('primary-stopped', common);
  else if (p.length !== b.length) push('length', common);
  else if (primary.finOffset !== backup.finOffset) push('fin', common);
  else if ((primary.rstOffset === undefined) !== (backup.rstOffset === undefined)) push('rst', common);
  return summary;
}

function compareUdp(key: string, primary: VmDatagrams, backup: VmDatagrams | undefined, mismatches: Mismatch[]): FlowSummary {
  const flow = parseKey(key);
  const b = backup?.payloads ?? [];
  const summary: FlowSummary = {
    flow, primaryBytes: primary.payloads.reduce((n, d) => n + d.length, 0), backupBytes: b.reduce((n, d) => n + d.length, 0),
  };
  for (let i = 0; i < primary.payloads.length; i++) {
    if (i >= b.length) {
      mismatches.push({ flow, kind: 'datagram-count', offset: i, primaryContext: '', backupContext: '(none)', timeUs: primary.timesUs[i] });
      return summary;
    }
    if (!primary.payloads[i].equals(b[i])) {
      mismatches.push({ flow, kind: 'datagram', offset: i, primaryContext: primary.payloads[i].toString('hex'), backupContext: b[i].toString('hex'), timeUs: primary.timesUs[i] });
    }
  }
  if (b.length > primary.payloads.length) {
    mismatches.push({ flow, kind: 'datagram-count', offset: primary.payloads.length, primaryContext: '(none)', backupContext: '', timeUs: backup?.timesUs[primary.payloads.length] ?? 0 });
  }
  return summary;
}

function describeOther(frame: Buffer): string | undefined {
  const seg = decodeFrame(frame);
  if (seg.proto === 'tcp' || seg.proto === 'udp') return undefined;
  if (seg.proto === 'non-ip') return seg.label;
  return `${seg.src} > ${seg.dst} ${seg.label}`;
}

/**
 * The server → client TCP streams in a capture of what the client received
 * (`client-rx.pcap`), by flow, each as contiguous bytes from offset 0.
 */
export function receivedTcpStreams(frames: readonly CapturedFrame[]): Map<string, { bytes: Buffer; fin: boolean }> {
  const out = new Map<string, { bytes: Buffer; fin: boolean }>();
  for (const [key, stream] of collectVmOutput(frames).tcp) {
    if (stream.isn === undefined) continue;
    const bytes = contiguous(stream);
    out.set(key, { bytes, fin: stream.finOffset === bytes.length });
  }
  return out;
}

function sha256Hex(bytes: Buffer): string {
  return createHash('sha256').update(bytes).digest('hex');
}

function checkReceived(rxFile: string, p: VmOutput, b: VmOutput): ReceivedStream[] {
  const received: ReceivedStream[] = [];
  for (const [key, rx] of receivedTcpStreams(readPcapFile(rxFile))) {
    const backup = b.tcp.get(key);
    const primary = p.tcp.get(key);
    const backupBytes = backup ? contiguous(backup) : Buffer.alloc(0);
    const primaryBytes = primary ? contiguous(primary) : Buffer.alloc(0);
    received.push({
      flow: parseKey(key),
      bytes: rx.bytes.length,
      sha256: sha256Hex(rx.bytes),
      fin: rx.fin,
      equalsBackupStream: backupBytes.equals(rx.bytes),
      primaryIsPrefix: primaryBytes.length <= rx.bytes.length && primaryBytes.equals(rx.bytes.subarray(0, primaryBytes.length)),
    });
  }
  return received;
}

export function checkFixture(dir: string): FixtureReport {
  const read = (role: string): CapturedFrame[] => readPcapFile(path.join(dir, `${role}.pcap`));
  const client = read('client');
  const primary = read('primary');
  const backup = read('backup');
  const others = (frames: CapturedFrame[]): string[] => frames.map((f) => describeOther(f.bytes)).filter((d): d is string => d !== undefined);
  const p = collectVmOutput(primary);
  const b = collectVmOutput(backup);
  const mismatches: Mismatch[] = [];
  const flows: FlowSummary[] = [];
  for (const [key, stream] of p.tcp) flows.push(compareTcp(key, stream, b.tcp.get(key), mismatches));
  for (const [key, datagrams] of p.udp) flows.push(compareUdp(key, datagrams, b.udp.get(key), mismatches));
  // Backup-only flows cannot be compared with anything the primary said; they are reported, not judged.
  mismatches.sort((x, y) => x.timeUs - y.timeUs);
  const rxFile = path.join(dir, 'client-rx.pcap');
  return {
    dir,
    frameCounts: { client: client.length, primary: primary.length, backup: backup.length },
    otherFrames: { client: others(client), primary: others(primary), backup: others(backup) },
    flows,
    mismatches,
    ...(fs.existsSync(rxFile) ? { clientReceived: checkReceived(rxFile, p, b) } : {}),
  };
}

/** The form of `fixtures/expected.json` entries (documented in fixtures/README.md). */
export interface ExpectedVerdict {
  mismatches: 0 | '>=1';
  firstMismatch?: { flowPort: number; contains?: string; streamOffset?: number };
  /** Failovers the replay makes (the primary died during the recording). */
  failovers?: number;
  /** Why the replay takes the primary for dead (lib/pipeline FailoverCause). */
  failoverCause?: 'agent' | 'carrier' | 'silence' | 'manual';
  /** The server → client stream of one flow as the client received it (`client-rx.pcap`). */
  clientReceived?: { flowPort: number; bytes: number; sha256: string };
}

/** Why a report does not show the expected verdict; empty when it does. */
export function verdictProblems(report: FixtureReport, expected: ExpectedVerdict): string[] {
  const problems: string[] = [];
  const died = (expected.failovers ?? 0) > 0;
  if (expected.mismatches === 0) {
    for (const m of report.mismatches) {
      // A primary that died mid-stream is what a failover fixture shows; it says nothing false.
      if (died && m.kind === 'primary-stopped') continue;
      problems.push(`unexpected ${m.kind} mismatch on ${m.flow.proto} port ${m.flow.vmPort} (client port ${m.flow.clientPort}) at ${m.offset}: primary "${m.primaryContext}" backup "${m.backupContext}"`);
    }
    problems.push(...deathProblems(report, expected));
    return problems;
  }
  const first = report.mismatches[0];
  if (!first) return ['expected at least one mismatch, found none'];
  const want = expected.firstMismatch;
  if (!want) return problems;
  if (first.flow.vmPort !== want.flowPort) problems.push(`first mismatch is on port ${first.flow.vmPort}, expected ${want.flowPort}`);
  if (want.contains !== undefined && !first.primaryContext.includes(want.contains)) {
    problems.push(`first mismatch "${first.primaryContext}" does not contain "${want.contains}"`);
  }
  if (want.streamOffset !== undefined && first.offset !== want.streamOffset) {
    problems.push(`first mismatch at stream offset ${first.offset}, expected ${want.streamOffset}`);
  }
  return problems;
}

/**
 * What a failover fixture must show in its captures: the primary stopped
 * mid-stream on the expected flow, and the client received the backup's
 * whole stream of it (the primary's part first), with the expected length
 * and hash.
 */
function deathProblems(report: FixtureReport, expected: ExpectedVerdict): string[] {
  const want = expected.clientReceived;
  if (!(expected.failovers ?? 0) && !want) return [];
  const problems: string[] = [];
  if ((expected.failovers ?? 0) > 0) {
    const port = want?.flowPort;
    const stops = report.mismatches.filter((m) => m.kind === 'primary-stopped' && (port === undefined || m.flow.vmPort === port));
    if (stops.length === 0) problems.push(`expected the primary to stop mid-stream${port !== undefined ? ` on port ${port}` : ''}; it did not`);
  }
  if (!want) return problems;
  if (!report.clientReceived) return [...problems, 'expected client-rx.pcap (what the client received); the fixture has none'];
  const rx = report.clientReceived.filter((r) => r.flow.vmPort === want.flowPort);
  if (rx.length !== 1) return [...problems, `expected one flow on port ${want.flowPort} in client-rx.pcap, found ${rx.length}`];
  const r = rx[0];
  if (r.bytes !== want.bytes) problems.push(`client received ${r.bytes} bytes on port ${want.flowPort}, expected ${want.bytes}`);
  if (r.sha256 !== want.sha256) problems.push(`client received a stream with sha256 ${r.sha256}, expected ${want.sha256}`);
  if (!r.fin) problems.push('the stream the client received did not end with a FIN');
  if (!r.equalsBackupStream) problems.push('the stream the client received is not the backup\'s whole stream');
  if (!r.primaryIsPrefix) problems.push('the primary\'s stream is not a prefix of what the client received');
  return problems;
}

export function formatReport(report: FixtureReport): string {
  const lines = [`${report.dir}: frames client ${report.frameCounts.client}, primary ${report.frameCounts.primary}, backup ${report.frameCounts.backup}`];
  for (const role of ['client', 'primary', 'backup'] as const) {
    if (report.otherFrames[role].length) lines.push(`  other frames in ${role}.pcap: ${report.otherFrames[role].join('; ')}`);
  }
  for (const f of report.flows) {
    lines.push(`  ${f.flow.proto} port ${f.flow.vmPort} ↔ ${f.flow.client}:${f.flow.clientPort}: primary ${f.primaryBytes} B, backup ${f.backupBytes} B${f.httpHeaderLength !== undefined ? `, HTTP header ${f.httpHeaderLength} B` : ''}`);
  }
  if (report.mismatches.length === 0) lines.push('  no mismatch');
  for (const m of report.mismatches) {
    lines.push(`  mismatch (${m.kind}) ${m.flow.proto} port ${m.flow.vmPort} at ${m.offset}: primary "${m.primaryContext}" | backup "${m.backupContext}"`);
  }
  for (const r of report.clientReceived ?? []) {
    lines.push(`  client received on ${r.flow.proto} port ${r.flow.vmPort} ↔ ${r.flow.client}:${r.flow.clientPort}: ${r.bytes} B${r.fin ? ' + FIN' : ''}, sha256 ${r.sha256}; `
      + `${r.equalsBackupStream ? '=' : '≠'} the backup's stream, primary's stream ${r.primaryIsPrefix ? 'a prefix of it' : 'NOT a prefix of it'}`);
  }
  return lines.join('\n');
}

if (require.main === module) {
  const dirs = process.argv.slice(2);
  if (dirs.length === 0) {
    console.error('usage: node dist/scripts/fixture-check.js fixtures/<name> [...]');
    process.exit(2);
  }
  for (const dir of dirs) console.log(formatReport(checkFixture(dir)));
}
