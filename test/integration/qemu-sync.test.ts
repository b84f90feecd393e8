/**
 * Real state sync in the QEMU lab (root): the QEMU agent copies the primary
 * into a fresh VM at every checkpoint (way 1, full copy), so a divergence is
 * repaired for real; SIGKILL of the primary QEMU, in the middle of a download
 * or of a checkpoint, leaves a backup that takes over with the clients'
 * connections; and failover + re-protection repeats.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { LogFn } from '../../lib/control/logger';
import { monotonicUs } from '../../lib/clock';
import { setReceiveBufferMax, teardownLab } from '../../lib/lab/netns';
import { until } from '../support/until';
import { failoverCycles, labFetch, labFetchPaced, protectedAgain as waitProtected } from '../support/failover-cycles';
import { clientBytesReceived, ftpDownloadsIdentical, IN_FLIGHT_RECEIVE_BUFFER } from '../support/lab-helpers';
import { EventRing } from '../support/event-ring';
import { GUEST_BIG_BYTES, GUEST_BIG_FILE, guestContent } from '../../lib/lab/qemu/guest';
import { QemuLab, startQemuLab } from '../../lib/lab/qemu/pair';
import { qemuSyncAgent } from '../../lib/lab/qemu/agent';
import { QemuAgent } from '../../lib/agents/qemu-agent';
import { QemuProcess } from '../../lib/qemu/process';

// SHADOWVM_LAB_PREFIX: another prefix for the lab's namespaces and taps (runs side by side on one host).
const PREFIX = process.env.SHADOWVM_LAB_PREFIX ?? 'qy';
const content = guestContent();
jest.setTimeout(240_000);

describe('QEMU lab with the QEMU agent (full copy)', () => {
  let lab: QemuLab;
  let agent: QemuAgent;
  let out: string;
  const errors: string[] = [];
  const ring = new EventRing();
  const log: LogFn = ring.wrap((level, event, fields) => {
    if (level === 'error' && !/primary-down|backup-down|primary-died|clone-resume-failed/.test(event)) errors.push(`${event} ${JSON.stringify(fields)}`);
  });
  /** A test that prints the lab's last events when it fails. */
  const test = (title: string, body: () => Promise<void> | void, timeoutMs?: number) => it(title, ring.traced(async () => { await body(); }), timeoutMs);
  const factory = qemuSyncAgent();

  beforeAll(async () => {
    if (process.getuid?.() !== 0) throw new Error('qemu-sync.test.ts needs root (taps, a network namespace, AF_PACKET, QEMU): run jest as root');
    out = fs.mkdtempSync(path.join(os.tmpdir(), 'svm-qy-'));
    lab = await startQemuLab({ prefix: PREFIX, memMiB: 128, agent: factory, log });
    setReceiveBufferMax(lab.client.netns, IN_FLIGHT_RECEIVE_BUFFER);
    agent = factory.last as QemuAgent;
  }, 300_000);

  afterAll(async () => {
    await lab?.stop();
    teardownLab(PREFIX);
    if (out) fs.rmSync(out, { recursive: true, force: true });
  }, 60_000);

  const snap = () => lab.bridge.snapshot();
  const primaryVm = () => agent.vms.primary as QemuProcess;
  const backupVm = () => agent.vms.backup as QemuProcess;

  const fetch = (urlPath: string, extra: string[] = []) => labFetch(lab, out, urlPath, extra);
  const fetchPaced = (urlPath: string) => labFetchPaced(lab, out, urlPath, '1m');
  const protectedAgain = (timeoutMs?: number) => waitProtected(lab, timeoutMs);

  test('the first checkpoint is a real copy: the backup now runs behind a fresh tap', () => {
    const s = snap();
    expect(s.state).toBe('COMPARING');
    expect(agent.stats.done).toBeGreaterThanOrEqual(1);
    expect(agent.stats.copyBytes[0]).toBeGreaterThan(10 << 20);
    const backupPort = s.ports.find((p) => p.role === 'backup')?.name;
    expect(backupPort).toBe(backupVm().tap);
    expect(backupPort).not.toBe(lab.taps.backup);
  });

  test('a counter changed in the primary alone diverges once; the checkpoint copies it, and the next answers match', async () => {
    expect(await primaryVm().consoleCommand('echo 500 > /var/lib/svm/counter', 10_000)).toMatchObject({ status: 0 });
    const before = snap();
    expect((await fetch('cgi-bin/counter')).toString()).toBe('501\n');
    const diverged = snap();
    // One mismatch, one checkpoint (none at all if some other checkpoint copied the primary in between).
    expect(diverged.mismatches - before.mismatches).toBeLessThanOrEqual(1);
    await protectedAgain();
    expect(snap().checkpoints.done).toBeGreaterThan(before.checkpoints.done);
    // The backup is a copy of the primary now: it has the primary's counter.
    expect((await backupVm().consoleCommand('cat /var/lib/svm/counter', 10_000)).output).toMatch(/^501$/m);
    expect((await fetch('cgi-bin/counter')).toString()).toBe('502\n');
    expect((await fetch('cgi-bin/counter')).toString()).toBe('503\n');
    const after = snap();
    expect(after.mismatches).toBe(diverged.mismatches);
    expect(after.checkpoints.requested.timeout).toBe(before.checkpoints.requested.timeout);
  });

  test('FTP passive downloads come through byte-identical, with no timeout checkpoints, whatever the 227 replies say', async () => {
    const before = snap();
    await ftpDownloadsIdentical(lab.client.netns, lab.serviceIpv4, GUEST_BIG_FILE, content.get(GUEST_BIG_FILE) as Buffer, out);
    const after = snap();
    const mismatches = after.checkpoints.requested.mismatch - before.checkpoints.requested.mismatch;
    // At most the control connection's 227 per transfer; after each checkpoint the flows compare equal again.
    expect(mismatches).toBeLessThanOrEqual(3);
    expect(after.checkpoints.requested.timeout).toBe(before.checkpoints.requested.timeout);
    expect(after.checkpoints.failed).toBe(before.checkpoints.failed);
    console.log(`FTP: 3 transfers of ${GUEST_BIG_FILE}, ${mismatches} mismatch checkpoint(s), copies ${agent.stats.copyMs.slice(-mismatches || -1).join(', ')} ms`);
  });

  test('SIGKILL of the primary QEMU in the middle of a download: the backup takes over and the download is intact', async () => {
    const failovers = snap().failover.count;
    const download = fetchPaced(GUEST_BIG_FILE);
    await new Promise((r) => setTimeout(r, 1500));
    // On the wire still (wget paces it, the client's buffer is small): the death strikes the download, not its end.
    expect(clientBytesReceived(lab).some((b) => b > 0 && b < GUEST_BIG_BYTES)).toBe(true);
    const victim = primaryVm();
    await victim.kill('SIGKILL');
    const body = await download;
    expect(body.equals(content.get(GUEST_BIG_FILE) as Buffer)).toBe(true);
    expect(snap().failover.count).toBe(failovers + 1);
    await protectedAgain();
    expect(primaryVm()).not.toBe(victim);
    expect((await fetch('hello.txt')).equals(content.get('hello.txt') as Buffer)).toBe(true);
  });

  test('SIGKILL of the primary in the middle of a checkpoint: the old backup, untouched, takes over', async () => {
    const failovers = snap().failover.count;
    const download = fetchPaced(GUEST_BIG_FILE);
    await new Promise((r) => setTimeout(r, 1000));
    // A checkpoint the download itself caused (a Date: header a second apart) must be over first.
    await until('no checkpoint in flight', () => lab.bridge.pipeline.state === 'COMPARING' && !snap().checkpoints.pending, 30_000);
    const victim = primaryVm();
    const oldBackup = backupVm();
    const paused = victim.qmp.waitForEvent('STOP', 30_000);
    expect(lab.bridge.pipeline.request('manual', undefined, monotonicUs())).toBe(true);
    const epoch = lab.bridge.pipeline.replicator.pending!.epoch;
    await paused; // the copy has begun: the primary is paused
    await victim.kill('SIGKILL');
    await until('the failover', () => snap().failover.count === failovers + 1, 30_000);
    // The copy never completed (the checkpoint was never answered done), so the old backup was never
    // retired: it is the primary now.
    expect(lab.bridge.pipeline.replicator.history.find((r) => r.epoch === epoch)?.outcome).not.toBe('done');
    // The agent learns who the primary is from the bridge's `failover` message, a moment after the bridge
    // counts the failover (CI once read the agent's view in between: still the dead VM).
    await until('the agent names the new primary', () => primaryVm() !== victim, 10_000);
    expect(primaryVm()).toBe(oldBackup);
    const body = await download;
    expect(body.equals(content.get(GUEST_BIG_FILE) as Buffer)).toBe(true);
    expect(snap().failover.count).toBe(failovers + 1);
    await protectedAgain();
  });

  test('10 failover and re-protection cycles in a row', async () => {
    await failoverCycles({ snap, primaryVm, fetch, protectedAgain }, 10);
    expect(errors).toEqual([]);
  }, 900_000);
});
