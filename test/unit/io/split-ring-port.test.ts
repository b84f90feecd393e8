/**
 * SplitRingPort's pieces: the length filters that put every frame in exactly
 * one of its two rings (run by the same BPF interpreter the shard filters'
 * tests use), each ring's options, and a port made of two in-memory ports.
 */
import { runFilter } from '../../../lib/dataplane/shard';
import { fanoutBound, LARGE_RING_FRAMES, lengthFilter, SMALL_FRAME_MAX, SMALL_RING_FRAMES, splitBound, SplitRingPort, splitRingOptions } from '../../../lib/io/split-ring-port';
import { BatchReceiver, emptyPortStats, PacketPort, PortStats } from '../../../lib/io/port';
import { mergeByArrival } from '../../../lib/io/afpacket-port';

class FakePort implements PacketPort {
  receiver: BatchReceiver | null = null;
  sent: Buffer[] = [];
  flushed = 0;
  closed = false;
  inline: boolean[] = [];
  constructor(readonly name: string, readonly ring: PacketPort['ring'], private readonly counts: Partial<PortStats>) {}
  onBatch(r: BatchReceiver): void { this.receiver = r; }
  send(frame: Buffer): void { this.sent.push(frame); }
  flush(): void { this.flushed++; }
  stats(): PortStats { return { ...emptyPortStats(), ...this.counts }; }
  setInlineSends(on: boolean): void { this.inline.push(on); }
  async close(): Promise<void> { this.closed = true; }
}

describe('the split rings\' length filters', () => {
  const small = lengthFilter(SMALL_FRAME_MAX, false);
  const large = lengthFilter(SMALL_FRAME_MAX, true);
  it.each([60, 1514, SMALL_FRAME_MAX, SMALL_FRAME_MAX + 1, 9018, 65_000])('puts a %i-byte frame in exactly one ring', (len) => {
    const frame = new Uint8Array(len);
    const inSmall = runFilter(small, frame) > 0, inLarge = runFilter(large, frame) > 0;
    expect(inSmall).toBe(len <= SMALL_FRAME_MAX);
    expect(inLarge).toBe(!inSmall);
  });
});

describe('splitRingOptions', () => {
  it('gives the small ring 2 KiB slots and the large one the default (super-frame) slots, each with its filter; the one-ring size does not apply, an asked one sizes the small ring', () => {
    const { small, large } = splitRingOptions({ vnetHdr: true, ringFrames: 512, sendThread: true, busyPollUs: 0 });
    expect(small).toMatchObject({ vnetHdr: true, frameSize: 2048, ringFrames: SMALL_RING_FRAMES, sendThread: true });
    expect(large).toMatchObject({ vnetHdr: true, ringFrames: LARGE_RING_FRAMES, sendThread: false });
    expect(large.frameSize).toBeUndefined();
    expect(Buffer.compare(Buffer.from(small.filter!), lengthFilter(SMALL_FRAME_MAX, false))).toBe(0);
    expect(Buffer.compare(Buffer.from(large.filter!), lengthFilter(SMALL_FRAME_MAX, true))).toBe(0);
    const asked = splitRingOptions({ vnetHdr: true, ringFrames: 512 }, 1024);
    expect([asked.small.ringFrames, asked.large.ringFrames, asked.bound]).toEqual([1024, LARGE_RING_FRAMES, SMALL_FRAME_MAX]);
    // run --large-ring-frames sizes the large ring (0: the default).
    expect(splitRingOptions({ vnetHdr: true }, 1024, 1500, 40).large.ringFrames).toBe(40);
    expect(splitRingOptions({ vnetHdr: true }, 1024, 1500, 0).large.ringFrames).toBe(LARGE_RING_FRAMES);
  });

  it('on a jumbo MTU sizes the small ring\'s slots for its frames (8 MiB of them), so only GSO super-frames go to the large ring', () => {
    expect([splitBound(1500), splitBound(1898), splitBound(1899), splitBound(9000)]).toEqual([SMALL_FRAME_MAX, SMALL_FRAME_MAX, 1921, 9022]);
    const jumbo = splitRingOptions({ vnetHdr: true }, undefined, 9000);
    expect(jumbo.bound).toBe(9022);
    expect(jumbo.small.frameSize).toBeGreaterThanOrEqual(9022 + 94);
    expect(jumbo.small.ringFrames! * jumbo.small.frameSize!).toBeLessThanOrEqual(8 << 20);
    expect(jumbo.small.ringFrames).toBeGreaterThan(512); // more slots for MTU-sized frames than one ring of super-frame slots had
    // A tagged 9,000-byte frame (9,022 bytes) is the small ring's; one byte more, the large one's.
    expect(runFilter(Buffer.from(jumbo.small.filter!), new Uint8Array(9022))).toBeGreaterThan(0);
    expect(runFilter(Buffer.from(jumbo.large.filter!), new Uint8Array(9022))).toBe(0);
    expect(runFilter(Buffer.from(jumbo.large.filter!), new Uint8Array(9023))).toBeGreaterThan(0);
    expect(fanoutBound(jumbo.bound)).toBe(9008);
    const standard = splitRingOptions({ vnetHdr: true }, undefined, 1500);
    expect([standard.small.frameSize, standard.small.ringFrames, standard.bound]).toEqual([2048, SMALL_RING_FRAMES, SMALL_FRAME_MAX]);
  });
});

describe('SplitRingPort', () => {
  const small = () => new FakePort('tap0', { frames: 4096, frameSize: 2048, blockSize: 1 << 16 }, { rxFrames: 10, rxDrops: 1, txFrames: 7, txSyncMaxUs: 5 } as Partial<PortStats>);
  const large = () => new FakePort('tap0', { frames: 155, frameSize: 65_632, blockSize: 1 << 17 }, { rxFrames: 3, rxDrops: 2, txFrames: 0, txSyncMaxUs: 9 } as Partial<PortStats>);
  it('reads both rings into one receiver, sends through the small ring\'s socket, adds up the counters and closes both', async () => {
    const s = small(), l = large();
    const p = new SplitRingPort(s, l);
    const got: number[] = [];
    p.onBatch((frames) => got.push(frames.length));
    s.receiver!([{ frame: Buffer.alloc(60), timeUs: 1 }]);
    l.receiver!([{ frame: Buffer.alloc(30_000), timeUs: 2 }, { frame: Buffer.alloc(30_000), timeUs: 3 }]);
    expect(got).toEqual([1, 2]);
    p.send(Buffer.alloc(60));
    p.flush();
    expect([s.sent.length, l.sent.length, s.flushed, l.flushed]).toEqual([1, 0, 1, 0]);
    const st = p.stats() as PortStats & { txSyncMaxUs: number; rxLargeFrames: number };
    expect([st.rxFrames, st.rxDrops, st.txFrames, st.txSyncMaxUs]).toEqual([13, 3, 7, 9]);
    expect(st.rxLargeFrames).toBe(3);
    p.setInlineSends(false);
    expect([s.inline, l.inline]).toEqual([[false], [false]]);
    expect(p.ring).toMatchObject({ frames: 4096, frameSize: 2048, large: { frames: 155, frameSize: 65_632 } });
    // Whole blocks: 4096 slots of 2 KiB in 64 KiB blocks, 155 of 65,632 B in 128 KiB blocks (one a block).
    expect(p.ring.bytes).toBe(4096 * 2048 + 155 * (1 << 17));
    await p.close();
    expect([s.closed, l.closed]).toEqual([true, true]);
  });
});

describe('mergeByArrival (a pair of rings read as one)', () => {
  const f = (timeUs: number, tag: string) => ({ frame: Buffer.from(tag), timeUs });
  const tags = (frames: readonly { frame: Buffer }[]) => frames.map((x) => x.frame.toString());
  it('interleaves two batches by arrival time, then by the nanoseconds below the microsecond', () => {
    const large = [f(10, 'L1'), f(12, 'L2'), f(12, 'L3'), f(30, 'L4')];
    const small = [f(9, 's1'), f(11, 's2'), f(12, 's3'), f(40, 's4')];
    // L2 at 12 µs + 100 ns, s3 at 12 µs + 500 ns, L3 at 12 µs + 900 ns.
    expect(tags(mergeByArrival(large, [0, 100, 900, 0], small, [0, 0, 500, 0]))).toEqual(['s1', 'L1', 's2', 'L2', 's3', 'L3', 'L4', 's4']);
  });
  it('on an exact tie puts the second batch\'s frame first; an empty side gives the other batch as it is', () => {
    expect(tags(mergeByArrival([f(5, 'a')], [7], [f(5, 'b')], [7]))).toEqual(['b', 'a']);
    const only = [f(1, 'x'), f(2, 'y')];
    expect(mergeByArrival([], [], only, [0, 0])).toBe(only);
    expect(mergeByArrival(only, [0, 0], [], [])).toBe(only);
  });
  it('keeps every frame of random batches, in time order', () => {
    for (let round = 0; round < 50; round++) {
      const make = (n: number, tag: string) => Array.from({ length: n }, () => Math.floor(Math.random() * 100)).sort((x, y) => x - y).map((t, i) => f(t, `${tag}${i}`));
      const a = make(Math.floor(Math.random() * 20), 'a'), b = make(Math.floor(Math.random() * 20), 'b');
      const out = mergeByArrival(a, a.map(() => 0), b, b.map(() => 0));
      expect(out.length).toBe(a.length + b.length);
      expect(out.map((x) => x.timeUs)).toEqual([...a, ...b].map((x) => x.timeUs).sort((x, y) => x - y));
      expect(tags(out.filter((x) => x.frame.toString().startsWith('a')))).toEqual(tags(a));
    }
  });
});
