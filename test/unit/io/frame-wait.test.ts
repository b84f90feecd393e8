import { FrameWait, FRAME_WAIT_BUCKETS_SECONDS } from '../../../lib/io/frame-wait';

describe('FrameWait', () => {
  let now = 1_700_000_000_000_000;
  const clock = () => now;

  beforeEach(() => {
    now = 1_700_000_000_000_000;
  });

  test('a breath counts the wait of its oldest frame, into the histogram and the maxima', () => {
    const w = new FrameWait(clock);
    w.observe(now - 300);
    w.observe(now - 12_000);
    const s = w.snapshot();
    expect(s.seconds.count).toBe(2);
    expect(s.seconds.sum).toBeCloseTo(0.0123, 6);
    const le = (b: number) => s.seconds.buckets.find(([x]) => x === b)![1];
    expect(le(0.0005)).toBe(1);
    expect(le(0.01)).toBe(1);
    expect(le(0.025)).toBe(2);
    expect(s.maxMs).toBeCloseTo(12, 6);
    expect(s.maxLast10sMs).toBeCloseTo(12, 6);
    expect(s.over10ms).toBe(1);
    expect(s.seconds.buckets.map(([b]) => b)).toEqual(FRAME_WAIT_BUCKETS_SECONDS);
  });

  test('negative and absurd waits (a clock step, a foreign timestamp) are not counted', () => {
    const w = new FrameWait(clock);
    w.observe(now + 5_000);
    w.observe(now - 120_000_000);
    w.observe(Number.NaN);
    expect(w.snapshot().seconds.count).toBe(0);
    expect(w.snapshot().maxMs).toBe(0);
  });

  test('the recent maxima age out; the per-second list keeps the last minute in order', () => {
    const w = new FrameWait(clock);
    w.observe(now - 40_000); // 40 ms, second 0
    now += 5_000_000;
    w.observe(now - 2_000); // 2 ms, second 5
    let s = w.snapshot();
    expect(s.maxLast10sMs).toBeCloseTo(40, 6);
    now += 8_000_000; // second 13: the 40 ms is older than 10 s
    s = w.snapshot();
    expect(s.maxLast10sMs).toBeCloseTo(2, 6);
    expect(s.maxLast60sMs).toBeCloseTo(40, 6);
    expect(s.perSecond.map(([, ms]) => ms)).toEqual([40, 2]);
    expect(s.perSecond[1][0] - s.perSecond[0][0]).toBe(5);
    now += 60_000_000;
    s = w.snapshot();
    expect(s.maxLast60sMs).toBe(0);
    expect(s.perSecond).toEqual([]);
    expect(s.maxMs).toBeCloseTo(40, 6); // since start
  });

  test('a slot reused a minute later starts from nothing', () => {
    const w = new FrameWait(clock);
    w.observe(now - 30_000);
    now += 60_000_000;
    w.observe(now - 1_000);
    expect(w.snapshot().perSecond).toEqual([[Math.floor(now / 1e6), 1]]);
  });
});
