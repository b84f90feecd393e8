import { scavengeHelpers } from '../../../lib/cli/commands/run';

describe('run: does V8 scavenge with its helper threads?', () => {
  test('not by default when the data plane has its own thread and may be realtime', () => {
    expect(scavengeHelpers(undefined, true, 'auto')).toBe(false);
    expect(scavengeHelpers(undefined, true, 'on')).toBe(false);
  });

  test('by default with --realtime off, or with one thread for everything', () => {
    expect(scavengeHelpers(undefined, true, 'off')).toBe(true);
    expect(scavengeHelpers(undefined, false, 'auto')).toBe(true);
  });

  test('--scavenge-helpers and --no-scavenge-helpers win', () => {
    expect(scavengeHelpers(true, true, 'on')).toBe(true);
    expect(scavengeHelpers(false, false, 'off')).toBe(false);
  });
});
