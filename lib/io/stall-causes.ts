/**
 * StallCauses: for each breath whose oldest frame waited past the stall
 * limit (10 ms, FRAME_WAIT_STALL_US), an estimate of where the time went.
 *
 *   frame in the ring (o) ──── breath starts (s) ──── breath ends (e)
 *   │ the thread was elsewhere │ the breath's own work │
 *
 * The parts, each in ms, from what the data-plane thread can see of itself:
 *   - gc:         its garbage collections that overlap [o, e];
 *   - starved:    time it was runnable but not running, from the scheduler's
 *                 own account (/proc/thread-self/schedstat, second field);
 *   - off-cpu:    time it was neither running (schedstat's first field), nor
 *                 on a run queue, nor asleep in epoll: time the hypervisor
 *                 took (steal, with paravirt time accounting) or that the
 *                 thread spent blocked in the kernel (a lock, a page fault,
 *                 a collection waiting for its helpers). An estimate over
 *                 the tick-sampled window, at most the wait; the run time
 *                 is brought up to date before each read (see
 *                 threadSelfView), else it lags by up to a tick. Interrupts
 *                 are not in it: without IRQ time accounting the kernel
 *                 charges them to the thread they interrupt, as running;
 *                 the loop counted that time as busy, so it is taken out
 *                 of other-work first, then of the breath;
 *   - late-wake:  its event loop sat in epoll while the frame was there (the
 *                 loop's idle time after o, less the starved time: a wake-up
 *                 that came late);
 *   - other-work: before s, time its loop was busy with something else (a
 *                 timer, a control call, an agent message), GC left out;
 *   - breath:     e − s, GC left out: the batch itself took that long.
 * The parts may overlap (a thread starved in the middle of a breath counts
 * in both); the cause named is the largest part.
 *
 * The scheduler and loop figures are sampled once per tick (10 ms), so the
 * window they cover starts at the last sample before o, and "late-wake" is
 * a lower bound (idle time before o is taken out as if it were all idle).
 * GC entries reach JavaScript after the fact, so a stall is settled (counted
 * and reported) at the first tick at least SETTLE_US after it.
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { performance, PerformanceObserver } from 'node:perf_hooks';

export const STALL_CAUSES = ['gc', 'starved', 'off-cpu', 'late-wake', 'other-work', 'breath'] as const;
export type StallCause = (typeof STALL_CAUSES)[number];

/** A stall is settled this long after its breath ended (its GC entries have been delivered by then). */
export const SETTLE_US = 20_000;
/** Recent stalls kept for the snapshot. */
const RECENT = 8;
/** Samples kept: 2 s of ticks. */
const SAMPLES = 200;
/** GC intervals kept. */
const GCS = 64;
/** Tasks (breaths, timers, calls) this long or longer are noted, to name what kept the loop busy. */
export const TASK_NOTE_US = 1_000;
const TASKS = 64;

export interface StallRecord {
  /** When the breath ended (Unix ms). */
  atUnixMs: number;
  waitMs: number;
  frames: number;
  parts: Record<StallCause, number>;
  cause: StallCause;
  /** The noted tasks (over TASK_NOTE_US) that ran while the frame waited, longest overlap first (at most 3): "tick 7.9". */
  during: string[];
}

export interface StallCausesSnapshot {
  /** Settled stalls by the cause named. */
  byCause: Record<StallCause, number>;
  /** The last few, oldest first. */
  recent: StallRecord[];
}

/** What the thread can read of itself (injected in tests). */
export interface SelfView {
  /** Cumulative loop time (ms) spent in and out of the poll phase (performance.eventLoopUtilization). */
  loop(): { idle: number; active: number };
  /** Cumulative µs this thread waited on a run queue, or null when unknown. */
  runQueueUs(): number | null;
  /** Cumulative µs this thread ran, as of the last runQueueUs() (the same read), or null when unknown. */
  onCpuUs?(): number | null;
  close?(): void;
}

interface Sample { atUs: number; idle: number; active: number; rqUs: number | null; cpuUs: number | null }
interface Pending { oldestUs: number; startUs: number; endUs: number; frames: number; end: Sample }

function emptyCounts(): Record<StallCause, number> {
  return { gc: 0, starved: 0, 'off-cpu': 0, 'late-wake': 0, 'other-work': 0, breath: 0 };
}

/** The calling thread's own view: its event loop and its scheduler statistics. */
export function threadSelfView(): SelfView {
  // Opened at the first read, by the thread that reads (thread-self is whoever opens it).
  let fd: number | null = null;
  let cpuUs: number | null = null;
  const buf = Buffer.alloc(96);
  return {
    loop: () => {
      const u = performance.eventLoopUtilization();
      return { idle: u.idle, active: u.active };
    },
    runQueueUs: () => {
      if (fd === null) {
        try { fd = openSync('/proc/thread-self/schedstat', 'r'); } catch { fd = -1; /* not Linux, or no procfs: no run-queue figure */ }
      }
      cpuUs = null;
      if (fd < 0) return null;
      try {
        // schedstat's run time is the scheduler's sum as of its last update of this thread (a tick, 4 ms at
        // HZ=250, or a switch): read raw, a running thread's figure lags by up to a tick, and a window's
        // on-CPU time came out up to ±3 ms off (measured), all of it then called off-cpu. getrusage() brings
        // the calling thread's sum up to date first (the kernel's thread_group_cputime does, for current).
        process.cpuUsage();
        const n = readSync(fd, buf, 0, buf.length, 0);
        const fields = buf.toString('latin1', 0, n).split(' ');
        const ran = Number(fields[0]);
        const ns = Number(fields[1]);
        cpuUs = Number.isFinite(ran) ? ran / 1000 : null;
        return Number.isFinite(ns) ? ns / 1000 : null;
      } catch {
        return null;
      }
    },
    onCpuUs: () => cpuUs,
    close: () => {
      if (fd !== null && fd >= 0) closeSync(fd);
      fd = -1;
    },
  };
}

function overlap(a0: number, a1: number, b0: number, b1: number): number {
  return Math.max(0, Math.min(a1, b1) - Math.max(a0, b0));
}

export class StallCauses {
  private readonly byCause = emptyCounts();
  private readonly recent: StallRecord[] = [];
  private readonly samples: Sample[] = [];
  private readonly gcs: { startUs: number; endUs: number }[] = [];
  private readonly pending: Pending[] = [];
  private readonly tasks: { name: string; startUs: number; endUs: number }[] = [];
  private observer: PerformanceObserver | null = null;

  constructor(private readonly self: SelfView, private readonly nowUs: () => number) {}

  /** Follows this thread's garbage collections (PerformanceObserver 'gc'). */
  watchGc(): void {
    if (this.observer) return;
    this.observer = new PerformanceObserver((list) => {
      for (const e of list.getEntries()) {
        const startUs = (performance.timeOrigin + e.startTime) * 1000;
        this.noteGc(startUs, startUs + e.duration * 1000);
      }
    });
    this.observer.observe({ entryTypes: ['gc'] });
  }

  close(): void {
    this.observer?.disconnect();
    this.observer = null;
    this.self.close?.();
  }

  noteGc(startUs: number, endUs: number): void {
    this.gcs.push({ startUs, endUs });
    if (this.gcs.length > GCS) this.gcs.shift();
  }

  /** A task of the loop (a breath, a timer, a call) ran from startUs to endUs; kept if it took TASK_NOTE_US or more. */
  noteTask(name: string, startUs: number, endUs: number): void {
    if (endUs - startUs < TASK_NOTE_US) return;
    this.tasks.push({ name, startUs, endUs });
    if (this.tasks.length > TASKS) this.tasks.shift();
  }

  private take(atUs: number): Sample {
    const l = this.self.loop();
    const rqUs = this.self.runQueueUs();
    return { atUs, idle: l.idle, active: l.active, rqUs, cpuUs: this.self.onCpuUs?.() ?? null };
  }

  /** Once per tick: a sample of the loop and the scheduler; settles stalls old enough. Returns the newly settled ones. */
  tick(): StallRecord[] {
    const now = this.nowUs();
    this.samples.push(this.take(now));
    if (this.samples.length > SAMPLES) this.samples.shift();
    const settled: StallRecord[] = [];
    while (this.pending.length && now - this.pending[0].endUs >= SETTLE_US) settled.push(this.settle(this.pending.shift()!));
    return settled;
  }

  /** A breath whose oldest frame arrived at `oldestUs` started at `startUs` and ended at `endUs` (wall-clock µs), past the stall limit. */
  stall(oldestUs: number, startUs: number, endUs: number, frames: number): void {
    this.pending.push({ oldestUs, startUs, endUs, frames, end: this.take(endUs) });
  }

  private settle(p: Pending): StallRecord {
    // The last sample taken before the frame arrived (or the oldest one kept).
    let a: Sample | null = null;
    for (const s of this.samples) {
      if (s.atUs <= p.oldestUs) a = s;
      else break;
    }
    a ??= this.samples[0] ?? p.end;
    let gcBefore = 0, gcIn = 0;
    for (const g of this.gcs) {
      gcBefore += overlap(g.startUs, g.endUs, p.oldestUs, p.startUs);
      gcIn += overlap(g.startUs, g.endUs, p.startUs, p.endUs);
    }
    const waitUs = p.endUs - p.oldestUs;
    const beforeUs = Math.max(0, p.startUs - p.oldestUs);
    let breathUs = Math.max(0, p.endUs - p.startUs - gcIn);
    const idleUs = Math.max(0, (p.end.idle - a.idle) * 1000 - Math.max(0, p.oldestUs - a.atUs));
    const starvedUs = a.rqUs !== null && p.end.rqUs !== null ? Math.min(waitUs, Math.max(0, p.end.rqUs - a.rqUs)) : 0;
    // A thread woken but waiting for a CPU is still in epoll for the loop's account: that part is starved, not late.
    const lateWakeUs = Math.max(0, Math.min(idleUs, beforeUs) - starvedUs);
    let otherUs = Math.max(0, beforeUs - lateWakeUs - gcBefore);
    // The window's time less what the thread ran, waited on a run queue and slept in epoll. Sleep in epoll
    // and a run-queue wait can be the same time (woken, not yet running): counted twice, so this is a lower bound.
    let offCpuUs = 0;
    if (a.cpuUs !== null && p.end.cpuUs !== null && a.rqUs !== null && p.end.rqUs !== null) {
      const windowUs = p.end.atUs - a.atUs;
      const idleWindowUs = (p.end.idle - a.idle) * 1000;
      offCpuUs = Math.min(waitUs, Math.max(0, windowUs - (p.end.cpuUs - a.cpuUs) - (p.end.rqUs - a.rqUs) - idleWindowUs));
    }
    // The loop counted that time as busy, but the thread did not run: it comes out of other-work first, then the breath.
    const offOther = Math.min(otherUs, offCpuUs);
    otherUs -= offOther;
    breathUs -= Math.min(breathUs, offCpuUs - offOther);
    const ms = (us: number) => Math.round(us) / 1000;
    const parts: Record<StallCause, number> = { gc: ms(gcBefore + gcIn), starved: ms(starvedUs), 'off-cpu': ms(offCpuUs), 'late-wake': ms(lateWakeUs), 'other-work': ms(otherUs), breath: ms(breathUs) };
    let cause: StallCause = 'breath';
    for (const c of STALL_CAUSES) if (parts[c] > parts[cause]) cause = c;
    this.byCause[cause]++;
    const during = this.tasks
      .map((t) => ({ name: t.name, us: overlap(t.startUs, t.endUs, p.oldestUs, p.startUs) }))
      .filter((t) => t.us > 0)
      .sort((x, y) => y.us - x.us)
      .slice(0, 3)
      .map((t) => `${t.name} ${(t.us / 1000).toFixed(1)}`);
    const rec: StallRecord = { atUnixMs: Math.round(p.endUs / 1000), waitMs: ms(waitUs), frames: p.frames, parts, cause, during };
    this.recent.push(rec);
    if (this.recent.length > RECENT) this.recent.shift();
    return rec;
  }

  snapshot(): StallCausesSnapshot {
    return { byCause: { ...this.byCause }, recent: this.recent.map((r) => ({ ...r, parts: { ...r.parts }, during: [...r.during] })) };
  }
}
