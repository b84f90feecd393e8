/** normalize/ and rewrite/ on frames from the real captures in fixtures/. */
import { DecodedFrame, TcpFlag, TcpOptions, decodeFrame, seqDiff } from '../../../lib/packet';
import { TcpConnectionState, TcpEndpointState, flowKeyOf } from '../../../lib/flow';
import { StreamSegment } from '../../../lib/compare';
import { datagramContent, learnFromSyn, newStreamSegment, normalizeTcp, segmentEnd } from '../../../lib/normalize';
import { translateForBackup } from '../../../lib/rewrite';
import { loadFixture } from '../../support/fixtures';

function normalizeAll(frames: Buffer[]): StreamSegment[] {
  const ep = new TcpEndpointState();
  const opts = new TcpOptions();
  const f = new DecodedFrame();
  return frames.map((frame) => {
    const seg = newStreamSegment();
    decodeFrame(frame, f);
    expect(normalizeTcp(f, ep, opts, seg)).toBe(true);
    return { ...seg, payload: Buffer.from(seg.payload) };
  });
}

describe('normalize on the http-keepalive capture', () => {
  const [client, primary, backup] = loadFixture('http-keepalive');

  it('puts both replicas\' SYN-ACK at position 0 and their data at the same positions, whatever their ISNs', () => {
    const p = normalizeAll(primary.map((r) => r.frame));
    const b = normalizeAll(backup.map((r) => r.frame));
    expect(p[0]).toMatchObject({ position: 0, syn: true });
    expect(b[0]).toMatchObject({ position: 0, syn: true });
    expect(p[0].synSignature).toBe(b[0].synSignature);
    expect(primary[0].frame.readUInt32BE(38)).not.toBe(backup[0].frame.readUInt32BE(38)); // the raw ISNs differ
    const bytesAt = (segs: StreamSegment[]) => {
      const out = new Map<number, string>();
      for (const s of segs) if (s.payload.length) out.set(s.position, s.payload.toString('latin1'));
      return out;
    };
    const pb = bytesAt(p);
    const bb = bytesAt(b);
    const stream = (m: Map<number, string>) => [...m.entries()].sort((x, y) => x[0] - y[0]).map((e) => e[1]).join('');
    expect(stream(pb)).toBe(stream(bb));
    expect(stream(pb)).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
    expect(segmentEnd(p[p.length - 1])).toBe(segmentEnd(b[b.length - 1]));
  });

  it('translates every client ACK into the backup\'s space: never beyond what the backup had sent', () => {
    const conn = new TcpConnectionState();
    const opts = new TcpOptions();
    const f = new DecodedFrame();
    learnFromSyn(decodeFrame(primary[0].frame, f), conn.replicas[0], opts);
    learnFromSyn(decodeFrame(backup[0].frame, f), conn.replicas[1], opts);
    const backupEnd = (beforeUs: number) => {
      let end = 0;
      for (const r of backup) {
        if (r.timeUs > beforeUs + 1_000_000) break;
        const g = decodeFrame(r.frame, new DecodedFrame());
        const e = seqDiff(conn.replicas[1].seqBase, g.tcp.seq) + g.payloadLength + ((g.tcp.flags & (TcpFlag.SYN | TcpFlag.FIN)) ? 1 : 0);
        end = Math.max(end, e);
      }
      return end;
    };
    let acks = 0;
    for (const r of client) {
      const copy = Buffer.from(r.frame);
      decodeFrame(copy, f);
      if (!(f.tcp.flags & TcpFlag.ACK)) continue;
      translateForBackup(f, conn.seqDelta, conn.tsDelta, opts);
      const rel = seqDiff(conn.replicas[1].seqBase, f.tcp.ack);
      expect(rel).toBeGreaterThanOrEqual(1);
      expect(rel).toBeLessThanOrEqual(backupEnd(r.timeUs));
      acks++;
    }
    expect(acks).toBeGreaterThan(10);
  });

  it('gives the same flow key to the client\'s frames and the VMs\' answers', () => {
    const f = new DecodedFrame();
    const keys = new Set([
      ...client.map((r) => flowKeyOf(decodeFrame(r.frame, f), 'ingress')),
      ...primary.map((r) => flowKeyOf(decodeFrame(r.frame, f), 'egress')),
      ...backup.map((r) => flowKeyOf(decodeFrame(r.frame, f), 'egress')),
    ]);
    expect(keys.size).toBe(1);
  });
});

describe('normalize on the udp-dns capture', () => {
  it('gives equal datagram content for the two replicas\' answers although IP IDs and checksums may differ', () => {
    const [, primary, backup] = loadFixture('udp-dns');
    const f = new DecodedFrame();
    expect(primary.length).toBe(backup.length);
    primary.forEach((p, i) => {
      const a = Buffer.from(datagramContent(decodeFrame(p.frame, f)));
      const b = Buffer.from(datagramContent(decodeFrame(backup[i].frame, f)));
      expect(a.equals(b)).toBe(true);
      expect(a.length).toBeGreaterThan(12); // a DNS header and more
    });
  });
});
