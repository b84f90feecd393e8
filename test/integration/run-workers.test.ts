/**
 * `shadowvm run --workers 2` protecting the netns lab with the lab agent, as
 * an administrator runs it (its own process, run's default ports: split
 * rings, virtio-net headers): the flows are shared between two data-plane
 * threads, a checkpoint is one for both, and when the primary dies in the
 * middle of downloads on both workers, both promote the backup, the agent
 * hears one failover, and every download arrives intact. Needs root.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { queryControlSocket } from '../../lib/control/control-socket';
import type { BridgeSnapshot } from '../../lib/control/snapshot';
import { fixedSeedBytes } from '../../lib/lab/content';
import { runInAsync } from '../../lib/lab/exec';
import { killReplica } from '../../lib/lab/faults';
import { Lab, buildLab, findLabLeftovers, teardownLab, waitUntilQuiet } from '../../lib/lab/netns';
import { serveOnBoth, startLabServers } from '../../lib/lab/servers';
import { delay, NO_LEFTOVERS, requireBuiltCli, requireRoot, RunWithLabAgent, sha256, startRunWithLabAgent } from '../support/lab-helpers';

const PREFIX = 'svmwk';
const BYTES = 4 << 20;
const DOWNLOADS = 8;
jest.setTimeout(150_000);

function coordinatorOf(s: BridgeSnapshot | null): Record<string, number> {
  return s?.components.workers_coordinator ?? {};
}

describe('shadowvm run --workers 2 (netns lab, root)', () => {
  let lab: Lab | undefined;
  let run: RunWithLabAgent | undefined;

  afterAll(async () => {
    await run?.stop();
    teardownLab(PREFIX);
    expect(findLabLeftovers(PREFIX)).toEqual(NO_LEFTOVERS);
  }, 30_000);

  it('shares the flows, makes one checkpoint for both workers, and survives the primary\'s death with every download intact', async () => {
    requireRoot('run-workers.test.ts');
    requireBuiltCli();
    lab = buildLab({ prefix: PREFIX });
    const l = lab;
    const servers = await startLabServers(l);
    const files = Array.from({ length: DOWNLOADS }, (_, i) => ({ name: `w${i}.bin`, content: fixedSeedBytes(BYTES, 0x700 + i) }));
    for (const f of files) serveOnBoth(servers, f.name, f.content);
    await waitUntilQuiet(l);
    run = await startRunWithLabAgent(l, PREFIX, ['--workers', '2', '--log-level', 'info']);
    const r = run;
    const first = await r.status();
    expect(first?.workers?.map((w) => w.index)).toEqual([0, 1]);
    expect(first?.state).toBe('COMPARING');

    // A manual checkpoint: worker 0 asks, worker 1 joins, the agent hears one.
    const before = coordinatorOf(first);
    const asked = await queryControlSocket(r.control, { cmd: 'checkpoint' }, 5000);
    expect(asked.ok).toBe(true);
    let s: BridgeSnapshot | null = null;
    for (let i = 0; i < 100; i++) {
      s = await r.status();
      // (The coordinator's counters are live; the workers' snapshot may be one reused for up to 20 ms.)
      if (s!.checkpoints.done > first!.checkpoints.done && s?.state === 'COMPARING') break;
      await delay(50);
    }
    const c = coordinatorOf(s);
    expect(c.barriers - (before.barriers ?? 0)).toBe(1);
    expect(c.barriers_joined - (before.barriers_joined ?? 0)).toBe(2);
    expect(s?.workers?.every((w) => w.state === 'COMPARING')).toBe(true);
    // One checkpoint of the VMs (status counts the barrier once), applied by both workers.
    expect(s!.checkpoints.done - first!.checkpoints.done).toBe(1);
    expect(s!.stages.replicate.checkpoints_done - first!.stages.replicate.checkpoints_done).toBe(2);

    // Downloads on many flows: the kernel shares them between the workers.
    const outs = files.map((f) => join(l.runDir, `out-${f.name}`));
    const downloads = files.map((f, i) => runInAsync(l.client.netns, 'curl', ['-sS', '--fail', '--max-time', '90', '--limit-rate', '1M', '-o', outs[i], `http://${l.serviceIpv4}/${f.name}`], 100_000));
    await delay(1500);
    const mid = await r.status();
    // Both workers carry flows and frames (8 connections: all on one worker has odds of 1 in 128).
    expect(mid?.workers?.every((w) => w.flowsActive > 0)).toBe(true);
    await killReplica(l, l.primary, 'abrupt');
    const results = await Promise.allSettled(downloads);
    const after = await r.status();
    for (let i = 0; i < files.length; i++) {
      expect(results[i].status).toBe('fulfilled');
      expect(sha256(readFileSync(outs[i]))).toBe(sha256(files[i].content));
    }
    // One failover for both workers: the first worker's report told to the agent, the other followed.
    const follows = r.bridge.output().split('\n').filter((line) => line.includes('"event":"workers-follow"'));
    expect(follows.filter((line) => line.includes('"change":"failover"'))).toHaveLength(1);
    expect(after!.stages.failover.failovers).toBe(2);
    expect(after?.replicas?.find((p) => p.port === l.backup.hostIf)?.role).toMatch(/primary|promoted/);
    console.log(`workers failover: ${JSON.stringify(after?.workers)}; coordinator ${JSON.stringify(coordinatorOf(after))}; failover ${JSON.stringify(after?.failover.last)}`);
  });
});
