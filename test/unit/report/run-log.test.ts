import { parseRunLog, RunLogError } from '../../../lib/report/run-log';
import { Logger } from '../../../lib/control/logger';

/** A log written by the real Logger, with a clock the test moves. */
function writeLog(steps: [number, 'info' | 'warn', string, Record<string, unknown>][]): string {
  let now = Date.parse('2026-01-01T00:00:00.000Z');
  const lines: string[] = [];
  const logger = new Logger({ stream: { write: (l: string) => lines.push(l) }, clock: () => now, summaryTimer: false, perEventPerSecond: 0, fields: { name: 'lab' } });
  for (const [atMs, level, event, fields] of steps) {
    now = Date.parse('2026-01-01T00:00:00.000Z') + atMs;
    logger.log(level, event, fields);
  }
  return lines.join('');
}

const FLOW = 'tcp 10.0.0.1:40000 > 10.0.0.2:80';
const OTHER = 'udp 10.0.0.1:5353 > 10.0.0.2:53';

describe('parseRunLog', () => {
  it('reads releases, mismatches with their excerpts, checkpoints with their duration, failovers and state periods', () => {
    const text = writeLog([
      [0, 'info', 'started', { name: 'lab' }],
      [0, 'warn', 'degraded', { why: 'no sync agent connected: primary output flows unchecked' }],
      [100, 'info', 'state', { from: 'DEGRADED', to: 'CHECKPOINTING', why: 'checkpoint 1 requested (manual)' }],
      [105, 'info', 'checkpoint-done', { epoch: 1, reason: 'manual', flow: null, ms: 5, coalesced: 0 }],
      [105, 'info', 'state', { from: 'CHECKPOINTING', to: 'COMPARING', why: 'checkpoint 1 done' }],
      [1000, 'info', 'released', { flow: FLOW, frames: 3, bytes: 4000, totalBytes: 4000, uncheckedFrames: 0, uncheckedBytes: 0, windowMs: 1000 }],
      [1200, 'warn', 'mismatch', { flow: OTHER, kind: 'datagram', offset: 2, excerptOffset: 0, primary: '"ab\\u0001"', backup: '"ab\\u0002"' }],
      [1200, 'info', 'state', { from: 'COMPARING', to: 'CHECKPOINTING', why: `checkpoint 2 requested (mismatch, ${OTHER})` }],
      [1300, 'info', 'state', { from: 'CHECKPOINTING', to: 'DEGRADED', why: 'checkpoint 2 failed: no answer within 100 ms' }],
      [1500, 'info', 'state', { from: 'DEGRADED', to: 'CHECKPOINTING', why: `checkpoint 3 requested (mismatch, ${OTHER})` }],
      [1510, 'info', 'checkpoint-done', { epoch: 3, reason: 'mismatch', flow: OTHER, ms: 9.5, coalesced: 1 }],
      [1510, 'info', 'state', { from: 'CHECKPOINTING', to: 'COMPARING', why: 'checkpoint 3 done' }],
      [2000, 'warn', 'state', { from: 'COMPARING', to: 'FAILED_OVER', why: 'carrier: primary down' }],
      [2000, 'warn', 'failover', { cause: 'carrier', detail: 'primary down', dead: 'p', survivor: 'b', detectionMs: 7, flowsCarried: 1 }],
      [2500, 'info', 'state', { from: 'FAILED_OVER', to: 'COMPARING', why: 'new backup ready (reprotect 4)' }],
      [3000, 'info', 'released', { flow: null, flows: 40, frames: 80, bytes: 1, windowMs: 1000 }],
    ]);
    const log = parseRunLog(text);
    expect(log.name).toBe('lab');
    expect(log.endMs - log.startMs).toBe(3000);
    expect(log.flows).toEqual([FLOW, OTHER]);
    expect(log.releases.map((r) => [r.flow, r.bytes, r.windowMs])).toEqual([[FLOW, 4000, 1000], [null, 1, 1000]]);
    expect(log.mismatches).toEqual([{
      id: 1, flow: OTHER, atMs: log.startMs + 1200, kind: 'datagram', offset: 2, excerptOffset: 0, primary: '"ab\\u0001"', backup: '"ab\\u0002"',
    }]);
    expect(log.checkpoints.map((c) => [c.epoch, c.reason, c.flow, c.outcome, c.endMs - c.startMs, c.ms, c.error])).toEqual([
      [1, 'manual', null, 'done', 5, 5, null],
      [2, 'mismatch', OTHER, 'failed', 100, null, 'no answer within 100 ms'],
      [3, 'mismatch', OTHER, 'done', 10, 9.5, null],
    ]);
    expect(log.failovers).toHaveLength(1);
    expect(log.failovers[0]).toMatchObject({ cause: 'carrier', survivor: 'b', detectionMs: 7, reprotected: true });
    expect(log.failovers[0].endMs - log.failovers[0].atMs).toBe(500);
    expect(log.states.map((s) => [s.state, s.startMs - log.startMs, s.endMs - log.startMs])).toEqual([
      ['DEGRADED', 0, 100], ['CHECKPOINTING', 100, 105], ['COMPARING', 105, 1200], ['CHECKPOINTING', 1200, 1300],
      ['DEGRADED', 1300, 1500], ['CHECKPOINTING', 1500, 1510], ['COMPARING', 1510, 2000], ['FAILED_OVER', 2000, 2500], ['COMPARING', 2500, 3000],
    ]);
  });

  it('places a checkpoint whose request is not in the log by its duration, and leaves one without an answer pending to the end', () => {
    const log = parseRunLog(writeLog([
      [0, 'info', 'started', {}],
      [50, 'info', 'checkpoint-done', { epoch: 7, reason: 'timeout', ms: 20 }],
      [60, 'info', 'state', { from: 'COMPARING', to: 'CHECKPOINTING', why: 'checkpoint 8 requested (queue, tcp a > b)' }],
      [90, 'info', 'stopped', {}],
    ]));
    expect(log.checkpoints.map((c) => [c.epoch, c.outcome, c.startMs - log.startMs, c.endMs - log.startMs])).toEqual([[7, 'done', 30, 50], [8, 'pending', 60, 90]]);
    expect(log.states[0]).toMatchObject({ state: 'COMPARING', why: '(before the log)' });
  });

  it('counts suppressed and unreadable lines instead of failing on them', () => {
    const text = `${writeLog([[0, 'warn', 'log-suppressed', { suppressedEvent: 'mismatch', suppressed: 12 }], [10, 'warn', 'log-suppressed', { suppressedEvent: 'mismatch', suppressed: 3 }]])}`
      + 'shadowvm: some text on stderr\n{"no":"ts"}\n[1,2]\n';
    const log = parseRunLog(text);
    expect(log.suppressed).toEqual({ mismatch: 15 });
    expect(log.unreadableLines).toBe(3);
  });

  it('refuses a log with nothing it can read', () => {
    expect(() => parseRunLog('')).toThrow(RunLogError);
    expect(() => parseRunLog('hello\nworld\n')).toThrow(/none of its 2 lines/);
  });
});
