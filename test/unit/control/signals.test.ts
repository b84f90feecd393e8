/**
 * What signals do to a running bridge: stop, within a deadline even if the
 * stop hangs; SIGHUP, SIGUSR1 and SIGUSR2 are logged and never kill.
 * (Real signals to a real `shadowvm run` are in
 * test/integration/hostile-signals.test.ts.)
 */
import { EventEmitter } from 'node:events';
import { BridgeSignals, STOP_SIGNALS } from '../../../lib/control/signals';
import type { LogLevel } from '../../../lib/control/logger';

class FakeProcess extends EventEmitter {
  send(signal: NodeJS.Signals): void {
    this.emit(signal);
  }
}

function setup(stop: () => Promise<void>, deadlineMs = 1000) {
  const proc = new FakeProcess();
  const lines: { level: LogLevel; event: string; fields?: Record<string, unknown> }[] = [];
  let stops = 0;
  const signals = new BridgeSignals({
    stop: () => { stops++; return stop(); },
    log: (level, event, fields) => lines.push({ level, event, fields }),
    deadlineMs,
    signals: proc,
  });
  return { proc, lines, signals, stops: () => stops };
}

const never = () => new Promise<void>(() => {});

describe('BridgeSignals', () => {
  it.each(STOP_SIGNALS)('stops on %s and settles as stopped', async (signal) => {
    const { proc, lines, signals, stops } = setup(async () => {});
    proc.send(signal);
    expect(await signals.outcome).toBe('stopped');
    expect(stops()).toBe(1);
    expect(lines).toEqual([{ level: 'info', event: 'signal', fields: { signal } }]);
  });

  it('gives up waiting for a stop that hangs once the deadline passes, with one log line', async () => {
    const { proc, lines, signals } = setup(never, 50);
    proc.send('SIGTERM');
    expect(await signals.outcome).toBe('deadline');
    expect(lines.map((l) => l.event)).toEqual(['signal', 'stop-deadline']);
    expect(lines[1]).toMatchObject({ level: 'error', fields: { deadlineMs: 50 } });
  });

  it('gives up at once on a second stop signal', async () => {
    const { proc, lines, signals, stops } = setup(never, 60_000);
    proc.send('SIGTERM');
    proc.send('SIGINT');
    expect(await signals.outcome).toBe('forced');
    expect(stops()).toBe(1);
    expect(lines.map((l) => l.event)).toEqual(['signal', 'signal-again']);
    signals.dispose();
  });

  it('settles as failed when the stop throws', async () => {
    const { proc, lines, signals } = setup(() => Promise.reject(new Error('port busy')));
    proc.send('SIGTERM');
    expect(await signals.outcome).toBe('failed');
    expect(lines[1]).toMatchObject({ level: 'error', event: 'stop-failed' });
  });

  it.each(['SIGHUP', 'SIGUSR1', 'SIGUSR2'] as const)('logs and ignores %s: no stop, the process lives on', async (signal) => {
    const { proc, lines, signals, stops } = setup(async () => {});
    proc.send(signal);
    proc.send(signal);
    const settled = await Promise.race([signals.outcome, new Promise((r) => setImmediate(() => r('pending')))]);
    expect(settled).toBe('pending');
    expect(stops()).toBe(0);
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatchObject({ level: 'warn', event: 'signal-ignored', fields: { signal } });
    signals.dispose();
  });

  it('removes only its stop listeners on dispose: SIGHUP and SIGUSR1 keep a listener, so their default action never returns', () => {
    const { proc, signals } = setup(async () => {});
    signals.dispose();
    expect(proc.listenerCount('SIGTERM')).toBe(0);
    expect(proc.listenerCount('SIGINT')).toBe(0);
    for (const s of ['SIGHUP', 'SIGUSR1', 'SIGUSR2']) expect(proc.listenerCount(s)).toBe(1);
  });
});
