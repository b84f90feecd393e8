/**
 * Wall clock (CLOCK_REALTIME) at microsecond precision, for relating this
 * process's monotonic clock (lib/clock.ts) to capture timestamps, which the
 * kernel takes on the wall clock.
 *
 * In:  nothing.
 * Out: the offset `wall − monotonicUs()` in µs, and how tight the
 *      measurement was.
 *
 * Node has no CLOCK_REALTIME below a millisecond, but `Date.now()` ticks
 * exactly when the wall clock crosses a millisecond: spinning until it ticks,
 * with a monotonic read before and after every `Date.now()`, brackets that
 * crossing to within one loop iteration (a fraction of a microsecond, unless
 * the vCPU was taken away; then the tightest of a few edges wins). The spin
 * blocks the event loop for up to ~1 ms per edge: measure when nothing is in
 * flight.
 */
import { monotonicUs } from '../../lib/clock';

export interface WallOffset {
  /** wall µs = monotonicUs() + offsetUs. */
  offsetUs: number;
  /** Width of the tightest bracket (µs): the error is at most half of it. */
  widthUs: number;
}

export function measureWallOffset(edges = 4): WallOffset {
  let bestWidth = Infinity;
  let offsetUs = 0;
  for (let e = 0; e < edges; e++) {
    let prevBefore = monotonicUs();
    let prevMs = Date.now();
    for (let spins = 0; spins < 1_000_000; spins++) {
      const before = monotonicUs();
      const ms = Date.now();
      const after = monotonicUs();
      if (ms !== prevMs) {
        // The previous read returned less than `ms`, this one `ms`: the wall clock
        // crossed ms × 1000 µs after the previous read began and before this one ended.
        const width = after - prevBefore;
        if (width < bestWidth) {
          bestWidth = width;
          offsetUs = ms * 1000 - (prevBefore + after) / 2;
        }
        break;
      }
      prevBefore = before;
      prevMs = ms;
    }
  }
  return { offsetUs, widthUs: bestWidth };
}
