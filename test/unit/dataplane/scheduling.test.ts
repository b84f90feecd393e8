/**
 * run --realtime: what each mode asks of the kernel, and what it does when
 * the kernel refuses or RT throttling is off. The kernel side (the thread's
 * real policy, the main thread left alone, the send thread inheriting it) is
 * tested on a live bridge in test/integration/run-cli.test.ts.
 */
import { constants } from 'node:os';
import { applyDataPlaneScheduling, formatScheduling, RealtimeRefusedError, SchedulingDeps } from '../../../lib/dataplane/scheduling';

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
