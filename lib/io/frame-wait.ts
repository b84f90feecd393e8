/**
 * FrameWait: how long frames wait inside the bridge, measured on the frames
 * themselves. (The same bookkeeping, fed by `record`, keeps how long the
 * primary's output was held for the backup: lib/release/held.ts.)
 *
 *   kernel writes a frame into the ring (its timestamp, CLOCK_REALTIME)
 *        │  the frame waits for the event loop (a long breath, a control
 *        │  request, GC, a starved thread)
 *        ▼
 *   breath: every frame of the batch goes through the pipeline, then the
 *   ports are flushed ─► observe(oldest frame's time, now)
 *
 * One observation per breath: the time from the arrival of the batch's
 * oldest frame to the end of the breath's flush. Every frame of the batch was
 * handled by then, so this bounds the time any of them spent between the
 * ring and its send (a frame the pipeline holds for the backup's answer waits
 * longer by design; that wait is not counted here). This is "the data path
 * stalled": a bridge that stops reading its rings for 50 ms shows a 50 ms
 * wait here, whatever the network around it does.
 *
 * Only ports whose frame times are the kernel's wall-clock arrival times
 * (AF_PACKET: `arrivalTimes`) are measured; libpcap, in-memory and replayed
 * frames are not. The clock compared with them is `performance.timeOrigin + now()`,
 * which does not follow later steps of the system clock: a step makes waits
 * look longer or shorter (negative ones are dropped, and the recent maxima
 * age out in a minute).
 */
import { performance } from 'node:perf_hooks';
import { DurationHistogram, HistogramSnapshot } from '../replicate/duration-histogram';
import type { StallCausesSnapshot } from './stall-causes';

/** From a fast breath (tens of µs) to a stall of a second. */
export const FRAME_WAIT_BUCKETS_SECONDS: readonly number[] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1];

/** Waits longer than this are counted apart (issue 7's goal for a stall of the data path). */
export const FRAME_WAIT_STALL_US = 10_000;

/** A wait this far above the clock is a clock step or a foreign timestamp, not a wait. */
const IMPLAUSIBLE_US = 60_000_000;

const SLOT_US = 1_000_000;
const SLOTS = 60;

export interface FrameWaitSnapshot {
  /** One observation per breath (the oldest frame's wait), seconds. */
  seconds: HistogramSnapshot;
  /** The longest wait since start, and in the last 10 s and 60 s, ms. */
  maxMs: number;
  maxLast10sMs: number;
  maxLast60sMs: number;
  /** Breaths whose oldest frame waited longer than 10 ms. */
  over10ms: number;
  /** The last minute second by second: [Unix second, longest wait in it (ms)], oldest first, seconds with a breath only. */
  perSecond: [number, number][];
  /** Where the time of the breaths over 10 ms went (lib/io/stall-causes.ts); settled ones only. */
  stalls?: StallCausesSnapshot;
}

export function wallClockUs(): number {
  return (performance.timeOrigin + performance.now()) * 1000;
}

export class FrameWait {
  private readonly histogram = new DurationHistogram(FRAME_WAIT_BUCKETS_SECONDS);
  private maxUs = 0;
  private over = 0;
  /** The longest wait in each of the last 60 one-second slots, by slot number. */
  private readonly slotMax = new Float64Array(SLOTS);
  private readonly slotId = new Float64Array(SLOTS).fill(-1);

  constructor(private readonly nowUs: () => number = wallClockUs) {}

  /** A breath whose oldest frame arrived at `oldestUs` (wall clock) has been handled and flushed. Returns the time (wall clock µs) it was taken. */
  observe(oldestUs: number): number {
    const now = this.nowUs();
    this.record(now - oldestUs, now);
    return now;
  }

  /** One wait of `wait` µs (measured on any clock), filed under the wall-clock second `now`. */
  record(wait: number, now = this.nowUs()): void {
    if (!(wait >= 0) || wait > IMPLAUSIBLE_US) return;
    this.histogram.observe(wait / 1e6);
    if (wait > this.maxUs) this.maxUs = wait;
    if (wait > FRAME_WAIT_STALL_US) this.over++;
    const id = Math.floor(now / SLOT_US);
    const i = id % SLOTS;
    if (this.slotId[i] !== id) {
      this.slotId[i] = id;
      this.slotMax[i] = 0;
    }
    if (wait > this.slotMax[i]) this.slotMax[i] = wait;
  }

  snapshot(): FrameWaitSnapshot {
    const id = Math.floor(this.nowUs() / SLOT_US);
    const recent = (seconds: number): number => {
      let m = 0;
      for (let i = 0; i < SLOTS; i++) if (this.slotId[i] > id - seconds && this.slotMax[i] > m) m = this.slotMax[i];
      return m / 1000;
    };
    const perSecond: [number, number][] = [];
    for (let i = 0; i < SLOTS; i++) if (this.slotId[i] > id - SLOTS) perSecond.push([this.slotId[i], this.slotMax[i] / 1000]);
    perSecond.sort((a, b) => a[0] - b[0]);
    return { seconds: this.histogram.snapshot(), maxMs: this.maxUs / 1000, maxLast10sMs: recent(10), maxLast60sMs: recent(60), over10ms: this.over, perSecond };
  }
}
