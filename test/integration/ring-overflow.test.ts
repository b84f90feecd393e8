/**
 * `shadowvm run` as an administrator starts it (its defaults: virtio-net
 * headers, a realtime data plane as root) under downloads, stopped twice for
 * 300 ms (SIGSTOP, as a host that starves it would): its receive rings
 * overflow and frames are lost before it sees them, the primary's among
 * them. Every download must still arrive intact: a checkpoint releases the
 * primary's output past the lost frame, the client acknowledges it, and the
 * bridge must take that ACK (it once judged it an ACK of bytes never sent,
 * dropped every one, and the connections stalled for good). Needs root.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { queryControlSocket } from '../../lib/control/control-socket';
import type { BridgeSnapshot } from '../../lib/control/snapshot';
import { fixedSeedBytes } from '../../lib/lab/content';
import { runInAsync } from '../../lib/lab/exec';
import { Lab, buildLab, findLabLeftovers, teardownLab, waitUntilQuiet } from '../../lib/lab/netns';
import { serveOnBoth, startLabServers } from '../../lib/lab/servers';
import { CliProcess, delay, NO_LEFTOVERS, requireBuiltCli, requireRoot, sha256, spawnShadowvm } from '../support/lab-helpers';

const PREFIX = 'svmro';
const FILE = 'overflow.bin';
const BYTES = 24 << 20;
const DOWNLOADS = 3;
jest.setTimeout(120_000);

async function status(control: string): Promise<BridgeSnapshot | null> {
  try {
    const r = await queryControlSocket(control, { cmd: 'status' }, 2000);
    return r.ok ? r.status : null;
  } catch {
    return null;
  }
}

describe('shadowvm run whose rings overflow under downloads (netns lab, root)', () => {
  let lab: Lab | undefined;
  let bridge: CliProcess | undefined;
  let agent: CliProcess | undefined;

  afterAll(async () => {
    if (bridge?.child.pid) {
      try { process.kill(bridge.child.pid, 'SIGCONT'); } catch { /* gone */ }
    }
    for (const p of [agent, bridge]) {
      if (p && p.child.exitCode === null) {
        p.child.kill('SIGTERM');
        const kill = setTimeout(() => p.child.kill('SIGKILL'), 5000);
        await p.exited;
        clearTimeout(kill);
      }
    }
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
    const control = join(lab.runDir, 'control.sock');
    const agentSocket = join(lab.runDir, 'agent.sock');
    bridge = spawnShadowvm(['run', '--name', PREFIX, '--uplink', lab.client.hostIf, '--primary', lab.primary.hostIf, '--backup', lab.backup.hostIf,
      '--agent', agentSocket, '--control', control, '--resync', 'align', '--log-level', 'info']);
    await bridge.waitFor(/"event":"(started|data-plane-started)"/, 20_000);
    agent = spawnShadowvm(['agent', 'lab', '--name', PREFIX, '--socket', agentSocket, '--delay-ms', '5']);
    let s: BridgeSnapshot | null = null;
    for (let i = 0; i < 200 && s?.state !== 'COMPARING'; i++) {
      await delay(50);
      s = await status(control);
    }
    expect(s?.state).toBe('COMPARING');
    const dropsBefore = s!.ports.reduce((n, p) => n + p.rxDrops, 0);

    const outs = Array.from({ length: DOWNLOADS }, (_, i) => join(lab!.runDir, `download-${i}.bin`));
    const downloads = outs.map((out) => runInAsync(lab!.client.netns, 'curl', ['-sS', '--fail', '--max-time', '60', '--limit-rate', '8M', '-o', out, `http://${lab!.serviceIpv4}/${FILE}`], 70_000));
    for (const d of downloads) d.catch(() => {}); // awaited below
    const pid = bridge.child.pid!;
    for (let stop = 0; stop < 2; stop++) {
      await delay(600);
      process.kill(pid, 'SIGSTOP');
      await delay(300);
      process.kill(pid, 'SIGCONT');
    }
    await Promise.all(downloads);
    for (const out of outs) expect(sha256(readFileSync(out))).toBe(sha256(content));

    const after = await status(control);
    const drops = after!.ports.reduce((n, p) => n + p.rxDrops, 0) - dropsBefore;
    console.log(`ring overflow: ${drops} frame(s) lost in the rings, checkpoints ${JSON.stringify(after!.checkpoints.requested)}; ${DOWNLOADS} downloads of ${BYTES >> 20} MiB intact`);
    // The stops did overflow the rings: otherwise this test showed nothing.
    expect(drops).toBeGreaterThan(0);
    expect(after!.state).toBe('COMPARING');
  });
});
