/**
 * run --realtime: what each mode asks of the kernel, and what it does when
 * the kernel refuses or RT throttling is off. The kernel side (the thread's
 * real policy, the main thread left alone, the send thread inheriting it) is
 * tested on a live bridge in test/integration/run-cli.test.ts.
 */
import { constants } from 'node:os';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { applyDataPlaneScheduling, applyHelperScheduling, formatScheduling, platformThreadIds, RealtimeRefusedError, SchedulingDeps } from '../../../lib/dataplane/scheduling';

function deps(o: { errno?: number; runtime?: number | null } = {}) {
  const calls: [string, string, number][] = [];
  const logs: [string, string, Record<string, unknown> | undefined][] = [];
  const d: SchedulingDeps = {
    setThreadScheduling: (name, policy, priority) => {
      calls.push([name, policy, priority]);
      return { tid: 4242, errno: policy === 'rr' ? o.errno ?? 0 : 0 };
    },
    rtRuntimeUs: () => (o.runtime === undefined ? 950_000 : o.runtime),
    log: (level, event, fields) => { logs.push([level, event, fields]); },
  };
  return { d, calls, logs };
}

describe('data-plane scheduling (--realtime)', () => {
  it('auto: SCHED_RR at the priority asked for, the thread named, nothing logged', () => {
    const { d, calls, logs } = deps();
    const s = applyDataPlaneScheduling('auto', 10, d);
    expect(calls).toEqual([['svm-dataplane', 'rr', 10]]);
    expect(s).toEqual({ thread: 'svm-dataplane', tid: 4242, policy: 'rr', priority: 10 });
    expect(logs).toEqual([]);
    expect(formatScheduling(s)).toBe('data plane: thread svm-dataplane (tid 4242), realtime (SCHED_RR 10)');
  });

  it('auto, refused (EPERM): the normal policy, one warning that says what is missing', () => {
    const { d, logs } = deps({ errno: constants.errno.EPERM });
    const s = applyDataPlaneScheduling('auto', 10, d);
    expect(s.policy).toBe('other');
    expect(s.priority).toBe(0);
    expect(s.refused).toMatch(/EPERM.*CAP_SYS_NICE/);
    expect(logs).toHaveLength(1);
    expect(logs[0][0]).toBe('warn');
    expect(logs[0][1]).toBe('realtime-unavailable');
    expect(formatScheduling(s)).toMatch(/normal policy \(realtime refused: the kernel refused SCHED_RR priority 10/);
  });

  it('on, refused: the bridge does not start, and the message says why and what to do', () => {
    const { d } = deps({ errno: constants.errno.EPERM });
    expect(() => applyDataPlaneScheduling('on', 20, d)).toThrow(RealtimeRefusedError);
    expect(() => applyDataPlaneScheduling('on', 20, d)).toThrow(/--realtime on: the kernel refused SCHED_RR priority 20 .*EPERM.*--realtime auto or off/);
  });

  it('another errno is named, not numbered', () => {
    const { d } = deps({ errno: constants.errno.EINVAL });
    expect(() => applyDataPlaneScheduling('on', 10, d)).toThrow(/\(EINVAL\)/);
  });

  it('auto with RT throttling off: does not ask for SCHED_RR, and says why; on asks anyway, with a warning', () => {
    const a = deps({ runtime: -1 });
    const s = applyDataPlaneScheduling('auto', 10, a.d);
    expect(a.calls).toEqual([['svm-dataplane', 'other', 0]]);
    expect(s.policy).toBe('other');
    expect(s.refused).toMatch(/sched_rt_runtime_us is -1/);
    expect(a.logs.map((l) => l[1])).toEqual(['realtime-unavailable']);

    const o = deps({ runtime: -1 });
    expect(applyDataPlaneScheduling('on', 10, o.d).policy).toBe('rr');
    expect(o.logs.map((l) => l[1])).toEqual(['realtime-unthrottled']);
  });

  it('an unreadable sched_rt_runtime_us does not stop auto', () => {
    const { d } = deps({ runtime: null });
    expect(applyDataPlaneScheduling('auto', 10, d).policy).toBe('rr');
  });

  it('off: names the thread, normal policy, never asks for SCHED_RR', () => {
    const { d, calls, logs } = deps();
    const s = applyDataPlaneScheduling('off', 10, d);
    expect(calls).toEqual([['svm-dataplane', 'other', 0]]);
    expect(s).toEqual({ thread: 'svm-dataplane', tid: 4242, policy: 'other', priority: 0 });
    expect(logs).toEqual([]);
    expect(formatScheduling(s)).toBe('data plane: thread svm-dataplane (tid 4242), normal policy');
  });
});

describe('Node\'s platform threads with a realtime data plane (--realtime-helpers)', () => {
  const rr = { thread: 'svm-dataplane', tid: 4242, policy: 'rr' as const, priority: 10 };
  function helperDeps(errnoOf: (tid: number) => number = () => 0) {
    const calls: [number, string, number][] = [];
    const logs: [string, string][] = [];
    return {
      calls, logs,
      d: { setTaskScheduling: (tid: number, policy: 'rr' | 'other', priority: number) => { calls.push([tid, policy, priority]); return errnoOf(tid); }, log: (level: string, event: string) => { logs.push([level, event]); } },
    };
  }

  it('lists every thread of the process but the calling one', () => {
    const dir = mkdtempSync(join(tmpdir(), 'svm-task-'));
    try {
      for (const t of ['100', '101', '103', '102']) mkdirSync(join(dir, t));
      expect(platformThreadIds(dir, 100)).toEqual([101, 102, 103]);
      expect(platformThreadIds(join(dir, 'missing'), 100)).toEqual([]);
    } finally {
      rmSync(dir, { recursive: true });
    }
    // This process has Node's platform threads besides the main one.
    expect(platformThreadIds().length).toBeGreaterThanOrEqual(1);
    expect(platformThreadIds()).not.toContain(process.pid);
  });

  it('moves them to SCHED_RR one step below the data plane, and says so in status', () => {
    const { d, calls, logs } = helperDeps();
    const s = applyHelperScheduling(rr, [11, 12, 13, 14], d);
    expect(calls).toEqual([[11, 'rr', 9], [12, 'rr', 9], [13, 'rr', 9], [14, 'rr', 9]]);
    expect(s.helpers).toEqual({ tids: [11, 12, 13, 14], priority: 9 });
    expect(logs).toEqual([]);
    expect(formatScheduling(s)).toBe('data plane: thread svm-dataplane (tid 4242), realtime (SCHED_RR 10); 4 platform thread(s) SCHED_RR 9');
    // Priority 1 has no step below: they share it.
    expect(applyHelperScheduling({ ...rr, priority: 1 }, [11], helperDeps().d).helpers?.priority).toBe(1);
  });

  it('leaves them alone when the data plane is not realtime, or none were listed', () => {
    const { d, calls } = helperDeps();
    expect(applyHelperScheduling({ ...rr, policy: 'other', priority: 0 }, [11, 12], d).helpers).toBeUndefined();
    expect(applyHelperScheduling(rr, [], d).helpers).toBeUndefined();
    expect(calls).toEqual([]);
  });

  it('a thread gone since it was listed is skipped; a refusal is one warning, and the rest still move', () => {
    const { d, logs } = helperDeps((tid) => (tid === 12 ? constants.errno.ESRCH : tid === 13 ? constants.errno.EPERM : 0));
    const s = applyHelperScheduling(rr, [11, 12, 13, 14], d);
    expect(s.helpers?.tids).toEqual([11, 14]);
    expect(s.helpers?.refused).toBe('tid 13: EPERM');
    expect(logs).toEqual([['warn', 'realtime-helpers-refused']]);
  });
});

