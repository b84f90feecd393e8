import { matches, selectorsOf, seriesOf } from '../../support/promql';

describe('selectorsOf (the dashboard test\'s PromQL reader)', () => {
  it('finds metric names inside functions and aggregations, not function names, grouping labels or ranges', () => {
    const s = selectorsOf('histogram_quantile(0.99, sum by (le) (rate(shadowvm_checkpoint_duration_seconds_bucket{instance=~"$instance"}[$__rate_interval])))');
    expect(s).toEqual([{ metric: 'shadowvm_checkpoint_duration_seconds_bucket', matchers: [{ label: 'instance', op: '=~', value: '$instance' }] }]);
  });

  it('reads every operand of a binary expression and skips string contents', () => {
    const s = selectorsOf('sum(rate(a_sum[5m])) / sum(rate(a_count{x="b_total (no)"}[5m])) > 0 and on (job) up');
    expect(s.map((x) => x.metric)).toEqual(['a_sum', 'a_count', 'up']);
  });

  it('reads regex and negative matchers', () => {
    expect(selectorsOf('m{stage="ingress",counter=~"stray_.*",x!="y"}')[0].matchers.map((x) => x.op)).toEqual(['=', '=~', '!=']);
  });
});

describe('seriesOf and matches', () => {
  const series = seriesOf('# HELP m x\n# TYPE m counter\nm{stage="ingress",counter="stray_no_flow"} 0\nm{stage="compare",counter="mismatches"} 2\n');
  it('matches a regex against the whole label value', () => {
    expect(series.filter((s) => matches(s, { label: 'counter', op: '=~', value: 'stray_.*' })).length).toBe(1);
    expect(series.filter((s) => matches(s, { label: 'counter', op: '=~', value: 'stray' })).length).toBe(0);
  });
});
