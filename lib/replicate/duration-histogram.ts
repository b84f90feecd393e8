/**
 * A cumulative histogram of durations in seconds, in the shape Prometheus
 * wants for a `histogram` family: a count per upper bound (`le`), the sum and
 * the count. Fixed buckets, O(buckets) per observation, nothing else kept.
 */

/** From a 5 ms lab checkpoint to a QEMU full copy of a few GiB. */
export const CHECKPOINT_DURATION_BUCKETS_SECONDS: readonly number[] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

export interface HistogramSnapshot {
  /** [upper bound, observations ≤ it], ascending; the +Inf bucket is `count`. */
  buckets: [number, number][];
  sum: number;
  count: number;
}

export class DurationHistogram {
  private readonly counts: number[];
  sum = 0;
  count = 0;

  constructor(readonly bounds: readonly number[] = CHECKPOINT_DURATION_BUCKETS_SECONDS) {
    for (let i = 1; i < bounds.length; i++) {
      if (!(bounds[i] > bounds[i - 1])) throw new Error(`histogram bounds must ascend: ${bounds.join(', ')}`);
    }
    this.counts = bounds.map(() => 0);
  }

  observe(seconds: number): void {
    if (!Number.isFinite(seconds) || seconds < 0) return;
    this.sum += seconds;
    this.count++;
    for (let i = 0; i < this.bounds.length; i++) if (seconds <= this.bounds[i]) this.counts[i]++;
  }

  snapshot(): HistogramSnapshot {
    return { buckets: this.bounds.map((b, i) => [b, this.counts[i]]), sum: this.sum, count: this.count };
  }
}
