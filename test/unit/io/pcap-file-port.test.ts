import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PcapFilePort, PcapFormatError, PortUsageError, ReceivedFrame, writePcapFile } from '../../../lib/io';
import { classicPcap, ethernetFrame } from '../../support/pcap-builders';

const T0 = 1_700_000_000_000_000;

let dir: string;
let path: string;
const frames = [ethernetFrame(1), ethernetFrame(2, 80), ethernetFrame(3, 10)];
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'shadowvm-io-'));
  path = join(dir, 'capture.pcap');
  writePcapFile(path, frames.map((frame, i) => ({ frame, timeUs: T0 + i })));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Collects what a port delivers, batch by batch, copying as a stage that keeps frames must. */
function batchesFrom(port: PcapFilePort): ReceivedFrame[][] {
  const batches: ReceivedFrame[][] = [];
  port.onBatch((batch) => batches.push(batch.map((f) => ({ frame: Buffer.from(f.frame), timeUs: f.timeUs }))));
  return batches;
}

describe('PcapFilePort', () => {
  it('offers the capture records in file order', () => {
    const port = new PcapFilePort(path);
    expect(port.records().map((r) => r.timeUs)).toEqual([T0, T0 + 1, T0 + 2]);
    expect(port.name).toBe(`pcap:${path}`);
  });

  it('replays the whole capture as one batch and counts it as received', () => {
    const port = new PcapFilePort(path);
    const batches = batchesFrom(port);
    expect(port.replay()).toBe(3);
    expect(batches).toHaveLength(1);
    expect(batches[0].map((f) => f.frame)).toEqual(frames);
    expect(port.stats()).toMatchObject({ rxFrames: 3, rxBytes: 60 + 94 + 24, txFrames: 0 });
  });

  it('replays in batches of the requested size', () => {
    const port = new PcapFilePort(path);
    const batches = batchesFrom(port);
    port.replay(2);
    expect(batches.map((b) => b.length)).toEqual([2, 1]);
  });

  it('refuses to send, because a capture file is read-only', () => {
    const port = new PcapFilePort(path, 'client-side');
    expect(() => port.send(frames[0])).toThrow(new PortUsageError('client-side', 'a capture file is read-only; use PcapWriterPort to record sent frames'));
    expect(port.stats().txErrors).toBe(0);
  });

  it('refuses to replay with no receiver, or after close', async () => {
    const port = new PcapFilePort(path);
    expect(() => port.replay()).toThrow(/no receiver/);
    port.onBatch(() => {});
    await port.close();
    expect(() => port.replay()).toThrow(/after close/);
  });

  it('fails at construction on a damaged file, naming it', () => {
    const damaged = join(dir, 'damaged.pcap');
    writeFileSync(damaged, classicPcap([{ frame: frames[0], sec: 1, fraction: 0 }]).subarray(0, 50));
    expect(() => new PcapFilePort(damaged)).toThrow(PcapFormatError);
    expect(() => new PcapFilePort(damaged)).toThrow(damaged);
  });
});
