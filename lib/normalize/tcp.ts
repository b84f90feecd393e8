/**
 * Normalizes a TCP frame a replica sent into a StreamSegment: its sequence
 * number made relative to the replica's own SYN (so ISNs do not count), SYN
 * options reduced to what must agree. Timestamps, window, IP ID, TTL and
 * checksums are left out: they are not part of what was said.
 *
 * In:  a decoded TCP frame from a VM, that replica's endpoint state.
 * Out: the segment (reusing `out`), and the endpoint state updated (SYN
 *      base, TS base, highest ACK).
 */
import { TcpFlag } from '../packet/constants';
import { DecodedFrame } from '../packet/frame';
import { seqDiff } from '../packet/seq';
import { TcpOptions, readTcpOptions } from '../packet/tcp-options';
import { TcpEndpointState } from '../flow/tcp-replica';
import { StreamSegment } from '../compare/tcp-stream';

export function newStreamSegment(): StreamSegment {
  return { position: 0, syn: false, synSignature: '', payload: Buffer.alloc(0), fin: false, rst: false };
}

/** What of a SYN must agree between replicas: the options that shape the connection. */
export function synSignature(o: TcpOptions): string {
  return `mss=${o.mss} ws=${o.windowScale} sack=${o.sackPermitted ? 1 : 0} ts=${o.tsOffset >= 0 ? 1 : 0}`;
}

/**
 * Learns from a SYN this endpoint sent: its sequence base and TS base (its
 * MSS and window scale go into the SYN signature the comparator checks, not
 * here). Returns false when the SYN's options are malformed.
 */
export function learnFromSyn(f: DecodedFrame, ep: TcpEndpointState, opts: TcpOptions): boolean {
  const ok = readTcpOptions(f, opts);
  ep.seqBase = f.tcp.seq;
  ep.synSeen = true;
  if (opts.tsOffset >= 0) {
    ep.tsBase = f.dv.getUint32(opts.tsOffset);
    ep.tsSeen = true;
  }
  return ok;
}

/** Returns false when the frame's options are malformed (the segment is still filled). */
export function normalizeTcp(f: DecodedFrame, ep: TcpEndpointState, opts: TcpOptions, out: StreamSegment): boolean {
  const tcp = f.tcp;
  const flags = tcp.flags;
  let ok = true;
  out.syn = (flags & TcpFlag.SYN) !== 0;
  if (out.syn) {
    ok = learnFromSyn(f, ep, opts);
    out.synSignature = synSignature(opts);
  }
  out.position = seqDiff(ep.seqBase, tcp.seq) >>> 0;
  out.payload = f.payload();
  out.fin = (flags & TcpFlag.FIN) !== 0;
  out.rst = (flags & TcpFlag.RST) !== 0;
  if (flags & TcpFlag.ACK) ep.noteAck(tcp.ack);
  return ok;
}

/** The first relative position after this segment (SYN and FIN count one each). */
export function segmentEnd(seg: StreamSegment): number {
  return (seg.position + (seg.syn ? 1 : 0) + seg.payload.length + (seg.fin ? 1 : 0)) >>> 0;
}
