import fc from 'fast-check';
import { TcpOptions, decodeFrame, readTcpOptions } from '../../../lib/packet';
import { TCP_HEADER_LENGTH, TcpOptionSpec, encodeTcpOptions, tcpFrame } from '../../support/frames';

/** Decodes a TCP frame carrying `spec`'s options and reads them. */
function readOptionsOf(spec: TcpOptionSpec, v6 = false) {
  const f = decodeFrame(tcpFrame({ v6, vlan: v6 ? [] : [12], options: spec, payload: 'after options' }));
  expect(f.error).toBeNull();
  const opts = new TcpOptions();
  const ok = readTcpOptions(f, opts);
  const optionsStart = f.tcp.offset + TCP_HEADER_LENGTH;
  return { ok, opts, f, optionsStart, at: encodeTcpOptions(spec).at };
}

function readRaw(rawOptions: number[]) {
  const f = decodeFrame(tcpFrame({ rawOptions, payload: 'p' }));
  expect(f.error).toBeNull();
  const opts = new TcpOptions();
  return { ok: readTcpOptions(f, opts), opts, optionsStart: f.tcp.offset + TCP_HEADER_LENGTH };
}

describe('readTcpOptions', () => {
  it('reads MSS, window scale, SACK-permitted and timestamps of a Linux-style SYN', () => {
    const spec: TcpOptionSpec = { mss: 1460, sackOk: true, ts: [0x11223344, 0], ws: 7 };
    const { ok, opts, f, optionsStart, at } = readOptionsOf(spec);
    expect(ok).toBe(true);
    expect(opts.mss).toBe(1460);
    expect(opts.windowScale).toBe(7);
    expect(opts.sackPermitted).toBe(true);
    expect(opts.tsOffset).toBe(optionsStart + at.ts!);
    expect(f.dv.getUint32(opts.tsOffset)).toBe(0x11223344);
    expect(f.dv.getUint32(opts.tsOffset + 4)).toBe(0);
    expect(opts.sackOffset).toBe(-1);
    expect(opts.sackBlocks).toBe(0);
  });

  it('finds the timestamps and every SACK block of an ACK, over IPv6', () => {
    const sack: [number, number][] = [[1000, 2000], [3000, 4000], [0xfffffff0, 0x10]];
    const { ok, opts, f, optionsStart, at } = readOptionsOf({ ts: [77, 88], sack }, true);
    expect(ok).toBe(true);
    expect(opts.tsOffset).toBe(optionsStart + at.ts!);
    expect([f.dv.getUint32(opts.tsOffset), f.dv.getUint32(opts.tsOffset + 4)]).toEqual([77, 88]);
    expect(opts.sackOffset).toBe(optionsStart + at.sack!);
    expect(opts.sackBlocks).toBe(3);
    const edges = Array.from({ length: 6 }, (_, i) => f.dv.getUint32(opts.sackOffset + 4 * i));
    expect(edges).toEqual(sack.flat());
  });

  it('finds options packed at odd offsets without NOP alignment', () => {
    const spec: TcpOptionSpec = { packed: true, ws: 2, mss: 536, sackOk: true, ts: [5, 6], sack: [[10, 20]] };
    const { ok, opts, f, optionsStart, at } = readOptionsOf(spec);
    expect(ok).toBe(true);
    expect((opts.tsOffset - f.tcp.offset) % 2).toBe(1);
    expect(opts.windowScale).toBe(2);
    expect(opts.mss).toBe(536);
    expect(opts.sackPermitted).toBe(true);
    expect(opts.tsOffset).toBe(optionsStart + at.ts!);
    expect(opts.sackOffset).toBe(optionsStart + at.sack!);
    expect(opts.sackBlocks).toBe(1);
  });

  it('reports nothing for a header without options', () => {
    const f = decodeFrame(tcpFrame({ payload: 'no options' }));
    const opts = new TcpOptions();
    opts.mss = 9000; // left over from an earlier frame: must be reset
    expect(readTcpOptions(f, opts)).toBe(true);
    expect(opts.mss).toBe(-1);
    expect(opts.windowScale).toBe(-1);
    expect(opts.sackPermitted).toBe(false);
    expect(opts.tsOffset).toBe(-1);
    expect(opts.sackOffset).toBe(-1);
  });

  it('stops at End of Option List and ignores what follows it', () => {
    const { ok, opts } = readRaw([2, 4, 0x05, 0xb4, 0, 3, 3, 9]);
    expect(ok).toBe(true);
    expect(opts.mss).toBe(1460);
    expect(opts.windowScale).toBe(-1);
  });

  it('skips options of unknown kinds by their length', () => {
    const { ok, opts } = readRaw([30, 6, 1, 2, 3, 4, 3, 3, 4, 0]);
    expect(ok).toBe(true);
    expect(opts.windowScale).toBe(4);
  });

  it('refuses an option length of 0 or 1, which would never advance', () => {
    for (const len of [0, 1]) {
      expect(readRaw([1, 1, 30, len]).ok).toBe(false);
      expect(readRaw([8, len, 0, 0]).ok).toBe(false);
    }
  });

  it('refuses an option whose length runs past the header', () => {
    expect(readRaw([1, 1, 30, 3]).ok).toBe(false);
    expect(readRaw([1, 1, 8, 10, 0, 0, 0, 1]).ok).toBe(false);
  });

  it('refuses a kind byte with no room for its length byte', () => {
    expect(readRaw([1, 1, 1, 2]).ok).toBe(false);
  });

  it('refuses known options of the wrong length', () => {
    expect(readRaw([2, 3, 5, 0]).ok).toBe(false); // MSS must be 4
    expect(readRaw([3, 4, 7, 0]).ok).toBe(false); // WS must be 3
    expect(readRaw([4, 3, 0, 0]).ok).toBe(false); // SACK-permitted must be 2
    expect(readRaw([8, 8, 0, 0, 0, 0, 0, 0]).ok).toBe(false); // TS must be 10
  });

  it('refuses SACK options that are not 2 + 8n bytes or carry no block', () => {
    expect(readRaw([1, 1, 5, 2]).ok).toBe(false);
    expect(readRaw([1, 1, 5, 6, 0, 0, 0, 0]).ok).toBe(false);
    expect(readRaw([1, 1, 5, 12, ...new Array(10).fill(0)]).ok).toBe(false);
  });

  it('terminates and never reads past the header for any option bytes', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 40 }), (bytes) => {
        const f = decodeFrame(tcpFrame({ rawOptions: Buffer.from(bytes), payload: 'tail' }));
        const opts = new TcpOptions();
        const ok = readTcpOptions(f, opts);
        if (ok && opts.tsOffset >= 0) expect(opts.tsOffset + 8).toBeLessThanOrEqual(f.payloadOffset);
        if (ok && opts.sackOffset >= 0) expect(opts.sackOffset + 8 * opts.sackBlocks).toBeLessThanOrEqual(f.payloadOffset);
      }),
      { numRuns: 5000 },
    );
  });
});
