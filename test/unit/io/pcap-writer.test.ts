import fc from 'fast-check';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PCAP_SNAPLEN, PcapWriteError, PcapWriter, PcapWriterPort, PortUsageError, readPcapFile, writePcapFile } from '../../../lib/io';
import { ethernetFrame } from '../../support/pcap-builders';

const T0 = 1_700_000_000_000_000; // µs

let dir: string;
beforeAll(() => { dir = mkdtempSync(join(tmpdir(), 'shadowvm-io-')); });
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('PcapWriter', () => {
  it('writes the classic header libpcap expects: µs magic, little-endian, v2.4, snaplen 262144, Ethernet', () => {
    const path = join(dir, 'header.pcap');
    new PcapWriter(path).close();
    const header = readFileSync(path);
    expect(header.length).toBe(24);
    expect(header.readUInt32LE(0)).toBe(0xa1b2c3d4);
    expect([header.readUInt16LE(4), header.readUInt16LE(6)]).toEqual([2, 4]);
    expect(header.readUInt32LE(16)).toBe(262144);
    expect(header.readUInt32LE(20)).toBe(1);
  });

  it('round-trips frames byte for byte and timestamps to the microsecond', () => {
    const path = join(dir, 'roundtrip.pcap');
    const record = fc.record({
      frame: fc.uint8Array({ minLength: 0, maxLength: 1600 }).map((bytes) => Buffer.from(bytes)),
      timeUs: fc.integer({ min: 0, max: 0xffffffff * 1e6 + 999_999 }),
    });
    fc.assert(
      fc.property(fc.array(record, { maxLength: 40 }), (records) => {
        writePcapFile(path, records);
        const back = readPcapFile(path);
        expect(back.map((r) => r.timeUs)).toEqual(records.map((r) => r.timeUs));
        expect(back.map((r) => r.frame.toString('hex'))).toEqual(records.map((r) => r.frame.toString('hex')));
        expect(back.map((r) => r.origLen)).toEqual(records.map((r) => r.frame.length));
      }),
      { numRuns: 200 },
    );
  });

  it('writes fifty thousand frames in well under a second or two', () => {
    const path = join(dir, 'many.pcap');
    const frames = Array.from({ length: 16 }, (_, i) => ethernetFrame(i, 46 + i * 90));
    const started = process.hrtime.bigint();
    const writer = new PcapWriter(path);
    for (let i = 0; i < 50_000; i++) writer.write(frames[i % 16], T0 + i);
    writer.close();
    const elapsedMs = Number(process.hrtime.bigint() - started) / 1e6;
    const back = readPcapFile(path);
    expect(back).toHaveLength(50_000);
    expect(back[49_999].timeUs).toBe(T0 + 49_999);
    expect(back[49_999].frame.equals(frames[49_999 % 16])).toBe(true);
    expect(elapsedMs).toBeLessThan(2000);
  });

  it('keeps the first snaplen bytes of an oversized frame and records its full length', () => {
    const path = join(dir, 'snap.pcap');
    const huge = Buffer.alloc(PCAP_SNAPLEN + 100, 0xab);
    writePcapFile(path, [{ frame: huge, timeUs: T0 }]);
    const [record] = readPcapFile(path);
    expect(record.frame.length).toBe(PCAP_SNAPLEN);
    expect(record.origLen).toBe(PCAP_SNAPLEN + 100);
  });

  it('stores fractional microseconds rounded down', () => {
    const path = join(dir, 'fraction.pcap');
    writePcapFile(path, [{ frame: ethernetFrame(1), timeUs: 1_234_567.9 }]);
    expect(readPcapFile(path)[0].timeUs).toBe(1_234_567);
  });

  it('rejects times before the epoch or beyond pcap unsigned 32-bit seconds, naming the file', () => {
    const writer = new PcapWriter(join(dir, 'range.pcap'));
    expect(() => writer.write(ethernetFrame(1), -1)).toThrow(PcapWriteError);
    expect(() => writer.write(ethernetFrame(1), 2 ** 32 * 1e6)).toThrow(/range\.pcap: time 4294967296000000 µs does not fit/);
    expect(() => writer.write(ethernetFrame(1), NaN)).toThrow(PcapWriteError);
    writer.close();
  });

  it('refuses to write after close, and closing twice is harmless', () => {
    const writer = new PcapWriter(join(dir, 'closed.pcap'));
    writer.close();
    writer.close();
    expect(() => writer.write(ethernetFrame(1), T0)).toThrow(/write after close/);
  });
});

describe('PcapWriterPort', () => {
  it('records each sent frame stamped by its clock, and never delivers a batch', async () => {
    const path = join(dir, 'port.pcap');
    let now = T0;
    const port = new PcapWriterPort(path, () => (now += 10));
    const receiver = jest.fn();
    port.onBatch(receiver);
    port.send(ethernetFrame(1));
    port.send(ethernetFrame(2, 200));
    await port.close();
    const records = readPcapFile(path);
    expect(records.map((r) => r.timeUs)).toEqual([T0 + 10, T0 + 20]);
    expect(records[1].frame.equals(ethernetFrame(2, 200))).toBe(true);
    expect(receiver).not.toHaveBeenCalled();
    expect(port.stats()).toMatchObject({ txFrames: 2, txBytes: 60 + 214, rxFrames: 0 });
  });

  it('puts sent frames on disk at flush, before close', async () => {
    const path = join(dir, 'flush.pcap');
    const port = new PcapWriterPort(path);
    port.send(ethernetFrame(1));
    expect(readPcapFile(path)).toHaveLength(0);
    port.flush();
    expect(readPcapFile(path)).toHaveLength(1);
    await port.close();
  });

  it('stamps with the wall clock in microseconds by default', async () => {
    const path = join(dir, 'wallclock.pcap');
    const port = new PcapWriterPort(path);
    const before = Date.now() * 1000;
    port.send(ethernetFrame(1));
    await port.close();
    const [record] = readPcapFile(path);
    expect(record.timeUs).toBeGreaterThanOrEqual(before);
    expect(record.timeUs).toBeLessThanOrEqual(Date.now() * 1000);
  });

  it('refuses to send after close', async () => {
    const port = new PcapWriterPort(join(dir, 'closed-port.pcap'));
    await port.close();
    expect(() => port.send(ethernetFrame(1))).toThrow(PortUsageError);
  });

  it('counts a frame it cannot record as a transmit error', async () => {
    const port = new PcapWriterPort(join(dir, 'bad-clock.pcap'), () => -5);
    expect(() => port.send(ethernetFrame(1))).toThrow(PcapWriteError);
    expect(port.stats()).toMatchObject({ txFrames: 0, txErrors: 1 });
    await port.close();
  });
});
