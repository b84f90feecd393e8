/**
 * How long this process's event loop was held: a timer that should fire
 * every `everyMs` records how late it ran. The worst lateness is the
 * longest stall any frame would have seen in a bridge on this loop.
 */
import { performance } from 'node:perf_hooks';

export class LoopLagMeter {
  maxLagMs = 0;
  private last = performance.now();
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly everyMs = 5) {
    this.timer = setInterval(() => {
      const now = performance.now();
      this.maxLagMs = Math.max(this.maxLagMs, now - this.last - this.everyMs);
      this.last = now;
    }, everyMs);
  }

  stop(): number {
    clearInterval(this.timer);
    return this.maxLagMs;
  }
}

/** Resident set size of this process, in MiB. */
export function rssMiB(): number {
  return process.memoryUsage().rss / (1 << 20);
}
