import fc from 'fast-check';
import { PcapFormatError, PcapRecord, UnsupportedLinkTypeError, parsePcap } from '../../../lib/io';
import { PcapngBuilder, classicPcap, ethernetFrame } from '../../support/pcap-builders';

const SEC = 1_700_000_000;

/** Runs `parse` and returns the PcapFormatError it must throw. */
function formatErrorFrom(parse: () => unknown): PcapFormatError {
  try {
    parse();
  } catch (err) {
    if (err instanceof PcapFormatError) return err;
    throw err;
  }
  throw new Error('expected a PcapFormatError, but parsing succeeded');
}

const framesOf = (records: readonly PcapRecord[]) => records.map((r) => [...r.frame]);

describe('parsePcap on classic pcap', () => {
  const frames = [ethernetFrame(1), ethernetFrame(2, 100), ethernetFrame(3, 0)];

  it('reads microsecond records as views into the file buffer, not copies', () => {
    const file = classicPcap(frames.map((frame, i) => ({ frame, sec: SEC + i, fraction: 999_999 - i })));
    const records = parsePcap(file, 'us.pcap');
    expect(framesOf(records)).toEqual(framesOf(frames.map((frame) => ({ frame, timeUs: 0, origLen: 0 }))));
    expect(records.map((r) => r.timeUs)).toEqual([0, 1, 2].map((i) => (SEC + i) * 1e6 + 999_999 - i));
    expect(records[0].frame.buffer).toBe(file.buffer);
    expect(records[0].frame.byteOffset).toBe(file.byteOffset + 24 + 16);
  });

  it('reads a big-endian file the same as the little-endian one', () => {
    const records = frames.map((frame, i) => ({ frame, sec: SEC + i, fraction: 1000 * i }));
    const little = parsePcap(classicPcap(records, { order: 'le' }), 'le.pcap');
    const big = parsePcap(classicPcap(records, { order: 'be' }), 'be.pcap');
    expect(big).toEqual(little);
    expect(big.map((r) => r.timeUs)).toEqual([0, 1, 2].map((i) => (SEC + i) * 1e6 + i * 1000));
  });

  it('truncates nanosecond timestamps to whole microseconds', () => {
    const file = classicPcap(
      [{ frame: frames[0], sec: SEC, fraction: 123_456_789 }, { frame: frames[1], sec: SEC, fraction: 999_999_999 }],
      { resolution: 'ns', order: 'be' },
    );
    expect(parsePcap(file, 'ns.pcap').map((r) => r.timeUs)).toEqual([SEC * 1e6 + 123_456, SEC * 1e6 + 999_999]);
  });

  it('reports the wire length of a snapped frame as origLen', () => {
    const [record] = parsePcap(classicPcap([{ frame: frames[1].subarray(0, 64), sec: SEC, fraction: 0, origLen: 114 }]), 'snap.pcap');
    expect(record.frame.length).toBe(64);
    expect(record.origLen).toBe(114);
  });

  it('reads a capture with a header and no records as no records', () => {
    expect(parsePcap(classicPcap([]), 'empty.pcap')).toEqual([]);
  });

  it('rejects a non-Ethernet link type, naming the file and the link type', () => {
    const err = formatErrorFrom(() => parsePcap(classicPcap([], { linkType: 113 }), 'sll.pcap'));
    expect(err).toBeInstanceOf(UnsupportedLinkTypeError);
    expect((err as UnsupportedLinkTypeError).linkType).toBe(113);
    expect(err.message).toMatch(/^sll\.pcap: link type 113 /);
  });

  it('rejects a file cut inside its last record, pointing at that record', () => {
    const file = classicPcap(frames.map((frame) => ({ frame, sec: SEC, fraction: 0 })));
    const err = formatErrorFrom(() => parsePcap(file.subarray(0, file.length - 5), 'cut.pcap'));
    expect(err.source).toBe('cut.pcap');
    expect(err.offset).toBe(file.length - 16 - frames[2].length);
    expect(err.message).toMatch(/file ends inside record 3: 9 of 14 captured bytes present/);
  });

  it('rejects a file cut inside a record header', () => {
    const file = classicPcap([{ frame: frames[0], sec: SEC, fraction: 0 }]);
    const err = formatErrorFrom(() => parsePcap(file.subarray(0, 24 + 10), 'cut.pcap'));
    expect(err.offset).toBe(24);
    expect(err.message).toMatch(/inside a record header/);
  });

  it('rejects bytes that are neither pcap nor pcapng', () => {
    expect(formatErrorFrom(() => parsePcap(Buffer.from('GET / HTTP/1.1\r\n'), 'http.txt')).message).toMatch(/magic 0x47455420/);
    expect(formatErrorFrom(() => parsePcap(Buffer.alloc(2), 'tiny')).offset).toBe(0);
  });

  it('returns every record or throws PcapFormatError wherever the file is cut', () => {
    const file = classicPcap(frames.map((frame) => ({ frame, sec: SEC, fraction: 0 })));
    const boundaries = new Map([[24, 0], [24 + 16 + 60, 1], [24 + 32 + 60 + 114, 2], [file.length, 3]]);
    for (let cut = 0; cut <= file.length; cut++) {
      const whole = boundaries.get(cut);
      if (whole === undefined) formatErrorFrom(() => parsePcap(file.subarray(0, cut), 'cut.pcap'));
      else expect(parsePcap(file.subarray(0, cut), 'cut.pcap')).toHaveLength(whole);
    }
  });
});

describe('parsePcap on pcapng', () => {
  const a = ethernetFrame(10);
  const b = ethernetFrame(11, 101); // odd length: exercises block padding
  const c = ethernetFrame(12, 20);

  it('converts each interface timestamp with its own if_tsresol, and gives an SPB the last time seen', () => {
    const file = new PcapngBuilder()
      .section()
      .iface({ tsresol: 9 }) // nanoseconds
      .iface({ tsresol: 0x80 | 20 }) // 2^-20 s
      .epb(0, BigInt(SEC) * 1_000_000_000n + 123_456_789n, a)
      .epb(1, (BigInt(SEC) << 20n) + (1n << 19n), b) // half a second
      .spb(c)
      .build();
    const records = parsePcap(file, 'two-ifaces.pcapng');
    expect(framesOf(records)).toEqual([[...a], [...b], [...c]]);
    expect(records.map((r) => r.timeUs)).toEqual([SEC * 1e6 + 123_456, SEC * 1e6 + 500_000, SEC * 1e6 + 500_000]);
  });

  it('reads microseconds when an interface has no if_tsresol, and adds if_tsoffset', () => {
    const file = new PcapngBuilder()
      .section()
      .iface()
      .iface({ tsresol: 3, tsoffsetSec: BigInt(SEC) }) // milliseconds since SEC
      .epb(0, BigInt(SEC) * 1_000_000n + 7n, a)
      .epb(1, 1_500n, b)
      .build();
    expect(parsePcap(file, 'offset.pcapng').map((r) => r.timeUs)).toEqual([SEC * 1e6 + 7, (SEC + 1) * 1e6 + 500_000]);
  });

  it('cuts an SPB frame at the interface snaplen, not at its block padding, and keeps its wire length', () => {
    const [record] = parsePcap(new PcapngBuilder().section().iface({ snapLen: 30 }).spb(b.subarray(0, 30), b.length).build(), 'spb.pcapng');
    expect([...record.frame]).toEqual([...b.subarray(0, 30)]);
    expect(record.origLen).toBe(b.length);
  });

  it('reads sections of either byte order, each with its own interfaces', () => {
    const file = new PcapngBuilder()
      .section('be').iface({ tsresol: 9 }).epb(0, 5_000n, a)
      .section('le').iface().epb(0, 5_000n, b)
      .build();
    const records = parsePcap(file, 'sections.pcapng');
    expect(framesOf(records)).toEqual([[...a], [...b]]);
    expect(records.map((r) => r.timeUs)).toEqual([5, 5_000]);
  });

  it('skips block types it does not know', () => {
    const file = new PcapngBuilder()
      .section().iface()
      .block(5, Buffer.alloc(24)) // interface statistics
      .block(0x40000bad, Buffer.from('custom!!'))
      .epb(0, 1n, a)
      .build();
    expect(framesOf(parsePcap(file, 'unknown.pcapng'))).toEqual([[...a]]);
  });

  it('rejects a zero block length instead of looping forever', () => {
    const file = new PcapngBuilder().section().iface().block(6, Buffer.alloc(0), 0).build();
    const err = formatErrorFrom(() => parsePcap(file, 'zero.pcapng'));
    expect(err.offset).toBe(28 + 20);
    expect(err.message).toMatch(/block type 0x6 has length 0/);
  });

  it('rejects block lengths under 12 or not a multiple of 4', () => {
    for (const length of [4, 8, 13]) {
      const file = new PcapngBuilder().section().block(6, Buffer.alloc(4), length).build();
      expect(formatErrorFrom(() => parsePcap(file, 'bad-length.pcapng')).message).toMatch(`has length ${length}`);
    }
  });

  it('rejects a file cut inside its last block, pointing at that block', () => {
    const file = new PcapngBuilder().section().iface().epb(0, 1n, a).epb(0, 2n, b).build();
    const err = formatErrorFrom(() => parsePcap(file.subarray(0, file.length - 1), 'cut.pcapng'));
    expect(err.offset).toBe(file.length - (32 + 116));
    expect(err.message).toMatch(/file ends inside block type 0x6: 147 of 148 bytes present/);
  });

  it('rejects a block whose trailing length disagrees with its leading length', () => {
    const file = new PcapngBuilder().section().iface().epb(0, 1n, a).build();
    file.writeUInt32LE(999, file.length - 4);
    expect(formatErrorFrom(() => parsePcap(file, 'mismatch.pcapng')).message).toMatch(/trailing length 999, leading length/);
  });

  it('rejects a packet on an interface the section has not described', () => {
    const file = new PcapngBuilder().section().iface().epb(1, 1n, a).build();
    expect(formatErrorFrom(() => parsePcap(file, 'no-iface.pcapng')).message).toMatch(/interface 1, but this section describes 1/);
  });

  it('forgets the previous section interfaces at a new section header', () => {
    const file = new PcapngBuilder().section().iface().section().epb(0, 1n, a).build();
    expect(formatErrorFrom(() => parsePcap(file, 'forgot.pcapng')).message).toMatch(/describes 0/);
  });

  it('rejects a packet on a non-Ethernet interface, naming the link type and interface', () => {
    const file = new PcapngBuilder().section().iface().iface({ linkType: 101 }).epb(0, 1n, a).epb(1, 2n, b).build();
    const err = formatErrorFrom(() => parsePcap(file, 'raw.pcapng'));
    expect(err).toBeInstanceOf(UnsupportedLinkTypeError);
    expect(err.message).toMatch(/^raw\.pcapng: link type 101 on interface 1 is not Ethernet/);
  });

  it('rejects a section header with an unknown byte-order magic', () => {
    const file = new PcapngBuilder().section().build();
    file.writeUInt32LE(0xdeadbeef, 8);
    expect(formatErrorFrom(() => parsePcap(file, 'order.pcapng')).message).toMatch(/byte-order magic 0xdeadbeef/);
  });
});

describe('parsePcap on damaged files', () => {
  const pcapng = new PcapngBuilder().section().iface({ tsresol: 9, snapLen: 64 }).epb(0, 123n, ethernetFrame(1)).spb(ethernetFrame(2)).block(5, Buffer.alloc(8)).build();
  const classic = classicPcap([{ frame: ethernetFrame(1), sec: SEC, fraction: 5 }, { frame: ethernetFrame(2), sec: SEC, fraction: 6 }]);

  it.each([['pcapng', pcapng], ['classic pcap', classic]])('throws nothing but PcapFormatError on damaged %s', (_kind, file) => {
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.nat(file.length - 1), fc.integer({ min: 0, max: 255 })), { maxLength: 6 }), fc.nat(file.length), (edits, cut) => {
        const damaged = Buffer.from(file);
        for (const [at, value] of edits) damaged[at] = value;
        try {
          parsePcap(damaged.subarray(0, cut), 'damaged');
        } catch (err) {
          if (!(err instanceof PcapFormatError)) throw err;
        }
      }),
      { numRuns: 2000 },
    );
  });
});
