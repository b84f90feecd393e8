import { realtimeForWorkers, scavengeHelpers } from '../../../lib/cli/commands/run';

describe('run: does V8 scavenge with its helper threads?', () => {
  test('by default, with helpers that run realtime with the data plane (--realtime-helpers, the default)', () => {
    expect(scavengeHelpers(undefined, true, 'auto')).toBe(true);
    expect(scavengeHelpers(undefined, true, 'on', true)).toBe(true);
  });

  test('not by default when the data plane has its own thread, may be realtime, and its helpers stay normal', () => {
    expect(scavengeHelpers(undefined, true, 'auto', false)).toBe(false);
    expect(scavengeHelpers(undefined, true, 'on', false)).toBe(false);
  });

  test('by default with --realtime off, or with one thread for everything', () => {
    expect(scavengeHelpers(undefined, true, 'off', false)).toBe(true);
    expect(scavengeHelpers(undefined, false, 'auto', false)).toBe(true);
  });

  test('--scavenge-helpers and --no-scavenge-helpers win', () => {
    expect(scavengeHelpers(true, true, 'on', false)).toBe(true);
    expect(scavengeHelpers(false, false, 'off')).toBe(false);
  });
});

describe('realtimeForWorkers', () => {
  it('keeps --realtime auto while a CPU is left over, turns it off with a worker on every CPU, and never overrides on or off', () => {
    expect(realtimeForWorkers('auto', 1, 2)).toBe('auto');
    expect(realtimeForWorkers('auto', 1, 1)).toBe('auto');
    expect(realtimeForWorkers('auto', 2, 4)).toBe('auto');
    expect(realtimeForWorkers('auto', 2, 2)).toBe('off');
    expect(realtimeForWorkers('auto', 8, 4)).toBe('off');
    expect(realtimeForWorkers('on', 2, 2)).toBe('on');
    expect(realtimeForWorkers('off', 1, 16)).toBe('off');
  });
});
