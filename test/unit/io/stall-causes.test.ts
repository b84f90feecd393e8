import { SETTLE_US, StallCauses, threadSelfView } from '../../../lib/io/stall-causes';

/**
 * The thread's own view, scripted: loop idle/active time (ms) and run-queue
 * wait (µs) are cumulative, as performance.eventLoopUtilization() and
 * schedstat give them.
 */
function scripted() {
  const v = { now: 1_700_000_000_000_000, idle: 0, active: 0, rq: 0 as number | null };
  const causes = new StallCauses({ loop: () => ({ idle: v.idle, active: v.active }), runQueueUs: () => v.rq }, () => v.now);
  /** `us` of wall time pass, spent as said. */
  const pass = (us: number, how: { idle?: number; active?: number; rq?: number } = {}) => {
    v.now += us;
    v.idle += (how.idle ?? 0) / 1000;
    v.active += (how.active ?? 0) / 1000;
    if (v.rq !== null) v.rq += how.rq ?? 0;
  };
  return { v, causes, pass };
}

describe('StallCauses', () => {
  test('a wait spent in garbage collection is put down to gc', () => {
    const { v, causes, pass } = scripted();
    causes.tick();
    pass(2_000, { idle: 2_000 });
    const oldest = v.now;
    causes.noteGc(v.now + 500, v.now + 12_500);
    pass(13_000, { active: 13_000 });
    const start = v.now;
    pass(300, { active: 300 });
    causes.stall(oldest, start, v.now, 40);
    expect(causes.tick()).toEqual([]); // GC entries come late: not settled yet
    pass(SETTLE_US);
    const [r] = causes.tick();
    expect(r.cause).toBe('gc');
    expect(r.parts.gc).toBeCloseTo(12, 3);
    expect(r.parts['other-work']).toBeCloseTo(1, 3);
    expect(r.parts.breath).toBeCloseTo(0.3, 3);
    expect(r.waitMs).toBeCloseTo(13.3, 3);
    expect(r.frames).toBe(40);
    expect(causes.snapshot().byCause).toMatchObject({ gc: 1, starved: 0, 'late-wake': 0, 'other-work': 0, breath: 0 });
  });

  test('a thread runnable but not running is starved', () => {
    const { v, causes, pass } = scripted();
    causes.tick();
    const oldest = v.now;
    pass(11_000, { idle: 11_000, rq: 10_500 }); // woken at once, then waited for a CPU
    const start = v.now;
    pass(200, { active: 200 });
    causes.stall(oldest, start, v.now, 3);
    pass(SETTLE_US);
    const [r] = causes.tick();
    expect(r.cause).toBe('starved');
    expect(r.parts.starved).toBeCloseTo(10.5, 3);
    expect(r.parts['late-wake']).toBeCloseTo(0.5, 3); // in epoll for the loop, but woken: starved, bar 0.5 ms
  });

  test('a loop asleep in epoll while the frame waited, with no run-queue wait, woke late', () => {
    const { v, causes, pass } = scripted();
    causes.tick();
    const oldest = v.now;
    pass(15_000, { idle: 15_000 });
    const start = v.now;
    pass(100, { active: 100 });
    causes.stall(oldest, start, v.now, 1);
    pass(SETTLE_US);
    expect(causes.tick()[0]).toMatchObject({ cause: 'late-wake', parts: { 'late-wake': 15, starved: 0 } });
  });

  test('a long breath is the breath\'s own; time busy elsewhere before it is other work', () => {
    const { v, causes, pass } = scripted();
    causes.tick();
    let oldest = v.now;
    pass(1_000, { active: 1_000 });
    let start = v.now;
    pass(14_000, { active: 14_000 });
    causes.stall(oldest, start, v.now, 2000);
    pass(SETTLE_US);
    causes.tick();
    oldest = v.now;
    pass(12_000, { active: 12_000 }); // a control call, a timer
    start = v.now;
    pass(500, { active: 500 });
    causes.stall(oldest, start, v.now, 10);
    pass(SETTLE_US);
    causes.noteTask('tick', oldest - 1_000, oldest + 9_000);
    causes.noteTask('breath primary', oldest + 9_000, start);
    causes.noteTask('event', oldest + 10_000, oldest + 10_500); // under a millisecond: not noted
    causes.noteTask('snapshot', start, v.now); // after the breath began: not "meanwhile"
    expect(causes.tick()[0]).toMatchObject({ cause: 'other-work', during: ['tick 9.0', 'breath primary 3.0'] });
    expect(causes.snapshot().byCause).toMatchObject({ breath: 1, 'other-work': 1 });
    expect(causes.snapshot().recent.map((r) => r.cause)).toEqual(['breath', 'other-work']);
  });

  test('idle time before the frame arrived is not counted as a late wake-up', () => {
    const { v, causes, pass } = scripted();
    causes.tick();
    pass(9_000, { idle: 9_000 }); // quiet, before the frame
    const oldest = v.now;
    pass(11_000, { active: 11_000 });
    const start = v.now;
    pass(100, { active: 100 });
    causes.stall(oldest, start, v.now, 1);
    pass(SETTLE_US);
    expect(causes.tick()[0]).toMatchObject({ cause: 'other-work', parts: { 'late-wake': 0 } });
  });

  test('with no scheduler figures (no procfs), starved is 0 and the rest still counts', () => {
    const { v, causes, pass } = scripted();
    v.rq = null;
    causes.tick();
    const oldest = v.now;
    pass(12_000, { idle: 12_000 });
    causes.stall(oldest, v.now, v.now + 10, 1);
    pass(SETTLE_US + 10);
    expect(causes.tick()[0]).toMatchObject({ cause: 'late-wake', parts: { starved: 0 } });
  });

  test('the recent list keeps the last eight', () => {
    const { v, causes, pass } = scripted();
    causes.tick();
    for (let i = 0; i < 11; i++) {
      const oldest = v.now;
      pass(10_000 + i * 100, { idle: 10_000 + i * 100 });
      causes.stall(oldest, v.now, v.now, i + 1);
    }
    pass(SETTLE_US);
    expect(causes.tick()).toHaveLength(11);
    expect(causes.snapshot().recent.map((r) => r.frames)).toEqual([4, 5, 6, 7, 8, 9, 10, 11]);
  });
});

describe('threadSelfView (this thread, on Linux)', () => {
  test('reads a run-queue figure that never goes back, and the loop\'s times', () => {
    const self = threadSelfView();
    const a = self.runQueueUs();
    let x = 0;
    for (let i = 0; i < 1e6; i++) x += i;
    const b = self.runQueueUs();
    expect(x).toBeGreaterThan(0);
    expect(typeof a).toBe('number');
    expect(b!).toBeGreaterThanOrEqual(a!);
    const l = self.loop();
    expect(l.idle + l.active).toBeGreaterThan(0);
    self.close?.();
    expect(self.runQueueUs()).toBeNull();
  });
});
