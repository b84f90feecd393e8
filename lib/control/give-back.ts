/**
 * Memory given back after a mass eviction. V8 collects the old generation
 * only when allocation asks for it, so on a bridge that a flood has left
 * quiet the garbage of the flows the table dropped stays in the heap, and in
 * the resident set, indefinitely. Measured in-process: 100,000 flows took
 * RSS to 269 MiB; expired, they still held 274 MiB; one full collection
 * (11 ms) brought it to 102 MiB a second later.
 *
 * So when the flow table has shrunk well below the peak it reached
 * (`minFlows` fewer, and at least a quarter), the bridge collects its heap
 * in full (twice: see fullCollection): as soon as the data path has seen no
 * frame for `idleMs`, or after `forceAfterMs` of waiting for such a moment, and never twice within
 * `minIntervalMs`. The pause is measured and logged (`memory-given-back`)
 * with RSS before and a second after. `minFlows` 0 turns it off.
 */
import { runInNewContext } from 'node:vm';
import { setFlagsFromString } from 'node:v8';
import { performance } from 'node:perf_hooks';

export interface GiveBackConfig {
  /** How far below its peak the flow table must fall (0: never give back). */
  minFlows: number;
  /** No frame for this long: a quiet moment for the collection. */
  idleMs: number;
  /** Give back anyway after waiting this long for a quiet moment. */
  forceAfterMs: number;
  /** At most one collection per this long. */
  minIntervalMs: number;
}

export const DEFAULT_GIVE_BACK: GiveBackConfig = { minFlows: 10_000, idleMs: 100, forceAfterMs: 300_000, minIntervalMs: 10_000 };

export interface GiveBackCounters {
  /** Full collections run. */
  runs: number;
  /** Of which, run after `forceAfterMs` without a quiet moment. */
  forced: number;
}

/**
 * Two full collections of this thread's heap back to back, or null where the
 * runtime does not offer them. One frees the dead objects, but the pages
 * that still hold a few live ones (a flood leaves survivors on nearly every
 * page) stay committed; the second moves those survivors together and hands
 * the pages back, since V8 picks the pages to compact from what the
 * previous marking found live. Measured (a worker thread, 200,000 objects
 * with one in 40 kept): heap 72-74 MiB and RSS 119-120 MiB a second after
 * one collection (a 3.5-4.7 ms pause), 22.0 MiB and 69 MiB after two
 * (11.4-13.9 ms). In flow-flood, with one collection the bridge's RSS stayed
 * at 183.7 MiB (peak 226.4, baseline 133.4); with two it fell to 139.4.
 */
export function fullCollection(): (() => void) | null {
  try {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as unknown;
    if (typeof gc !== 'function') return null;
    const collect = gc as () => void;
    return () => {
      collect();
      collect();
    };
  } catch {
    return null;
  }
}

export class MemoryGiveBack {
  readonly counters: GiveBackCounters = { runs: 0, forced: 0 };
  /** The last collection: its pause, and the resident memory it gave back (known a second after it). */
  readonly last = { pauseMs: 0, freedBytes: 0 };
  private peak = 0;
  private shrunkSinceUs = -1;
  private lastRunUs = -Infinity;

  constructor(
    private readonly config: GiveBackConfig,
    private readonly collect: (() => void) | null,
    private readonly log: (event: string, fields: Record<string, unknown>) => void,
    private readonly rss: () => number = () => process.memoryUsage.rss(),
    private readonly later: (fn: () => void, ms: number) => void = (fn, ms) => { setTimeout(fn, ms).unref?.(); },
  ) {}

  /** The bridge's tick: flows in the table now, and when the data path last saw a frame. True if it collected. */
  tick(nowUs: number, flows: number, lastFrameUs: number): boolean {
    if (!this.collect || this.config.minFlows <= 0) return false;
    if (flows > this.peak) this.peak = flows;
    const shrunk = this.peak - flows >= Math.max(this.config.minFlows, this.peak / 4);
    if (!shrunk) {
      this.shrunkSinceUs = -1;
      return false;
    }
    if (this.shrunkSinceUs < 0) this.shrunkSinceUs = nowUs;
    if (nowUs - this.lastRunUs < this.config.minIntervalMs * 1000) return false;
    const idle = nowUs - lastFrameUs >= this.config.idleMs * 1000;
    const forced = !idle && nowUs - this.shrunkSinceUs >= this.config.forceAfterMs * 1000;
    if (!idle && !forced) return false;
    const before = this.rss();
    const t0 = performance.now();
    this.collect();
    const pauseMs = performance.now() - t0;
    const peak = this.peak;
    this.peak = flows;
    this.shrunkSinceUs = -1;
    this.lastRunUs = nowUs;
    this.counters.runs++;
    if (forced) this.counters.forced++;
    this.last.pauseMs = Math.round(pauseMs * 10) / 10;
    this.last.freedBytes = 0;
    // The collector hands freed pages back to the system in the background: read RSS a moment later.
    this.later(() => {
      const after = this.rss();
      this.last.freedBytes = Math.max(0, before - after);
      this.log('memory-given-back', {
        flowsPeak: peak, flows, pauseMs: this.last.pauseMs, forced,
        rssBeforeMiB: Math.round(before / 2 ** 20), rssAfterMiB: Math.round(after / 2 ** 20),
      });
    }, 1000);
    return true;
  }
}
