/**
 * How long the in-process bridge's event loop was unavailable: the bridge
 * calls `pipeline.tick` from a timer every TICK_MS (10 ms), so a longer gap
 * between two calls means the loop was busy elsewhere (a synchronous exec,
 * e.g. the lab's kill() or the lab agent re-protecting a replica, or a long
 * run of frames) or the process was not scheduled. While the loop is held no
 * frame crosses the bridge in either direction.
 *
 * In:  the bridge's pipeline object; `tick` is wrapped on the instance (the
 *      Bridge calls it through the instance) and restored by `stop()`.
 * Out: the longest gap between consecutive tick calls that began within a
 *      time range (monotonicUs base), and where it began.
 *
 * Cost: one clock read and one array store per tick (100 per second). Adds
 * no timer of its own, so it does not change how often the loop wakes.
 */
import { monotonicUs } from '../../lib/clock';
import type { ShadowPipeline } from '../../lib/pipeline/pipeline';

const SLOTS = 1 << 14; // ~160 s of ticks at 10 ms

export class TickGaps {
  private readonly at = new Float64Array(SLOTS);
  private count = 0;
  private readonly restore: () => void;

  constructor(pipeline: ShadowPipeline) {
    const p = pipeline as unknown as { tick: (nowUs: number) => void };
    const own = p.tick;
    p.tick = (nowUs: number) => {
      this.at[this.count++ & (SLOTS - 1)] = monotonicUs();
      own.call(pipeline, nowUs);
    };
    this.restore = () => { p.tick = own; };
  }

  /** Longest gap between tick calls that began within [fromUs, toUs]: its length and start (µs), or null. */
  longestGap(fromUs: number, toUs: number): { gapUs: number; startUs: number } | null {
    const n = Math.min(this.count, SLOTS);
    let best: { gapUs: number; startUs: number } | null = null;
    for (let i = this.count - n + 1; i < this.count; i++) {
      const a = this.at[(i - 1) & (SLOTS - 1)];
      const b = this.at[i & (SLOTS - 1)];
      if (a < fromUs || a > toUs) continue;
      if (!best || b - a > best.gapUs) best = { gapUs: b - a, startUs: a };
    }
    return best;
  }

  stop(): void {
    this.restore();
  }
}
