import fc from 'fast-check';
import {
  DecodedFrame, TcpOptions, computeL4Checksum, decodeFrame, finishChecksum, foldSum, ipv4HeaderChecksum, l4ChecksumOffset,
  onesSum, readTcpOptions, rewriteTcp32, updateChecksum16, updateChecksum32, verifyL4Checksum,
} from '../../../lib/packet';
import {
  expectedL4Checksum, icmpEcho, icmpFrame, icmpv6, internetChecksum, ipv4Fragment, ipv4HeaderChecksumIsValid,
  ipv6WithExtensions, l4ChecksumIsValid, storedL4Checksum, tcpFrame, udpFrame, udpSegment,
} from '../../support/frames';

const framesByKind: [string, Buffer][] = [
  ['TCP over IPv4', tcpFrame({ seq: 0xdeadbeef, ack: 1, flags: 'PA', options: { ts: [1, 2] }, payload: 'hello, world' })],
  ['TCP over IPv6', tcpFrame({ v6: true, seq: 5, ack: 6, flags: 'A', options: { sack: [[1, 2]] }, payload: 'odd' })],
  ['TCP over IPv6 with extension headers', ipv6WithExtensions({ extensions: [{ kind: 'hop-by-hop' }, { kind: 'routing' }], payload: 'ext' })],
  ['TCP over QinQ IPv4', tcpFrame({ vlan: [10, 20], flags: 'S', options: { mss: 1460, ws: 7 } })],
  ['UDP over IPv4', udpFrame({ payload: 'a datagram of odd length' })],
  ['UDP over IPv6', udpFrame({ v6: true, from: 'vm', payload: 'answer' })],
  ['ICMP echo over IPv4', icmpEcho({ id: 7, seq: 9, payload: 'ping!' })],
  ['ICMP destination unreachable over IPv4', icmpFrame({ type: 3, code: 3, body: Buffer.alloc(32, 0x45) })],
  ['ICMPv6 echo reply', icmpEcho({ v6: true, reply: true, from: 'vm', payload: 'pong' })],
  ['ICMPv6 neighbour advertisement', icmpv6({ type: 136, body: Buffer.alloc(20, 3) })],
];

describe('full L4 checksums', () => {
  it.each(framesByKind)('computes the same %s checksum as an independent RFC 1071 loop', (_kind, frame) => {
    const f = decodeFrame(frame);
    expect(f.error).toBeNull();
    expect(l4ChecksumIsValid(frame)).toBe(true); // the builder agrees with itself
    expect(computeL4Checksum(f)).toBe(expectedL4Checksum(frame));
    expect(verifyL4Checksum(f)).toBe(true);
  });

  it.each(framesByKind)('rejects a %s whose checksum is off by one', (_kind, frame) => {
    const bad = Buffer.from(frame);
    const f = decodeFrame(bad);
    const at = l4ChecksumOffset(f);
    f.buf.writeUInt16BE((f.buf.readUInt16BE(at) + 1) & 0xffff, at);
    expect(verifyL4Checksum(f)).toBe(false);
  });

  it.each(framesByKind)('rejects a %s with one payload bit flipped', (_kind, frame) => {
    const bad = Buffer.from(frame);
    const f = decodeFrame(bad);
    f.buf[f.l3End - 1] ^= 0x10;
    expect(verifyL4Checksum(f)).toBe(false);
  });

  it('leaves the checksum field untouched while computing', () => {
    const frame = tcpFrame({ payload: 'x' });
    const before = Buffer.from(frame);
    computeL4Checksum(decodeFrame(frame));
    expect(frame).toEqual(before);
  });

  it('sends a computed UDP checksum of zero as all ones (RFC 768)', () => {
    // Find a payload word that makes the one's-complement sum 0xffff, so the checksum computes to 0.
    const probe = udpFrame({ payload: Buffer.alloc(2) });
    const sumWithZeros = (~expectedL4Checksum(probe) & 0xffff) || 0xffff;
    const word = (0xffff - sumWithZeros) & 0xffff;
    const payload = Buffer.alloc(2);
    payload.writeUInt16BE(word, 0);
    const frame = udpFrame({ payload });
    expect(storedL4Checksum(frame)).toBe(0xffff);
    const f = decodeFrame(frame);
    expect(computeL4Checksum(f)).toBe(0xffff);
    expect(verifyL4Checksum(f)).toBe(true);
  });

  it('accepts an IPv4 UDP datagram sent without a checksum, but not an IPv6 one', () => {
    expect(verifyL4Checksum(decodeFrame(udpFrame({ payload: 'x', checksum: 0 })))).toBe(true);
    expect(verifyL4Checksum(decodeFrame(udpFrame({ v6: true, payload: 'x', checksum: 0 })))).toBe(false);
  });

  it('does not judge fragments, whose checksum covers bytes not in the frame', () => {
    const datagram = udpSegment({ payload: Buffer.alloc(64, 1) });
    const first = ipv4Fragment({ offset: 0, more: true, data: datagram.subarray(0, 32) });
    expect(verifyL4Checksum(decodeFrame(first))).toBe(true);
  });

  it('computes the IPv4 header checksum, options included', () => {
    for (const frame of [tcpFrame({}), udpFrame({ ipv4Options: Buffer.from([0x94, 4, 0, 0]), ttl: 1, ipId: 0xffff })]) {
      expect(ipv4HeaderChecksumIsValid(frame)).toBe(true);
      const f = decodeFrame(frame);
      expect(ipv4HeaderChecksum(f)).toBe(f.ipv4.checksum);
    }
  });
});

describe('onesSum and finishChecksum', () => {
  it('agree with the independent checksum on random buffers of any length and alignment', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), fc.nat(7), (bytes, lead) => {
        const buf = Buffer.concat([Buffer.alloc(lead, 0xaa), Buffer.from(bytes)]);
        expect(finishChecksum(onesSum(buf, lead, bytes.length))).toBe(internetChecksum(Buffer.from(bytes)));
      }),
      { numRuns: 2000 },
    );
  });

  it('folds sums far beyond 32 bits', () => {
    const big = 0xffff * 2 ** 36 + 0x1234;
    // x * 2^36 ≡ x (mod 0xffff), so this folds like 0xffff + 0x1234.
    expect(foldSum(big)).toBe(foldSum(0xffff + 0x1234));
    expect(foldSum(big)).toBeLessThanOrEqual(0xffff);
  });
});

/** A random buffer with its checksum at [0, 2) and a field to change at an even offset. */
const checksummedBuffer = fc
  .tuple(fc.uint8Array({ minLength: 10, maxLength: 64 }), fc.nat(), fc.constantFrom('random', 'zero-checksum'))
  .map(([bytes, fieldSeed, variant]) => {
    const buf = Buffer.from(bytes.length % 2 ? [...bytes, 0] : bytes);
    // Keep one fixed non-zero word, as the pseudo-header's protocol is in every real L4 checksum:
    // a message of all zeros is the one case where 0x0000 and 0xffff differ in form.
    buf.writeUInt16BE(0x0011, 2);
    const fieldAt = 4 + 2 * (fieldSeed % ((buf.length - 8) / 2));
    if (variant === 'zero-checksum') {
      // Adjust a word outside the field so the data sums to 0xffff: the checksum is then 0x0000.
      const adjustAt = fieldAt === 4 ? 6 : 4;
      buf.writeUInt16BE(0, 0);
      buf.writeUInt16BE(0, adjustAt);
      const sum = (~internetChecksum(buf)) & 0xffff;
      buf.writeUInt16BE((0xffff - sum) & 0xffff, adjustAt);
    }
    buf.writeUInt16BE(0, 0);
    buf.writeUInt16BE(internetChecksum(buf), 0);
    return { buf, fieldAt };
  });

describe('incremental checksum update (RFC 1624)', () => {
  it('reaches 0x0000 where the full checksum is 0x0000 (the case eqn. 2 gets wrong)', () => {
    // RFC 1624 §4 example: the sum of the data becomes 0xffff after the change.
    const buf = Buffer.from([0, 0, 0x00, 0x11, 0x12, 0x34, 0x00, 0x00]);
    buf.writeUInt16BE(internetChecksum(buf), 0);
    const newWord = (0xffff - 0x0011) & 0xffff;
    const updated = updateChecksum16(buf.readUInt16BE(0), 0x1234, newWord);
    buf.writeUInt16BE(newWord, 4);
    buf.writeUInt16BE(0, 0);
    expect(internetChecksum(buf)).toBe(0x0000);
    expect(updated).toBe(0x0000);
  });

  it('updateChecksum16 equals a full recomputation for any 16-bit change', () => {
    fc.assert(
      fc.property(checksummedBuffer, fc.integer({ min: 0, max: 0xffff }), ({ buf, fieldAt }, newWord) => {
        const oldWord = buf.readUInt16BE(fieldAt);
        const incremental = updateChecksum16(buf.readUInt16BE(0), oldWord, newWord);
        buf.writeUInt16BE(newWord, fieldAt);
        buf.writeUInt16BE(0, 0);
        expect(incremental).toBe(internetChecksum(buf));
      }),
      { numRuns: 5000 },
    );
  });

  it('updateChecksum32 equals a full recomputation for any 32-bit change', () => {
    fc.assert(
      fc.property(checksummedBuffer, fc.integer({ min: 0, max: 0xffffffff }), ({ buf, fieldAt }, newValue) => {
        const at = Math.min(fieldAt, buf.length - 4);
        const oldValue = buf.readUInt32BE(at);
        const incremental = updateChecksum32(buf.readUInt16BE(0), oldValue, newValue);
        buf.writeUInt32BE(newValue, at);
        buf.writeUInt16BE(0, 0);
        expect(incremental).toBe(internetChecksum(buf));
      }),
      { numRuns: 5000 },
    );
  });

  it('reaches 0x0000 whenever a full recomputation does', () => {
    fc.assert(
      fc.property(checksummedBuffer, ({ buf, fieldAt }) => {
        const oldWord = buf.readUInt16BE(fieldAt);
        const oldChecksum = buf.readUInt16BE(0);
        // The word that makes the data sum to 0xffff, i.e. the checksum 0x0000.
        buf.writeUInt16BE(0, 0);
        buf.writeUInt16BE(0, fieldAt);
        const sumWithoutField = ~internetChecksum(buf) & 0xffff;
        const newWord = (0xffff - sumWithoutField) & 0xffff;
        buf.writeUInt16BE(newWord, fieldAt);
        expect(internetChecksum(buf)).toBe(0x0000);
        expect(updateChecksum16(oldChecksum, oldWord, newWord)).toBe(0x0000);
      }),
      { numRuns: 2000 },
    );
  });

  it('updates a stored 0xffff (the other form of zero) to a checksum that still verifies', () => {
    fc.assert(
      fc.property(checksummedBuffer, fc.integer({ min: 0, max: 0xffff }), ({ buf, fieldAt }, newWord) => {
        if (buf.readUInt16BE(0) !== 0) return;
        buf.writeUInt16BE(0xffff, 0); // -0: as valid as +0 in one's complement
        expect(internetChecksum(buf)).toBe(0);
        const incremental = updateChecksum16(0xffff, buf.readUInt16BE(fieldAt), newWord);
        buf.writeUInt16BE(newWord, fieldAt);
        buf.writeUInt16BE(incremental, 0);
        expect(internetChecksum(buf)).toBe(0); // the whole message, checksum included, sums to -0
      }),
      { numRuns: 5000 },
    );
  });

  it('changing a field to the value it has leaves the checksum alone', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 0xfffe }), fc.integer({ min: 0, max: 0xffffffff }), (checksum, v) => {
        expect(updateChecksum32(checksum, v, v)).toBe(checksum);
      }),
    );
  });
});

describe('rewriteTcp32', () => {
  function rewriteEveryField(frame: Buffer, values: number[]): DecodedFrame {
    const f = decodeFrame(frame);
    const opts = new TcpOptions();
    expect(readTcpOptions(f, opts)).toBe(true);
    const fields = [f.tcp.offset + 4, f.tcp.offset + 8, opts.tsOffset, opts.tsOffset + 4];
    for (let i = 0; i < opts.sackBlocks * 2; i++) fields.push(opts.sackOffset + 4 * i);
    fields.forEach((at, i) => rewriteTcp32(f, at, values[i % values.length]));
    return f;
  }

  it('keeps the checksum valid for seq, ack, timestamps and SACK edges (v4 and v6)', () => {
    fc.assert(
      fc.property(
        fc.boolean(),
        fc.array(fc.integer({ min: 0, max: 0xffffffff }), { minLength: 1, maxLength: 8 }),
        fc.uint8Array({ maxLength: 40 }),
        (v6, values, payload) => {
          const frame = tcpFrame({
            v6, seq: 1, ack: 2, flags: 'A', options: { ts: [3, 4], sack: [[5, 6], [7, 8]] }, payload: Buffer.from(payload),
          });
          const f = rewriteEveryField(frame, values);
          expect(verifyL4Checksum(f)).toBe(true);
          expect(l4ChecksumIsValid(frame)).toBe(true);
        },
      ),
      { numRuns: 1000 },
    );
  });

  it('keeps the checksum valid when the option fields sit at odd offsets', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: 0xffffffff }), { minLength: 1, maxLength: 8 }), (values) => {
        const frame = tcpFrame({
          flags: 'A', options: { packed: true, ws: 1, ts: [3, 4], sack: [[5, 6]] }, payload: 'odd',
        });
        const f = rewriteEveryField(frame, values);
        expect(l4ChecksumIsValid(frame)).toBe(true);
        expect(verifyL4Checksum(f)).toBe(true);
      }),
      { numRuns: 500 },
    );
  });

  it('writes the value but leaves a partial checksum (VIRTIO_NET_HDR_F_NEEDS_CSUM) as it is', () => {
    const frame = tcpFrame({ ack: 10, flags: 'A', checksum: 0x1234 });
    const f = decodeFrame(frame);
    rewriteTcp32(f, f.tcp.offset + 8, 0xabcdef01, true);
    expect(f.tcp.ack).toBe(0xabcdef01);
    expect(f.tcp.checksum).toBe(0x1234);
  });

  it('stores values modulo 2^32', () => {
    const frame = tcpFrame({ ack: 10, flags: 'A' });
    const f = decodeFrame(frame);
    rewriteTcp32(f, f.tcp.offset + 8, 2 ** 32 + 5);
    expect(f.tcp.ack).toBe(5);
    expect(verifyL4Checksum(f)).toBe(true);
    expect(l4ChecksumIsValid(frame)).toBe(true);
  });
});
