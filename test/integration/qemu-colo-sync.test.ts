/**
 * Way 2 in the QEMU lab (root, the patched QEMU from `make qemu-colo`): the
 * QEMU agent with `sync: 'colo'` keeps one COLO secondary behind one tap and
 * repairs each divergence with a COLO checkpoint (only the pages dirtied
 * since the last one); the bridge reads the secondary's tap through a fresh
 * socket at each (protocol v3, the epoch fence); SIGKILL of the primary
 * QEMU, in the middle of a download or of a checkpoint, leaves a secondary
 * that takes over with the clients' connections. Each COLO checkpoint's
 * `checkpoint-done` carries the RAM bytes and pages it moved, read from the
 * primary's query-migrate (qemu-colo/patches/0003).
 *
 * When the patched build is absent the tests are registered with `it.skip`,
 * their names carrying the reason, and a line says so: never a pass.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { LogFn } from '../../lib/control/logger';
import { monotonicUs } from '../../lib/clock';
import { setReceiveBufferMax, teardownLab } from '../../lib/lab/netns';
import { until } from '../support/until';
import { clientBytesReceived, ftpDownloadsIdentical, IN_FLIGHT_RECEIVE_BUFFER } from '../support/lab-helpers';
import { GUEST_BIG_BYTES, GUEST_BIG_FILE, guestContent } from '../../lib/lab/qemu/guest';
import { QemuLab, startQemuLab } from '../../lib/lab/qemu/pair';
import { qemuSyncAgent } from '../../lib/lab/qemu/agent';
import { QemuAgent } from '../../lib/agents/qemu-agent';
import { QemuProcess } from '../../lib/qemu/process';
import { findColoQemu } from '../../lib/qemu/colo-probe';
import { failIfColoRequired } from '../support/colo-required';
import { EventRing } from '../support/event-ring';
import { failoverCycles, labFetch, labFetchPaced, protectedAgain as waitProtected } from '../support/failover-cycles';

// SHADOWVM_LAB_PREFIX: another prefix for the lab's namespaces and taps (runs side by side on one host).
const PREFIX = process.env.SHADOWVM_LAB_PREFIX ?? 'cw';
const PATCHED = findColoQemu();
const NOT_BUILT = 'way 2 (COLO sync agent) did not run: patched QEMU not built (make qemu-colo)';
if (!PATCHED) console.warn(NOT_BUILT);
failIfColoRequired(PATCHED, NOT_BUILT);
const itIfBuilt = PATCHED ? it : it.skip;
const name = (s: string) => (PATCHED ? s : `SKIPPED: ${NOT_BUILT}: ${s}`);
const content = guestContent();
jest.setTimeout(240_000);

describe('QEMU lab with the QEMU agent (COLO checkpoints)', () => {
  let lab: QemuLab;
  let agent: QemuAgent;
  let out: string;
  const errors: string[] = [];
  const reopened: number[] = [];
  const deaths: string[] = [];
  /** The agent's line for each COLO checkpoint: the figures its checkpoint-done carried, with the zero pages. */
  const coloSizes: { epoch: number; bytes: number | null; pages: number | null; zeroPages: number | null }[] = [];
  const ring = new EventRing();
  const log: LogFn = ring.wrap((level, event, fields) => {
    if (event === 'backup-port-reopened') reopened.push(fields?.epoch as number);
    if (event === 'qemu-agent-colo-checkpoint') coloSizes.push(fields as unknown as typeof coloSizes[number]);
    if (event === 'qemu-agent-colo-primary-died') deaths.push(JSON.stringify(fields));
    if (level === 'error' && !/primary-down|backup-down|primary-died|clone-resume-failed/.test(event)) errors.push(`${event} ${JSON.stringify(fields)}`);
  });
  const itColo = (title: string, body: () => Promise<void>, timeoutMs?: number) => itIfBuilt(title, ring.traced(body), timeoutMs);
  const factory = qemuSyncAgent({ sync: 'colo' });

  beforeAll(async () => {
    if (!PATCHED) return;
    if (process.getuid?.() !== 0) throw new Error('qemu-colo-sync.test.ts needs root (taps, a network namespace, AF_PACKET, QEMU): run jest as root');
    out = fs.mkdtempSync(path.join(os.tmpdir(), 'svm-cw-'));
    lab = await startQemuLab({ prefix: PREFIX, memMiB: 128, agent: factory, log, qemuBinary: PATCHED });
    setReceiveBufferMax(lab.client.netns, IN_FLIGHT_RECEIVE_BUFFER);
    agent = factory.last as QemuAgent;
  }, 300_000);

  afterAll(async () => {
    await lab?.stop();
    if (PATCHED) teardownLab(PREFIX);
    if (out) fs.rmSync(out, { recursive: true, force: true });
  }, 60_000);

  const snap = () => lab.bridge.snapshot();
  const primaryVm = () => agent.vms.primary as QemuProcess;
  const backupVm = () => agent.vms.backup as QemuProcess;
  const backupPort = () => snap().ports.find((p) => p.role === 'backup')?.name;

  const fetch = (urlPath: string, extra: string[] = []) => labFetch(lab, out, urlPath, extra);
  const fetchPaced = (urlPath: string) => labFetchPaced(lab, out, urlPath, '1m');
  const protectedAgain = (timeoutMs?: number) => waitProtected(lab, timeoutMs);

  async function checkpointNow(): Promise<void> {
    await until('no checkpoint in flight', () => lab.bridge.pipeline.state === 'COMPARING' && !snap().checkpoints.pending, 30_000);
    const done = snap().checkpoints.done;
    expect(lab.bridge.pipeline.request('manual', undefined, monotonicUs())).toBe(true);
    await until('the checkpoint done', () => snap().checkpoints.done > done, 30_000);
  }

  itColo(name('the first checkpoint starts COLO into a fresh VM; later ones overwrite that VM in place, behind the same tap read afresh'), async () => {
    expect(snap().state).toBe('COMPARING');
    const secondary = backupVm();
    expect(backupPort()).toBe(secondary.tap);
    expect(backupPort()).not.toBe(lab.taps.backup);
    const colo = agent.stats.coloCheckpoints;
    const fenced = reopened.length;
    await checkpointNow();
    await checkpointNow();
    expect(agent.stats.coloCheckpoints).toBe(colo + 2);
    expect(backupVm()).toBe(secondary);
    expect(backupPort()).toBe(secondary.tap);
    // Each COLO checkpoint was fenced: the bridge reopened the secondary's port.
    expect(reopened.length).toBe(fenced + 2);
    expect((await fetch('hello.txt')).equals(content.get('hello.txt') as Buffer)).toBe(true);
    console.log(`COLO checkpoints: ${agent.stats.coloMs.join(', ')} ms (pause ${agent.stats.coloPauseMs.join(', ')} ms); COLO start ${agent.stats.copyMs.join(', ')} ms`);
  });

  itColo(name('a COLO checkpoint after the guest dirtied 4 MiB reports the RAM bytes and pages it moved, and the secondary then holds the same file'), async () => {
    // 4 MiB of random bytes into the guest's tmpfs: at least 1,024 nonzero pages dirtied, in the primary only.
    const dirty = 'dd if=/dev/urandom of=/tmp/svm-dirty bs=64k count=64 2>/dev/null; md5sum /tmp/svm-dirty';
    const written = await primaryVm().consoleCommand(dirty, 60_000);
    expect(written.status).toBe(0);
    const sum = /^[0-9a-f]{32}/m.exec(written.output)?.[0];
    expect(sum).toBeDefined();
    const seen = coloSizes.length;
    await checkpointNow();
    expect(coloSizes.length).toBe(seen + 1);
    const size = coloSizes[seen];
    console.log(`COLO checkpoint after 4 MiB dirtied: ${JSON.stringify(size)}`);
    const { bytes, pages, zeroPages } = size as { bytes: number; pages: number; zeroPages: number };
    expect(pages).toBeGreaterThanOrEqual(1024);
    // Each page sent in full is 4,096 bytes of data after a header of at least 8 bytes (save_page_header in
    // migration/ram.c); a zero page is a header and one byte. A header grows by 1 + the RAM block's name
    // (at most 255) when the block changes, which happens at most once per block: a few dozen here at most.
    expect(bytes).toBeGreaterThanOrEqual(pages * (4096 + 8) + zeroPages * 9);
    expect(bytes).toBeLessThanOrEqual(pages * (4096 + 8) + zeroPages * 9 + 64 * (1 + 255) + 1024);
    expect(agent.stats.coloBytes.at(-1)).toBe(bytes);
    expect(agent.stats.coloPages.at(-1)).toBe(pages);
    expect((await backupVm().consoleCommand('md5sum /tmp/svm-dirty', 30_000)).output).toContain(sum as string);
    // Idle again: far less moves (the guest's own timers and the console).
    await checkpointNow();
    const idle = coloSizes[seen + 1];
    expect(idle.pages).not.toBeNull();
    expect(idle.pages as number).toBeLessThan(pages);
    expect(idle.bytes as number).toBeGreaterThanOrEqual((idle.pages as number) * (4096 + 8));
    console.log(`COLO checkpoint right after: ${JSON.stringify(idle)}`);
    await primaryVm().consoleCommand('rm -f /tmp/svm-dirty', 30_000);
  });

  itColo(name('a counter changed in the primary alone diverges once; a COLO checkpoint carries it over, and the next answers match'), async () => {
    expect(await primaryVm().consoleCommand('echo 500 > /var/lib/svm/counter', 10_000)).toMatchObject({ status: 0 });
    const before = snap();
    const colo = agent.stats.coloCheckpoints;
    const secondary = backupVm();
    expect((await fetch('cgi-bin/counter')).toString()).toBe('501\n');
    const diverged = snap();
    expect(diverged.mismatches - before.mismatches).toBeLessThanOrEqual(1);
    await protectedAgain();
    expect(snap().checkpoints.done).toBeGreaterThan(before.checkpoints.done);
    expect(agent.stats.coloCheckpoints).toBeGreaterThan(colo);
    expect(backupVm()).toBe(secondary);
    expect((await backupVm().consoleCommand('cat /var/lib/svm/counter', 10_000)).output).toMatch(/^501$/m);
    expect((await fetch('cgi-bin/counter')).toString()).toBe('502\n');
    expect((await fetch('cgi-bin/counter')).toString()).toBe('503\n');
    const after = snap();
    expect(after.mismatches).toBe(diverged.mismatches);
    expect(after.checkpoints.requested.timeout).toBe(before.checkpoints.requested.timeout);
  });

  itColo(name('FTP passive downloads come through byte-identical, with no timeout checkpoints, whatever the 227 replies say'), async () => {
    const before = snap();
    const colo = agent.stats.coloCheckpoints;
    await ftpDownloadsIdentical(lab.client.netns, lab.serviceIpv4, GUEST_BIG_FILE, content.get(GUEST_BIG_FILE) as Buffer, out);
    const after = snap();
    const mismatches = after.checkpoints.requested.mismatch - before.checkpoints.requested.mismatch;
    expect(mismatches).toBeLessThanOrEqual(3);
    expect(after.checkpoints.requested.timeout).toBe(before.checkpoints.requested.timeout);
    expect(after.checkpoints.failed).toBe(before.checkpoints.failed);
    console.log(`FTP (COLO): 3 transfers, ${mismatches} mismatch checkpoint(s), ${agent.stats.coloCheckpoints - colo} COLO checkpoints, last ${agent.stats.coloMs.slice(-3).join(', ')} ms`);
  });

  itColo(name('SIGKILL of the primary QEMU in the middle of a download: the secondary takes over and the download is intact'), async () => {
    const failovers = snap().failover.count;
    const download = fetchPaced(GUEST_BIG_FILE);
    await new Promise((r) => setTimeout(r, 1500));
    // On the wire still (wget paces it, the client's buffer is small): the death strikes the download, not its end.
    expect(clientBytesReceived(lab).some((b) => b > 0 && b < GUEST_BIG_BYTES)).toBe(true);
    const victim = primaryVm();
    const secondary = backupVm();
    await victim.kill('SIGKILL');
    const body = await download;
    expect(body.equals(content.get(GUEST_BIG_FILE) as Buffer)).toBe(true);
    expect(snap().failover.count).toBe(failovers + 1);
    await protectedAgain();
    expect(primaryVm()).toBe(secondary);
    expect((await fetch('hello.txt')).equals(content.get('hello.txt') as Buffer)).toBe(true);
    // Re-protected by COLO from the survivor: checkpoints are COLO ones again.
    const colo = agent.stats.coloCheckpoints;
    await checkpointNow();
    expect(agent.stats.coloCheckpoints).toBe(colo + 1);
  });

  itColo(name('SIGKILL of the primary in the middle of a COLO checkpoint: the secondary takes over, in whichever state it had'), async () => {
    const failovers = snap().failover.count;
    const download = fetchPaced(GUEST_BIG_FILE);
    await new Promise((r) => setTimeout(r, 1000));
    await until('no checkpoint in flight', () => lab.bridge.pipeline.state === 'COMPARING' && !snap().checkpoints.pending, 30_000);
    const victim = primaryVm();
    const secondary = backupVm();
    const paused = victim.qmp.waitForEvent('STOP', 30_000);
    expect(lab.bridge.pipeline.request('manual', undefined, monotonicUs())).toBe(true);
    await paused; // the checkpoint has begun: both are stopped
    await victim.kill('SIGKILL');
    const body = await download;
    expect(body.equals(content.get(GUEST_BIG_FILE) as Buffer)).toBe(true);
    expect(snap().failover.count).toBe(failovers + 1);
    expect(primaryVm()).toBe(secondary);
    await protectedAgain();
    expect((await fetch('hello.txt')).equals(content.get('hello.txt') as Buffer)).toBe(true);
    console.log(`primary deaths as the agent saw them: ${deaths.join(' ')}`);
    expect(errors).toEqual([]);
  });

  itColo(name('10 failover and re-protection cycles in a row: each new secondary enters COLO from the survivor'), async () => {
    await failoverCycles({ snap, primaryVm, fetch, protectedAgain }, 10);
    // The last re-protection left a COLO pair, not a full copy: the next checkpoint is a COLO one.
    const coloCheckpoints = coloSizes.length;
    await checkpointNow();
    expect(coloSizes.length).toBe(coloCheckpoints + 1);
    expect(errors).toEqual([]);
  }, 900_000);
});
