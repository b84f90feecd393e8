/**
 * Helpers of the QEMU lab suites (full copy and COLO): a client fetch, the
 * wait for protection, and failover and re-protection, `cycles` times in a row, in a QEMU lab: the
 * primary QEMU is SIGKILLed, the backup takes over with the CGI counter it
 * had, the agent builds a new backup from the survivor, and the counter
 * goes on counting across every swap. Shared by the full-copy and the COLO
 * suites.
 */
import type { QemuProcess } from '../../lib/qemu/process';
import type { BridgeSnapshot } from '../../lib/control/snapshot';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { runInAsync } from '../../lib/lab/exec';
import { paced } from '../../lib/lab/servers';
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

/** What the QEMU suites' helpers below need of a lab. */
interface ClientLab {
  client: { netns: string };
  serviceIpv4: string;
  bridge: { pipeline: { state: string; replicas: { standby: unknown } } };
}

/** GET `urlPath` from the lab's service with curl in the client namespace (through `dir`); the body. */
export async function labFetch(lab: ClientLab, dir: string, urlPath: string, extra: string[] = []): Promise<Buffer> {
  const file = path.join(dir, `${urlPath.replace(/[^a-z0-9.]/gi, '_')}-${Date.now()}`);
  await runInAsync(lab.client.netns, 'curl', ['-sS', '--fail', '-m', '120', ...extra, '-o', file, `http://${lab.serviceIpv4}/${urlPath}`], 150_000);
  const body = fs.readFileSync(file);
  fs.rmSync(file);
  return body;
}

/** GET `urlPath` paced at `rate` (wget: see paced()), so that it stays on the wire; the body. */
export async function labFetchPaced(lab: ClientLab, dir: string, urlPath: string, rate: string): Promise<Buffer> {
  const file = path.join(dir, `${urlPath.replace(/[^a-z0-9.]/gi, '_')}-${Date.now()}`);
  await runInAsync(lab.client.netns, 'wget', paced(file, `http://${lab.serviceIpv4}/${urlPath}`, rate, 120), 150_000);
  const body = fs.readFileSync(file);
  fs.rmSync(file);
  return body;
}

/** Waits until the bridge compares again with a backup (after a failover, a re-protection). */
export async function protectedAgain(lab: ClientLab, timeoutMs = 120_000): Promise<void> {
  await until('the bridge comparing again with a backup', () => lab.bridge.pipeline.state === 'COMPARING' && lab.bridge.pipeline.replicas.standby !== null, timeoutMs);
}
