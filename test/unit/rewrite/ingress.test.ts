import fc from 'fast-check';
import { TcpOptions, decodeFrame, readTcpOptions, verifyL4Checksum } from '../../../lib/packet';
import { refersToVmSpace, translateForBackup } from '../../../lib/rewrite';
import { TcpSpec, l4ChecksumIsValid, storedL4Checksum, tcpFrame } from '../../support/frames';

const u32 = (v: number) => v >>> 0;

/** Translates a copy of the frame built from `spec`, the way the bridge does. */
function translated(spec: TcpSpec, seqDelta: number, tsDelta: number, checksumIsPartial = false) {
  const original = tcpFrame(spec);
  const f = decodeFrame(original);
  expect(f.error).toBeNull();
  const copy = Buffer.from(original);
  f.rebind(copy);
  const ok = translateForBackup(f, seqDelta, tsDelta, new TcpOptions(), checksumIsPartial);
  return { ok, original, copy };
}

/** The frame the backup should get: the same spec, its VM-space numbers shifted. */
function expectedFor(spec: TcpSpec, seqDelta: number, tsDelta: number): Buffer {
  const options = spec.options && {
    ...spec.options,
    ts: spec.options.ts && ([spec.options.ts[0], u32(spec.options.ts[1] + tsDelta)] as [number, number]),
    sack: spec.options.sack?.map(([l, r]): [number, number] => [u32(l + seqDelta), u32(r + seqDelta)]),
  };
  return tcpFrame({ ...spec, ack: u32((spec.ack ?? 0) + seqDelta), options });
}

describe('translateForBackup', () => {
  const spec: TcpSpec = {
    sport: 40000, dport: 80, seq: 0x01020304, ack: 0x10000000, flags: 'PA',
    options: { ts: [111111, 222222], sack: [[0x10000100, 0x10000200], [0x10000400, 0x10000800]] },
    payload: 'client data',
  };

  it('shifts the ACK, every SACK edge and the TS echo, and leaves seq and TSval alone', () => {
    const { ok, copy, original } = translated(spec, 5000, 77);
    expect(ok).toBe(true);
    expect(copy).toEqual(expectedFor(spec, 5000, 77));
    const f = decodeFrame(copy);
    expect(f.tcp.ack).toBe(0x10000000 + 5000);
    expect(f.tcp.seq).toBe(0x01020304);
    const opts = new TcpOptions();
    expect(readTcpOptions(f, opts)).toBe(true);
    expect(f.dv.getUint32(opts.tsOffset)).toBe(111111);
    expect(f.dv.getUint32(opts.tsOffset + 4)).toBe(222222 + 77);
    const edges = Array.from({ length: 4 }, (_, i) => f.dv.getUint32(opts.sackOffset + 4 * i));
    expect(edges).toEqual([0x10000100 + 5000, 0x10000200 + 5000, 0x10000400 + 5000, 0x10000800 + 5000]);
    expect(original).toEqual(tcpFrame(spec)); // the original was not written to
  });

  it('keeps the TCP checksum valid, by an independent RFC 1071 computation', () => {
    const { copy } = translated(spec, 0x7fff1234, 0xdeadbeef);
    expect(l4ChecksumIsValid(copy)).toBe(true);
    expect(verifyL4Checksum(decodeFrame(copy))).toBe(true);
  });

  it('wraps around 2^32 for the ACK, SACK edges and TSecr', () => {
    const nearWrap: TcpSpec = {
      ...spec, ack: 0xfffffff0, options: { ts: [1, 0xfffffffe], sack: [[0xfffffff0, 0xfffffffc], [0xfffffffd, 0x0000000a]] },
    };
    const { copy } = translated(nearWrap, 0x20, 5);
    const f = decodeFrame(copy);
    expect(f.tcp.ack).toBe(0x10);
    expect(copy).toEqual(expectedFor(nearWrap, 0x20, 5));
    const opts = new TcpOptions();
    expect(readTcpOptions(f, opts)).toBe(true);
    expect(f.dv.getUint32(opts.tsOffset + 4)).toBe(3);
    expect(f.dv.getUint32(opts.sackOffset)).toBe(0x10);
    expect(f.dv.getUint32(opts.sackOffset + 12)).toBe(0x2a);
    expect(l4ChecksumIsValid(copy)).toBe(true);
  });

  it('translates backwards (a backup ISN below the primary ISN) as a delta mod 2^32', () => {
    const delta = u32(-123456);
    const { copy } = translated(spec, delta, u32(-1));
    expect(decodeFrame(copy).tcp.ack).toBe(0x10000000 - 123456);
    expect(copy).toEqual(expectedFor(spec, delta, u32(-1)));
  });

  it('shifts only the TS echo when the sequence spaces agree', () => {
    const { copy } = translated(spec, 0, 1000);
    expect(copy).toEqual(expectedFor(spec, 0, 1000));
    expect(decodeFrame(copy).tcp.ack).toBe(0x10000000);
  });

  it('leaves the frame byte for byte when both deltas are zero', () => {
    const { copy, original } = translated(spec, 0, 0);
    expect(copy).toEqual(original);
  });

  it('translates the ACK of a segment without options', () => {
    const bare: TcpSpec = { ack: 42, flags: 'A' };
    const { copy } = translated(bare, 8, 9);
    expect(copy).toEqual(expectedFor(bare, 8, 9));
  });

  it('leaves frames without ACK untouched (a SYN names nothing in the VM space)', () => {
    const syn: TcpSpec = { seq: 7, ack: 0xabcdef, flags: 'S', options: { mss: 1460, sackOk: true, ts: [9, 0xabc], ws: 7 } };
    const { ok, copy, original } = translated(syn, 1000, 1000);
    expect(ok).toBe(true);
    expect(copy).toEqual(original);
    const rst = translated({ seq: 7, flags: 'R' }, 1000, 1000);
    expect(rst.copy).toEqual(rst.original);
  });

  it('works over IPv6 and VLAN tags', () => {
    for (const link of [{ v6: true }, { vlan: [100] }, { v6: true, vlan: [300, 42] }]) {
      const s = { ...spec, ...link };
      const { copy } = translated(s, 99, 98);
      expect(copy).toEqual(expectedFor(s, 99, 98));
    }
  });

  it('keeps the checksum valid when the options sit at odd offsets', () => {
    const packed: TcpSpec = { ...spec, options: { ...spec.options, packed: true, ws: 1 } };
    const { copy } = translated(packed, 0x1234567, 0x89abcdef);
    expect(copy).toEqual(expectedFor(packed, 0x1234567, 0x89abcdef));
    expect(l4ChecksumIsValid(copy)).toBe(true);
  });

  it('leaves a partial checksum (VIRTIO_NET_HDR_F_NEEDS_CSUM) as it is', () => {
    const partial: TcpSpec = { ...spec, checksum: 0x4321 };
    const { copy } = translated(partial, 5000, 77, true);
    expect(storedL4Checksum(copy)).toBe(0x4321);
    const f = decodeFrame(copy);
    expect(f.tcp.ack).toBe(0x10000000 + 5000);
    // Everything but the checksum is what a full translation writes.
    const expected = expectedFor(spec, 5000, 77);
    expected.writeUInt16BE(0x4321, f.tcp.offset - f.base + 16);
    expect(copy).toEqual(expected);
  });

  it('still translates the ACK but reports malformed options', () => {
    const broken: TcpSpec = { ack: 100, flags: 'A', rawOptions: [8, 10, 0, 0, 0, 0, 0, 0] };
    const { ok, copy } = translated(broken, 50, 50);
    expect(ok).toBe(false);
    expect(decodeFrame(copy).tcp.ack).toBe(150);
    expect(l4ChecksumIsValid(copy)).toBe(true);
  });

  it('gives the frame the builder would have built in the backup\'s space, for any numbers (property)', () => {
    const u32Arb = fc.integer({ min: 0, max: 0xffffffff });
    fc.assert(
      fc.property(
        fc.record({
          v6: fc.boolean(),
          packed: fc.boolean(),
          seq: u32Arb,
          ack: u32Arb,
          ts: fc.option(fc.tuple(u32Arb, u32Arb), { nil: undefined }),
          sack: fc.array(fc.tuple(u32Arb, u32Arb), { maxLength: 3 }),
          payload: fc.uint8Array({ maxLength: 64 }),
          seqDelta: u32Arb,
          tsDelta: u32Arb,
        }),
        (r) => {
          const s: TcpSpec = {
            v6: r.v6, seq: r.seq, ack: r.ack, flags: 'A', payload: Buffer.from(r.payload),
            options: { packed: r.packed, ts: r.ts, sack: r.sack as [number, number][] },
          };
          const { ok, copy } = translated(s, r.seqDelta, r.tsDelta);
          expect(ok).toBe(true);
          expect(copy).toEqual(expectedFor(s, r.seqDelta, r.tsDelta));
          expect(l4ChecksumIsValid(copy)).toBe(true);
        },
      ),
      { numRuns: 1000 },
    );
  });
});

describe('refersToVmSpace', () => {
  it('is true exactly for segments carrying an ACK', () => {
    expect(refersToVmSpace(decodeFrame(tcpFrame({ flags: 'S' })))).toBe(false);
    expect(refersToVmSpace(decodeFrame(tcpFrame({ flags: 'R' })))).toBe(false);
    expect(refersToVmSpace(decodeFrame(tcpFrame({ flags: 'A' })))).toBe(true);
    expect(refersToVmSpace(decodeFrame(tcpFrame({ flags: 'FA' })))).toBe(true);
    expect(refersToVmSpace(decodeFrame(tcpFrame({ flags: 'RA' })))).toBe(true);
  });
});
