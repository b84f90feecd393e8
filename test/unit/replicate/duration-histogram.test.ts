import { DurationHistogram } from '../../../lib/replicate/duration-histogram';

describe('DurationHistogram', () => {
  it('counts each observation in every bucket whose bound it does not exceed', () => {
    const h = new DurationHistogram([0.01, 0.1, 1]);
    for (const s of [0.005, 0.01, 0.05, 2]) h.observe(s);
    expect(h.snapshot()).toEqual({ buckets: [[0.01, 2], [0.1, 3], [1, 3]], sum: 2.065, count: 4 });
  });

  it('ignores negative and non-finite durations', () => {
    const h = new DurationHistogram([1]);
    h.observe(-1);
    h.observe(NaN);
    h.observe(Infinity);
    expect(h.snapshot()).toEqual({ buckets: [[1, 0]], sum: 0, count: 0 });
  });

  it('refuses bounds that do not ascend', () => {
    expect(() => new DurationHistogram([1, 1])).toThrow(/ascend/);
  });
});
