/**
 * `shadowvm run` as an administrator starts it (virtio-net headers, a
 * realtime data plane as root; one ring a port) under downloads, stopped twice for
 * 300 ms (SIGSTOP, as a host that starves it would): its receive rings
 * overflow and frames are lost before it sees them, the primary's among
 * them. Every download must still arrive intact: a checkpoint releases the
 * primary's output past the lost frame, the client acknowledges it, and the
 * bridge must take that ACK (it once judged it an ACK of bytes never sent,
 * dropped every one, and the connections stalled for good). Needs root.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fixedSeedBytes } from '../../lib/lab/content';
import { runInAsync } from '../../lib/lab/exec';
import { Lab, buildLab, findLabLeftovers, teardownLab, waitUntilQuiet } from '../../lib/lab/netns';
import { serveOnBoth, startLabServers } from '../../lib/lab/servers';
import { delay, NO_LEFTOVERS, paced, requireBuiltCli, requireRoot, RunWithLabAgent, sha256, startRunWithLabAgent } from '../support/lab-helpers';

const PREFIX = 'svmro';
const FILE = 'overflow.bin';
const BYTES = 24 << 20;
const DOWNLOADS = 3;
jest.setTimeout(120_000);

describe('shadowvm run whose rings overflow under downloads (netns lab, root)', () => {
  let lab: Lab | undefined;
  let run: RunWithLabAgent | undefined;

  afterAll(async () => {
    const pid = run?.bridge.child.pid;
    if (pid) {
      try { process.kill(pid, 'SIGCONT'); } catch { /* gone */ }
    }
    await run?.stop();
    teardownLab(PREFIX);
    expect(findLabLeftovers(PREFIX)).toEqual(NO_LEFTOVERS);
  }, 30_000);

  it('a bridge stopped twice for 300 ms loses frames in its rings, and every download still arrives intact', async () => {
    requireRoot('ring-overflow.test.ts');
    requireBuiltCli();
    lab = buildLab({ prefix: PREFIX });
    const servers = await startLabServers(lab);
    const content = fixedSeedBytes(BYTES, 0x0f1);
    serveOnBoth(servers, FILE, content);
    await waitUntilQuiet(lab);
    // One ring of 512 super-frame slots a port (--no-split-rings: few slots for MTU-sized frames, so a stop
    // overflows it); run's defaults otherwise: virtio-net headers, a realtime data plane as root.
    run = await startRunWithLabAgent(lab, PREFIX, ['--no-split-rings', '--log-level', 'info']);
    const before = await run.status();
    const dropsBefore = before!.ports.reduce((n, p) => n + p.rxDrops, 0);

    const outs = Array.from({ length: DOWNLOADS }, (_, i) => join(lab!.runDir, `download-${i}.bin`));
    const downloads = outs.map((out) => runInAsync(lab!.client.netns, 'wget', paced(out, `http://${lab!.serviceIpv4}/${FILE}`, '8m', 60), 70_000));
    for (const d of downloads) d.catch(() => {}); // awaited below
    const pid = run.bridge.child.pid!;
    for (let stop = 0; stop < 2; stop++) {
      await delay(600);
      process.kill(pid, 'SIGSTOP');
      await delay(300);
      process.kill(pid, 'SIGCONT');
    }
    await Promise.all(downloads);
    for (const out of outs) expect(sha256(readFileSync(out))).toBe(sha256(content));

    const after = await run.status();
    const drops = after!.ports.reduce((n, p) => n + p.rxDrops, 0) - dropsBefore;
    console.log(`ring overflow: ${drops} frame(s) lost in the rings, checkpoints ${JSON.stringify(after!.checkpoints.requested)}; ${DOWNLOADS} downloads of ${BYTES >> 20} MiB intact`);
    // The stops did overflow the rings: otherwise this test showed nothing.
    expect(drops).toBeGreaterThan(0);
    expect(after!.state).toBe('COMPARING');
  });

  it('split rings (the default) with offloads on (GSO super-frames in the large ring, the rest in the small one): a stopped bridge, and every download intact', async () => {
    const l = lab!;
    await run!.stop();
    const content = fixedSeedBytes(BYTES, 0x0f1);
    // TSO in the servers' namespaces: their segments reach the bridge as super-frames.
    for (const n of [l.primary, l.backup, l.client]) await runInAsync(n.netns, 'ethtool', ['-K', n.nsIf, 'tx', 'on', 'tso', 'on', 'gso', 'on'], 10_000);
    run = await startRunWithLabAgent(l, PREFIX, ['--log-level', 'info']);
    const s = await run.status();
    expect(s!.ports.every((p) => p.ring?.large !== undefined)).toBe(true);
    const outs = Array.from({ length: DOWNLOADS }, (_, i) => join(l.runDir, `split-${i}.bin`));
    const downloads = outs.map((out) => runInAsync(l.client.netns, 'wget', paced(out, `http://${l.serviceIpv4}/${FILE}`, '8m', 60), 70_000));
    for (const d of downloads) d.catch(() => {}); // awaited below
    await delay(800);
    process.kill(run.bridge.child.pid!, 'SIGSTOP');
    await delay(300);
    process.kill(run.bridge.child.pid!, 'SIGCONT');
    await Promise.all(downloads);
    for (const out of outs) expect(sha256(readFileSync(out))).toBe(sha256(content));
    const after = await run.status();
    console.log(`split rings, offloads on: ${after!.ports.reduce((n, p) => n + p.rxDrops, 0)} frame(s) lost in the rings, checkpoints ${JSON.stringify(after!.checkpoints.requested)}; ${DOWNLOADS} downloads intact`);
    expect(after!.state).toBe('COMPARING');
  });
});
