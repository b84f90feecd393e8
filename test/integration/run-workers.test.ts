/**
 * `shadowvm run --workers 2` protecting the netns lab with the lab agent, as
 * an administrator runs it (its own process, run's default ports: split
 * rings, virtio-net headers): the flows are shared between two data-plane
 * threads, a checkpoint is one for both, and when the primary dies in the
 * middle of downloads on both workers, both promote the backup, the agent
 * hears one failover, and every download arrives intact. Needs root.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { queryControlSocket } from '../../lib/control/control-socket';
import type { BridgeSnapshot } from '../../lib/control/snapshot';
import { fixedSeedBytes } from '../../lib/lab/content';
import { runInAsync } from '../../lib/lab/exec';
import { killReplica } from '../../lib/lab/faults';
import { Lab, buildLab, findLabLeftovers, teardownLab, waitUntilQuiet } from '../../lib/lab/netns';
import { serveOnBoth, startLabServers } from '../../lib/lab/servers';
import { AgentSession } from '../../lib/agents/agent-session';
import { CliProcess, delay, IN_FLIGHT_RECEIVE_BUFFER, labDownloads, NO_LEFTOVERS, paced, requireBuiltCli, requireRoot, RunWithLabAgent, sha256, spawnShadowvm, startRunWithLabAgent, statusUntil } from '../support/lab-helpers';

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
    lab = buildLab({ prefix: PREFIX, clientReceiveBufferMax: IN_FLIGHT_RECEIVE_BUFFER });
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
    const downloads = files.map((f, i) => runInAsync(l.client.netns, 'wget', paced(outs[i], `http://${l.serviceIpv4}/${f.name}`, '1m', 90), 100_000));
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
    // The agent heard one failover.
    expect(r.agent.output().split('\n').filter((line) => line.includes('"event":"lab-agent-failover"'))).toHaveLength(1);
    console.log(`workers failover: ${JSON.stringify(after?.workers)}; coordinator ${JSON.stringify(coordinatorOf(after))}; failover ${JSON.stringify(after?.failover.last)}`);
  });

  it('the agent dies and comes back (both workers DEGRADED, then one checkpoint for both); the backup dies mid-download (both workers run on unprotected, downloads intact)', async () => {
    await run?.stop();
    teardownLab(PREFIX);
    lab = buildLab({ prefix: PREFIX, clientReceiveBufferMax: IN_FLIGHT_RECEIVE_BUFFER });
    const l = lab;
    const servers = await startLabServers(l);
    await waitUntilQuiet(l);
    run = await startRunWithLabAgent(l, PREFIX, ['--workers', '2', '--log-level', 'info']);
    const r = run;
    r.agent.child.kill('SIGKILL');
    const degraded = await statusUntil(r.control, (s) => s.workers!.every((w) => w.state === 'DEGRADED'), 10_000);
    expect(degraded?.workers?.map((w) => w.state)).toEqual(['DEGRADED', 'DEGRADED']);
    expect(degraded?.agent.connected).toBe(false);
    const before = coordinatorOf(degraded);
    const agent = spawnShadowvm(['agent', 'lab', '--name', PREFIX, '--socket', join(l.runDir, 'agent.sock'), '--delay-ms', '5']);
    try {
      const back = await statusUntil(r.control, (s) => s.state === 'COMPARING' && s.workers!.every((w) => w.state === 'COMPARING'), 10_000);
      expect(back?.state).toBe('COMPARING');
      const c = coordinatorOf(back);
      // Each worker asked to resynchronize as the agent came: one checkpoint for both.
      expect(c.barriers - before.barriers).toBe(1);
      expect(c.barriers_joined - before.barriers_joined).toBe(2);

      const d = labDownloads(l, servers, 'b', { count: 6, bytes: BYTES }, 0x900);
      await delay(1500);
      await killReplica(l, l.backup, 'abrupt');
      try {
        await d.done;
      } catch (e) {
        require('node:fs').writeFileSync('/tmp/s26/backup-death-bridge.log', r.bridge.output());
        throw e;
      }
      const after = await statusUntil(r.control, (s) => s.failover.backupsLost >= 1, 5000);
      expect(after?.failover.backupsLost).toBe(1);
      expect(after?.failover.count).toBe(0);
      // Both workers lost it (the stage counters add up over the workers): one saw it, the other followed or saw it too.
      expect(after!.stages.failover.backups_lost).toBe(2);
      expect(after?.workers?.every((w) => w.state === 'DEGRADED' || w.state === 'COMPARING')).toBe(true);
      expect(coordinatorOf(after).role_changes - c.role_changes).toBeGreaterThanOrEqual(1);
      expect(after?.replicas?.find((p) => p.port === l.primary.hostIf)?.role).toBe('primary');
    } finally {
      agent.child.kill('SIGTERM');
      await agent.exited;
    }
  });

  it('a v3 agent that gives the backup a fresh socket at each checkpoint: every worker reopens its port, the agent hears one backup-attached per checkpoint, downloads intact', async () => {
    await run?.stop();
    run = undefined;
    teardownLab(PREFIX);
    lab = buildLab({ prefix: PREFIX, clientReceiveBufferMax: IN_FLIGHT_RECEIVE_BUFFER });
    const l = lab;
    const servers = await startLabServers(l);
    await waitUntilQuiet(l);
    const control = join(l.runDir, 'control.sock');
    const agentSocket = join(l.runDir, 'agent.sock');
    // The workers from the config file, as a systemd unit (which passes only --config) sets them.
    const configFile = join(l.runDir, 'workers.json');
    writeFileSync(configFile, JSON.stringify({ workers: 2 }));
    const bridge: CliProcess = spawnShadowvm(['run', '--name', PREFIX, '--uplink', l.client.hostIf, '--primary', l.primary.hostIf, '--backup', l.backup.hostIf,
      '--agent', agentSocket, '--control', control, '--resync', 'align', '--config', configFile, '--log-level', 'info']);
    const attached: number[] = [];
    const answered: number[] = [];
    let session: AgentSession | undefined;
    try {
      await bridge.waitFor(/"event":"started"/, 20_000);
      session = new AgentSession({
        socketPath: agentSocket, name: 'v3-test-agent', version: 3, heartbeatMs: 500, reconnectInitialMs: 50, reconnectMaxMs: 500, logPrefix: 'v3-test-agent', log: () => {},
      }, {
        liveness: () => ({ primary: 'up', backup: 'up' }),
        message: (msg) => {
          if (msg.type === 'checkpoint' || msg.type === 'reprotect') {
            const epoch = msg.epoch;
            // The backup stays behind its interface: a fresh socket on it (COLO's way), after a 20 ms "copy".
            setTimeout(() => {
              answered.push(epoch);
              session!.send({ type: 'checkpoint-done', epoch, ms: 20, bytes: 4096, ...(msg.type === 'checkpoint' ? { port: l.backup.hostIf } : {}) });
            }, 20);
          } else if (msg.type === 'backup-attached') {
            attached.push(msg.epoch);
          }
        },
      });
      const started = await statusUntil(control, (s) => s.state === 'COMPARING', 10_000);
      expect(started?.state).toBe('COMPARING');
      expect(started?.workers?.length).toBe(2);
      const d = labDownloads(l, servers, 'v', { count: 4, bytes: BYTES }, 0xa00);
      for (let i = 0; i < 5; i++) {
        await delay(300);
        const reply = await queryControlSocket(control, { cmd: 'checkpoint' }, 5000);
        expect(reply.ok).toBe(true);
        await statusUntil(control, (s) => s.state === 'COMPARING', 5000);
      }
      await d.done;
      const s = await statusUntil(control, (x) => x.state === 'COMPARING', 5000);
      // Every checkpoint answered with a port was attached once, after both workers reopened their sockets.
      expect(attached.length).toBeGreaterThanOrEqual(5);
      expect(new Set(attached).size).toBe(attached.length);
      expect(attached.every((e) => answered.includes(e))).toBe(true);
      // (A worker thread's log lines reach the process's stdout through the main thread, a little later.)
      const reopenedLines = () => bridge.output().split('\n').filter((line) => line.includes('"event":"backup-port-reopened"'));
      for (let i = 0; i < 40 && reopenedLines().length < 2 * attached.length; i++) await delay(50);
      const reopened = reopenedLines();
      if (reopened.length !== 2 * attached.length) require('node:fs').writeFileSync('/tmp/s26/v3-bridge.log', `${JSON.stringify({ answered, attached })}\n${bridge.output()}`);
      expect(reopened.length).toBe(2 * attached.length);
      expect(coordinatorOf(s).attach_timeouts).toBe(0);
      console.log(`v3 agent with 2 workers: ${answered.length} answered, ${attached.length} attached, ${reopened.length} sockets reopened`);
    } finally {
      await session?.stop();
      bridge.child.kill('SIGTERM');
      await bridge.exited;
    }
  });
});
