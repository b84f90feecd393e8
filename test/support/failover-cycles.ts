/**
 * Failover and re-protection, `cycles` times in a row, in a QEMU lab: the
 * primary QEMU is SIGKILLed, the backup takes over with the CGI counter it
 * had, the agent builds a new backup from the survivor, and the counter
 * goes on counting across every swap. Shared by the full-copy and the COLO
 * suites.
 */
import type { QemuProcess } from '../../lib/qemu/process';
import type { BridgeSnapshot } from '../../lib/control/snapshot';
import { until } from './until';

export interface CycleLab {
  snap(): BridgeSnapshot;
  primaryVm(): QemuProcess;
  fetch(urlPath: string): Promise<Buffer>;
  protectedAgain(): Promise<void>;
}

export async function failoverCycles(lab: CycleLab, cycles: number): Promise<void> {
  const failovers = lab.snap().failover.count;
  let counter = Number((await lab.fetch('cgi-bin/counter')).toString());
  for (let i = 0; i < cycles; i++) {
    await lab.primaryVm().kill('SIGKILL');
    await until(`failover ${i + 1}`, () => lab.snap().failover.count === failovers + i + 1, 30_000);
    // Served by the promoted backup, with the state it had: the counter goes on.
    expect(Number((await lab.fetch('cgi-bin/counter')).toString())).toBe(++counter);
    await lab.protectedAgain();
    expect(Number((await lab.fetch('cgi-bin/counter')).toString())).toBe(++counter);
  }
  const s = lab.snap();
  expect(s.failover.count).toBe(failovers + cycles);
  expect(s.state).toBe('COMPARING');
}
