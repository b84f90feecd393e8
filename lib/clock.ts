/**
 * The process's one monotonic clock, in microseconds.
 *
 * In:  nothing (monotonicUs), or another monotonic clock to line up with it
 *      (clockOffsetUs).
 * Out: microseconds since this process started, as a float (performance.now()
 *      × 1000: sub-microsecond resolution, never goes back, not wall time).
 *
 * Other clocks meet this one through an offset: a timestamp `t` read from
 * clock C is `t - clockOffsetUs(readC)` on this clock. On Linux
 * performance.now() is libuv's hrtime (CLOCK_MONOTONIC) minus the process's
 * start, so the offset to CLOCK_MONOTONIC is a constant: measuring it once is
 * enough (lib/io/link-watch.ts does it for netlink event times).
 */
import { performance } from 'node:perf_hooks';

export function monotonicUs(): number {
  return performance.now() * 1000;
}

/**
 * The offset from this clock to another one (`other - offset` is on this
 * clock's base): the other clock is read between two reads of ours, and the
 * tightest of `rounds` brackets wins, so the error is at most half of it
 * (well under a microsecond).
 */
export function clockOffsetUs(readOtherUs: () => number, rounds = 15): number {
  let bestWidth = Infinity;
  let offset = 0;
  for (let i = 0; i < rounds; i++) {
    const before = monotonicUs();
    const other = readOtherUs();
    const after = monotonicUs();
    if (after - before < bestWidth) {
      bestWidth = after - before;
      offset = other - (before + after) / 2;
    }
  }
  return offset;
}
