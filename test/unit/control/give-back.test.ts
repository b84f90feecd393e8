/**
 * The memory give-back: when a full collection runs (the table shrank well
 * below its peak, a quiet moment or a long wait, never too often), and that
 * the runtime's own full collection really frees what nothing references.
 */
import { getHeapStatistics } from 'node:v8';
import { DEFAULT_GIVE_BACK, MemoryGiveBack, fullCollection } from '../../../lib/control/give-back';

const S = 1_000_000; // µs per second

function rig(config = DEFAULT_GIVE_BACK) {
  const runs: number[] = [];
  const logs: Record<string, unknown>[] = [];
  const pending: (() => void)[] = [];
  let rss = 300 << 20;
  const g = new MemoryGiveBack(config, () => { runs.push(1); rss = 100 << 20; }, (_e, f) => logs.push(f), () => rss, (fn) => pending.push(fn));
  return { g, runs, logs, settle: () => pending.splice(0).forEach((fn) => fn()) };
}

describe('memory give-back', () => {
  it('collects once the table has fallen a quarter and minFlows below its peak and the data path is quiet', () => {
    const r = rig();
    expect(r.g.tick(1 * S, 100_000, 1 * S)).toBe(false); // the peak
    expect(r.g.tick(2 * S, 80_000, 2 * S)).toBe(false); // 20k below: not a quarter
    expect(r.g.tick(3 * S, 70_000, 3 * S)).toBe(false); // shrunk, but a frame just now
    expect(r.g.tick(3 * S + 150_000, 70_000, 3 * S)).toBe(true); // 150 ms without a frame
    expect(r.runs).toHaveLength(1);
    r.settle();
    expect(r.logs[0]).toMatchObject({ flowsPeak: 100_000, flows: 70_000, forced: false, rssBeforeMiB: 300, rssAfterMiB: 100 });
    expect(r.g.last.freedBytes).toBe(200 << 20);
  });

  it('never collects for a small table, nor twice within minIntervalMs; the peak starts again from what is left', () => {
    const r = rig();
    r.g.tick(1 * S, 9_000, 0);
    expect(r.g.tick(2 * S, 0, 0)).toBe(false); // 9k below the peak: under minFlows
    r.g.tick(3 * S, 100_000, 0);
    expect(r.g.tick(4 * S, 10_000, 0)).toBe(true);
    r.g.tick(5 * S, 60_000, 0);
    expect(r.g.tick(6 * S, 0, 0)).toBe(false); // 60k below the new peak, but within 10 s of the last run
    expect(r.g.tick(14 * S, 0, 0)).toBe(true);
    expect(r.g.counters.runs).toBe(2);
  });

  it('collects anyway after forceAfterMs without a quiet moment, and counts it as forced', () => {
    const r = rig({ ...DEFAULT_GIVE_BACK, forceAfterMs: 10_000 });
    r.g.tick(1 * S, 50_000, 1 * S);
    let t = 2 * S;
    for (; t < 11 * S; t += S) expect(r.g.tick(t, 20_000, t)).toBe(false);
    expect(r.g.tick(12 * S, 20_000, 12 * S)).toBe(true);
    expect(r.g.counters.forced).toBe(1);
  });

  it('does nothing with minFlows 0, or without a collector', () => {
    const off = rig({ ...DEFAULT_GIVE_BACK, minFlows: 0 });
    off.g.tick(1 * S, 100_000, 0);
    expect(off.g.tick(2 * S, 0, 0)).toBe(false);
    const none = new MemoryGiveBack(DEFAULT_GIVE_BACK, null, () => {});
    none.tick(1 * S, 100_000, 0);
    expect(none.tick(2 * S, 0, 0)).toBe(false);
  });

  it('the runtime\'s full collection frees garbage an idle heap would keep', () => {
    const collect = fullCollection();
    expect(collect).not.toBeNull();
    collect!();
    const base = process.memoryUsage().heapUsed;
    let junk: object[] | null = Array.from({ length: 300_000 }, (_, i) => ({ i, s: `flow ${i}` }));
    expect(process.memoryUsage().heapUsed - base).toBeGreaterThan(10 << 20);
    junk = null;
    collect!();
    expect(process.memoryUsage().heapUsed - base).toBeLessThan(2 << 20);
    expect(junk).toBeNull();
  });

  it('gives the heap\'s pages back even when a few objects on each stay alive (a flood\'s survivors)', () => {
    const collect = fullCollection()!;
    collect();
    const size = () => getHeapStatistics().total_heap_size;
    const base = size();
    let junk: Map<string, object> | null = new Map();
    const survivors: object[] = [];
    for (let i = 0; i < 200_000; i++) {
      const o = { a: i, b: [i, i + 1], c: { d: i }, e: new Array(8).fill(i) };
      junk.set(`k${i}`, o);
      if (i % 40 === 0) survivors.push(o);
    }
    const grown = size() - base;
    expect(grown).toBeGreaterThan(40 << 20);
    junk = null;
    collect();
    // One collection alone left most of the growth committed (pages with a survivor each); two give most of it back.
    expect(size() - base).toBeLessThan(grown / 2);
    expect(survivors).toHaveLength(5000);
    expect(junk).toBeNull();
  });
});
