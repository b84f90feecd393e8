/**
 * prefixTcpCopy: the matched beginning of a held segment, sent ahead of it
 * (EgressStage.releaseMatchedPrefix). The copy must be a valid segment a
 * client's stack accepts: same headers, lengths and checksums recomputed,
 * FIN and PSH left for the rest, whatever sits between Ethernet and TCP.
 */
import { decodeFrame } from '../../../lib/packet/frame';
import { ipv4HeaderChecksum } from '../../../lib/packet/l4-checksum';
import { prefixTcpCopy } from '../../../lib/rewrite/egress';
import { l4ChecksumIsValid, tcpFrame, TcpSpec } from '../../support/frames';

const FIN = 0x01, PSH = 0x08, ACK = 0x10;

function check(spec: TcpSpec, keep: number): void {
  const frame = tcpFrame({ from: 'vm', seq: 7000, ack: 42, flags: 'FPA', payload: 'abcdefghij'.repeat(20), options: { ts: [5, 6] }, ...spec });
  const f = decodeFrame(frame);
  const out = prefixTcpCopy(f, keep);
  const d = decodeFrame(out);
  expect(d.error).toBeNull();
  expect(d.l4).toBe('tcp');
  expect(Buffer.from(d.payload()).toString()).toBe('abcdefghij'.repeat(20).slice(0, keep));
  expect(d.tcp.seq).toBe(7000);
  expect(d.tcp.ack).toBe(42);
  expect(d.tcp.flags & (FIN | PSH)).toBe(0);
  expect(d.tcp.flags & ACK).toBe(ACK);
  expect(l4ChecksumIsValid(out)).toBe(true);
  if (d.l3 === 'ipv4') expect(d.ipv4.checksum).toBe(ipv4HeaderChecksum(d));
  // Everything before the payload is the original's but for lengths, flags and checksums.
  expect(out.length).toBe(f.payloadOffset - f.base + keep);
  expect(out.subarray(0, 12).equals(frame.subarray(0, 12))).toBe(true);
}

describe('prefixTcpCopy', () => {
  it('IPv4 with timestamps: the first bytes, no FIN, no PSH, valid checksums', () => check({}, 37));
  it('IPv4 with IP options behind two VLAN tags', () => check({ ipv4Options: Buffer.from([1, 1, 1, 1]), vlan: [100, 200] }, 1));
  it('IPv6 behind extension headers (the payload length counts them)', () => check({ v6: true, extensions: [{ kind: 'hop-by-hop' }, { kind: 'dest-options', units: 2 }] }, 150));
  it('IPv6, all but the last byte', () => check({ v6: true }, 199));
});
