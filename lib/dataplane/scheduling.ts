/**
 * The data-plane thread's CPU scheduling (`shadowvm run --realtime`).
 *
 * On a host whose cores are shared (the VMs' vCPUs, the sync agent, the
 * clients of a lab), a data plane at the default policy waits its turn
 * like any process: measured on the 2-core lab under the soak's downloads,
 * frames waited 15–18 ms in its rings, most of it time the thread was
 * runnable but not running. SCHED_RR puts it ahead of every normal thread
 * the moment a frame wakes it, as the kernel's own bridge is (it forwards in
 * softirq). It applies to the data-plane thread and its send thread only:
 * the main thread (control socket, metrics, signals) stays at the normal
 * policy, so no control or metrics client gains priority by talking to it.
 *
 * Node's platform threads (V8's helpers) get SCHED_RR one step below it
 * (`--realtime-helpers`, on by default): a collection on the data plane
 * posts its work as a job and joins it, and a helper that took the job's
 * work runs it while the data plane waits on a condition variable. At the
 * normal policy, such a helper waited behind the host's busy normal
 * threads while the realtime data plane slept on it (`perf sched`, soak:
 * 7.5 ms off its CPU, woken by a helper's pthread_cond_signal; the stall
 * records said `gc 10.0, off-cpu 9.5`), even with parallel scavenging off.
 * They are the threads the process has before the data plane starts
 * (`platformThreadIds`): V8's workers, Node's delayed-task timer.
 *
 * The kernel's RT throttling (kernel.sched_rt_runtime_us, 950000 of every
 * 1000000 µs by default) keeps 5% of each core for normal threads even if
 * the data plane never sleeps; `auto` does not ask for SCHED_RR when
 * throttling is off.
 *
 *   auto: SCHED_RR when the kernel allows it; otherwise the normal policy
 *         and one warning (`realtime-unavailable`) saying why.
 *   on:   SCHED_RR, or the bridge does not start (one line saying why).
 *   off:  the normal policy.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { constants } from 'node:os';
import { UserFacingError } from '../errors';
import type { LogFn } from '../control/logger';

export type RealtimeMode = 'auto' | 'on' | 'off';

/** The name of the data-plane thread (ps -L, top -H); its send thread is `svm-send`. */
export const DATA_PLANE_THREAD_NAME = 'svm-dataplane';
export const DEFAULT_REALTIME_PRIORITY = 10;

/** What the data-plane thread runs with (status, metrics). */
export interface DataPlaneScheduling {
  thread: string;
  tid: number;
  policy: 'rr' | 'other';
  /** SCHED_RR's priority; 0 for the normal policy. */
  priority: number;
  /** Why it is not SCHED_RR when it was allowed to be (auto), absent otherwise. */
  refused?: string;
  /** Node's platform threads moved to SCHED_RR (priority − 1) with it; absent when not asked or not realtime. */
  helpers?: { tids: number[]; priority: number; refused?: string };
}

export interface SchedulingDeps {
  /** The addon's setThreadScheduling, for the calling thread. */
  setThreadScheduling(name: string, policy: 'rr' | 'other', priority: number): { tid: number; errno: number };
  /** kernel.sched_rt_runtime_us, or null if it cannot be read. */
  rtRuntimeUs(): number | null;
  log: LogFn;
}

/** --realtime on was refused by the kernel. */
export class RealtimeRefusedError extends UserFacingError {}

export function readRtRuntimeUs(path = '/proc/sys/kernel/sched_rt_runtime_us'): number | null {
  try {
    const v = Number(readFileSync(path, 'utf8').trim());
    return Number.isInteger(v) ? v : null;
  } catch {
    return null;
  }
}

function errnoName(errno: number): string {
  const hit = Object.entries(constants.errno).find(([, n]) => n === errno);
  return hit ? hit[0] : `errno ${errno}`;
}

function refusalText(errno: number, priority: number): string {
  const why = errno === constants.errno.EPERM
    ? 'EPERM: it needs root or CAP_SYS_NICE, and in a cgroup with RT group scheduling a cpu.rt_runtime_us budget'
    : errnoName(errno);
  return `the kernel refused SCHED_RR priority ${priority} for the data-plane thread (${why})`;
}

/**
 * Applies `mode` to the calling thread (call it on the data-plane thread,
 * before the ports open, so the send thread inherits it). Throws
 * RealtimeRefusedError for `on` when the kernel refuses.
 */
export function applyDataPlaneScheduling(mode: RealtimeMode, priority: number, deps: SchedulingDeps): DataPlaneScheduling {
  const thread = DATA_PLANE_THREAD_NAME;
  if (mode === 'off') {
    const r = deps.setThreadScheduling(thread, 'other', 0);
    return { thread, tid: r.tid, policy: 'other', priority: 0 };
  }
  const runtime = deps.rtRuntimeUs();
  if (runtime === -1) {
    const note = 'kernel.sched_rt_runtime_us is -1 (RT throttling off): a realtime thread that never sleeps would hold its core for good';
    if (mode === 'auto') {
      const r = deps.setThreadScheduling(thread, 'other', 0);
      deps.log('warn', 'realtime-unavailable', { reason: `${note}; the data plane keeps the normal policy (--realtime on asks anyway)` });
      return { thread, tid: r.tid, policy: 'other', priority: 0, refused: note };
    }
    deps.log('warn', 'realtime-unthrottled', { reason: note });
  }
  const r = deps.setThreadScheduling(thread, 'rr', priority);
  if (r.errno === 0) return { thread, tid: r.tid, policy: 'rr', priority };
  const text = refusalText(r.errno, priority);
  if (mode === 'on') throw new RealtimeRefusedError(`--realtime on: ${text}; run as root, or with --realtime auto or off`);
  deps.log('warn', 'realtime-unavailable', { reason: `${text}; the data plane keeps the normal policy` });
  return { thread, tid: r.tid, policy: 'other', priority: 0, refused: text };
}

/**
 * The threads this process has now other than the calling one: called on
 * the main thread before the data plane starts, they are Node's platform
 * threads (V8's workers and Node's delayed-task timer).
 */
export function platformThreadIds(taskDir = '/proc/self/task', self = process.pid): number[] {
  try {
    return readdirSync(taskDir).map(Number).filter((t) => Number.isInteger(t) && t > 0 && t !== self).sort((a, b) => a - b);
  } catch {
    return [];
  }
}

/**
 * Gives `tids` SCHED_RR one step below the data plane's `s` (at least 1),
 * when the data plane is realtime. Returns `s` with what was done; one
 * warning if the kernel refused.
 */
export function applyHelperScheduling(
  s: DataPlaneScheduling, tids: readonly number[],
  deps: { setTaskScheduling(tid: number, policy: 'rr' | 'other', priority: number): number; log: LogFn },
): DataPlaneScheduling {
  if (s.policy !== 'rr' || tids.length === 0) return s;
  const priority = Math.max(1, s.priority - 1);
  const done: number[] = [];
  let refused: string | undefined;
  for (const tid of tids) {
    const errno = deps.setTaskScheduling(tid, 'rr', priority);
    if (errno === 0) done.push(tid);
    // ESRCH: the thread has ended since it was listed; nothing to do.
    else if (errno !== constants.errno.ESRCH) refused ??= `tid ${tid}: ${errnoName(errno)}`;
  }
  if (refused) deps.log('warn', 'realtime-helpers-refused', { reason: `the kernel refused SCHED_RR ${priority} for a platform thread (${refused}): a collection may wait behind normal threads` });
  return { ...s, helpers: { tids: done, priority, ...(refused ? { refused } : {}) } };
}

/** One status line. */
export function formatScheduling(s: DataPlaneScheduling): string {
  const how = s.policy === 'rr' ? `realtime (SCHED_RR ${s.priority})` : `normal policy${s.refused ? ` (realtime refused: ${s.refused})` : ''}`;
  const helpers = s.helpers ? `; ${s.helpers.tids.length} platform thread(s) SCHED_RR ${s.helpers.priority}` : '';
  return `data plane: thread ${s.thread} (tid ${s.tid}), ${how}${helpers}`;
}
