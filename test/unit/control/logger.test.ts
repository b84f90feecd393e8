import { Logger, LoggerOptions } from '../../../lib/control/logger';

function setup(opts: LoggerOptions = {}) {
  const lines: Record<string, unknown>[] = [];
  const raw: string[] = [];
  let now = Date.UTC(2024, 0, 2, 3, 4, 5, 678);
  const logger = new Logger({
    stream: { write: (s: string) => { raw.push(s); lines.push(JSON.parse(s)); } },
    clock: () => now,
    summaryTimer: false,
    ...opts,
  });
  return { logger, lines, raw, advance: (ms: number) => { now += ms; } };
}

describe('Logger', () => {
  it('writes one JSON object per line with ts, level and event first', () => {
    const { logger, raw, lines } = setup();
    logger.warn('mismatch', { flow: 'tcp a > b', offset: 3 });
    expect(raw).toEqual(['{"ts":"2024-01-02T03:04:05.678Z","level":"warn","event":"mismatch","flow":"tcp a > b","offset":3}\n']);
    logger.log('info', 'state');
    expect(lines[1]).toEqual({ ts: '2024-01-02T03:04:05.678Z', level: 'info', event: 'state' });
  });

  it('keeps its own ts, level and event when the fields carry the same names', () => {
    const { logger, lines } = setup();
    logger.info('checkpoint-done', { event: 'spoof', level: 'error', epoch: 3 });
    expect(lines[0]).toMatchObject({ level: 'info', event: 'checkpoint-done', epoch: 3 });
  });

  it('writes errors, bigints and base fields in a readable form', () => {
    const { logger, lines } = setup({ fields: { bridge: 'lab' } });
    logger.error('agent-socket-error', { error: new RangeError('boom'), n: 10n });
    expect(lines[0]).toMatchObject({ bridge: 'lab', error: { name: 'RangeError', message: 'boom' }, n: '10' });
  });

  it('drops lines below its level', () => {
    const { logger, lines } = setup({ level: 'warn' });
    logger.debug('a');
    logger.info('b');
    logger.warn('c');
    logger.error('d');
    expect(lines.map((l) => l.event)).toEqual(['c', 'd']);
  });

  it('writes at most N lines per event per second, then one line saying how many it suppressed', () => {
    const { logger, lines, advance } = setup({ perEventPerSecond: 3 });
    for (let i = 0; i < 10; i++) {
      logger.warn('malformed-frame', { i });
      logger.info('other', { i });
      advance(10);
    }
    expect(lines.filter((l) => l.event === 'malformed-frame').map((l) => l.i)).toEqual([0, 1, 2]);
    expect(lines.filter((l) => l.event === 'other')).toHaveLength(3);
    expect(logger.suppressedTotal).toBe(14);
    advance(1000);
    logger.warn('malformed-frame', { i: 99 });
    const tail = lines.slice(-2);
    expect(tail[0]).toMatchObject({ level: 'warn', event: 'log-suppressed', suppressedEvent: 'malformed-frame', suppressed: 7, limitPerSecond: 3 });
    expect(tail[1]).toMatchObject({ event: 'malformed-frame', i: 99 });
  });

  it('gives the summary the highest level among the suppressed lines', () => {
    const { logger, lines, advance } = setup({ perEventPerSecond: 1 });
    logger.info('x');
    logger.info('x');
    logger.error('x');
    logger.info('x');
    advance(1000);
    logger.flush();
    expect(lines[lines.length - 1]).toMatchObject({ event: 'log-suppressed', level: 'error', suppressed: 3 });
  });

  it('writes pending summaries on flush only for windows that have ended, and all of them on close', () => {
    const { logger, lines, advance } = setup({ perEventPerSecond: 1 });
    logger.warn('a');
    logger.warn('a');
    logger.flush();
    expect(lines).toHaveLength(1);
    advance(500);
    logger.close();
    expect(lines[1]).toMatchObject({ event: 'log-suppressed', suppressedEvent: 'a', suppressed: 1 });
  });

  it('writes the summary on a timer when the event does not come back', async () => {
    const lines: Record<string, unknown>[] = [];
    const logger = new Logger({ stream: { write: (s: string) => lines.push(JSON.parse(s)) }, perEventPerSecond: 2, windowMs: 40 });
    for (let i = 0; i < 5; i++) logger.warn('burst');
    await new Promise((r) => setTimeout(r, 120));
    expect(lines.map((l) => l.event)).toEqual(['burst', 'burst', 'log-suppressed']);
    expect(lines[2]).toMatchObject({ suppressed: 3 });
    logger.close();
  });

  it('does not limit when the limit is 0', () => {
    const { logger, lines } = setup({ perEventPerSecond: 0 });
    for (let i = 0; i < 100; i++) logger.info('x');
    expect(lines).toHaveLength(100);
  });

  it('can be handed over as a plain log function', () => {
    const { logger, lines } = setup();
    const log = logger.log;
    log('warn', 'degraded', { why: 'no agent' });
    expect(lines[0]).toMatchObject({ event: 'degraded', why: 'no agent' });
  });
});
