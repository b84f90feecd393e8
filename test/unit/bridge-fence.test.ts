/**
 * The epoch fence (protocol v2): an agent that makes each new backup on a
 * fresh interface says so in `checkpoint-done`; the bridge moves the backup
 * slot there before it applies the checkpoint, and nothing queued on the old
 * interface is ever read. (v3) An agent that overwrote the backup in place (a
 * COLO checkpoint) names the interface it already has: the bridge reads it
 * through a fresh socket, and nothing queued on the old socket is ever read.
 */
import { join } from 'node:path';
import { Bridge } from '../../lib/bridge';
import { MemoryPort } from '../../lib/io/memory';
import { AbsentPort } from '../../lib/io/absent-port';
import { NO_BACKUP_PORT } from '../../lib/cli/ports';
import { monotonicUs } from '../../lib/clock';
import { formatStatus } from '../../lib/control/status-format';
import { makePipelineConfig } from '../../lib/pipeline';
import { udpFrame } from '../support/frames';
import { LineClient, tempDir, waitFor } from './agents/socket-helpers';

interface Rig {
  bridge: Bridge;
  uplink: MemoryPort;
  primary: MemoryPort;
  oldBackup: MemoryPort;
  opened: MemoryPort[];
  agent: LineClient;
  close(): Promise<void>;
}

/** How the rig's bridge opens ports: at once, through a promise the test settles, or not at all. */
type Opening = boolean | 'later';
interface Later { ifname: string; resolve(): void; reject(e: Error): void }
const later: Later[] = [];

async function rig(canOpen: Opening = true, agentVersion = 2, config: Parameters<typeof makePipelineConfig>[0] = {}, portOpenTimeoutMs?: number): Promise<Rig> {
  const tmp = tempDir('fence');
  const uplink = new MemoryPort('up0');
  const primary = new MemoryPort('p0');
  const oldBackup = new MemoryPort('b0');
  const opened: MemoryPort[] = [];
  const bridge = new Bridge({ uplink, primary, backup: oldBackup }, {
    name: 'fence',
    config: makePipelineConfig({ resync: 'copy', ...config }),
    ...(portOpenTimeoutMs ? { portOpenTimeoutMs } : {}),
    agentSocket: join(tmp.dir, 'agent.sock'),
    ...(canOpen === true ? { openPort: (ifname: string) => { const p = new MemoryPort(ifname); opened.push(p); return p; } } : {}),
    // Like AfPacketPort.open: the port is made elsewhere and handed over later.
    ...(canOpen === 'later' ? {
      openPort: (ifname: string) => new Promise<MemoryPort>((resolve, reject) => {
        later.push({ ifname, resolve: () => { const p = new MemoryPort(ifname); opened.push(p); resolve(p); }, reject });
      }),
    } : {}),
  });
  await bridge.start();
  const agent = await LineClient.connect(join(tmp.dir, 'agent.sock'));
  expect(await agent.next()).toMatchObject({ type: 'hello', version: 3 });
  agent.send({ type: 'hello', version: agentVersion, role: 'agent', name: 'fence-agent' });
  // The bridge asks for a checkpoint as soon as an agent is there.
  const first = await agent.next() as { type: string; epoch: number };
  expect(first.type).toBe('checkpoint');
  agent.send({ type: 'checkpoint-done', epoch: first.epoch, ms: 1, bytes: 0 });
  await waitFor('COMPARING', () => bridge.pipeline.state === 'COMPARING', 3000);
  return {
    bridge, uplink, primary, oldBackup, opened, agent,
    close: async () => { agent.close(); await bridge.stop(); tmp.remove(); },
  };
}

const request = udpFrame({ from: 'client', payload: 'query' });
const answer = (text: string) => udpFrame({ from: 'vm', payload: text });

describe('the epoch fence', () => {
  it('moves the backup slot to the interface checkpoint-done names and never reads the old one again', async () => {
    const r = await rig();
    try {
      expect(r.bridge.pipeline.request('manual', undefined, monotonicUs())).toBe(true);
      const cp = await r.agent.next() as { type: string; epoch: number };
      expect(cp.type).toBe('checkpoint');
      r.agent.send({ type: 'checkpoint-done', epoch: cp.epoch, ms: 40, bytes: 1 << 20, port: 'b1' });
      await waitFor('back to COMPARING', () => r.bridge.pipeline.state === 'COMPARING' && r.opened.length === 1, 3000);
      const [fresh] = r.opened;
      expect(fresh.name).toBe('b1');
      // A v2 agent hears that the port reads the new interface (it may bring the new backup's link up).
      expect(await r.agent.next()).toEqual({ type: 'backup-attached', epoch: cp.epoch, port: 'b1' });
      // The old interface is closed: what the retired backup had queued there can never reach the comparator.
      expect(() => r.oldBackup.inject([answer('stale, from the old backup')])).toThrow(/after close/);
      // Client frames now go to the new backup, and its answer is what the primary's is compared with.
      r.uplink.inject([request]);
      expect(fresh.sent).toHaveLength(1);
      expect(r.oldBackup.sent.every((f) => !f.equals(request))).toBe(true);
      r.primary.inject([answer('42')]);
      expect(r.uplink.sent).toHaveLength(0);
      fresh.inject([answer('42')]);
      expect(r.uplink.sent).toHaveLength(1);
      const snap = r.bridge.snapshot();
      expect(snap.ports.find((p) => p.role === 'backup')?.name).toBe('b1');
      expect(snap.mismatches).toBe(0);
    } finally {
      await r.close();
    }
  });

  it('fails the checkpoint, and leaves the old backup attached, when the new port cannot be opened', async () => {
    const r = await rig(false);
    try {
      r.bridge.pipeline.request('manual', undefined, monotonicUs());
      const cp = await r.agent.next() as { epoch: number };
      r.agent.send({ type: 'checkpoint-done', epoch: cp.epoch, ms: 40, bytes: 1, port: 'b1' });
      await waitFor('DEGRADED', () => r.bridge.pipeline.state === 'DEGRADED', 3000);
      expect(r.bridge.pipeline.replicator.counters().checkpoints_failed).toBe(1);
      // Still the backup slot's port, open (a stale backup gets no client frames while DEGRADED; counted).
      expect(r.bridge.snapshot().ports.find((p) => p.role === 'backup')?.name).toBe('b0');
      expect(() => r.oldBackup.inject([answer('still attached')])).not.toThrow();
      r.uplink.inject([request]);
      expect(r.bridge.snapshot().stages.ingress.degraded_not_to_backup).toBe(1);
    } finally {
      await r.close();
    }
  });

  it('(v3) reads the same interface through a fresh socket when checkpoint-done names the backup\'s own interface', async () => {
    const r = await rig(true, 3);
    try {
      r.bridge.pipeline.request('manual', undefined, monotonicUs());
      const cp = await r.agent.next() as { type: string; epoch: number };
      expect(cp.type).toBe('checkpoint');
      r.agent.send({ type: 'checkpoint-done', epoch: cp.epoch, ms: 9, bytes: 4096, pages: 1, port: 'b0' });
      await waitFor('back to COMPARING', () => r.bridge.pipeline.state === 'COMPARING' && r.opened.length === 1, 3000);
      const [fresh] = r.opened;
      expect(fresh.name).toBe('b0');
      expect(fresh).not.toBe(r.oldBackup);
      expect(await r.agent.next()).toEqual({ type: 'backup-attached', epoch: cp.epoch, port: 'b0' });
      // What the backup's old state said and the bridge had not read is gone with the old socket.
      expect(() => r.oldBackup.inject([answer('stale, from before the checkpoint')])).toThrow(/after close/);
      r.uplink.inject([request]);
      expect(fresh.sent).toHaveLength(1);
      r.primary.inject([answer('42')]);
      expect(r.uplink.sent).toHaveLength(0);
      fresh.inject([answer('42')]);
      expect(r.uplink.sent).toHaveLength(1);
      expect(r.bridge.snapshot().mismatches).toBe(0);
    } finally {
      await r.close();
    }
  });

  it('(v2) leaves the port as it is when checkpoint-done names the backup\'s own interface', async () => {
    const r = await rig(true, 2);
    try {
      r.bridge.pipeline.request('manual', undefined, monotonicUs());
      const cp = await r.agent.next() as { epoch: number };
      r.agent.send({ type: 'checkpoint-done', epoch: cp.epoch, ms: 9, bytes: 4096, port: 'b0' });
      await waitFor('back to COMPARING', () => r.bridge.pipeline.state === 'COMPARING', 3000);
      expect(r.opened).toHaveLength(0);
      r.uplink.inject([request]);
      expect(r.oldBackup.sent.length + r.oldBackup.pending.length).toBeGreaterThan(0);
    } finally {
      await r.close();
    }
  });

  describe('a port opened off the data plane (openPort returns a promise)', () => {
    beforeEach(() => { later.length = 0; });

    /** A manual checkpoint, answered done with the new backup behind `b1`; returns once the bridge has begun opening it. */
    async function answerWithFreshPort(r: Rig): Promise<void> {
      r.bridge.pipeline.request('manual', undefined, monotonicUs());
      const cp = await r.agent.next() as { epoch: number };
      r.agent.send({ type: 'checkpoint-done', epoch: cp.epoch, ms: 40, bytes: 1, port: 'b1' });
      await waitFor('the open to start', () => later.length === 1, 3000);
    }

    it('keeps the checkpoint in flight while the port opens, and runs what the agent said meanwhile after it', async () => {
      const r = await rig('later');
      try {
        await answerWithFreshPort(r);
        expect(later[0].ifname).toBe('b1');
        // The checkpoint is still in flight: a client frame is read and held for the replicas the answer makes.
        expect(r.bridge.pipeline.state).toBe('CHECKPOINTING');
        r.uplink.inject([request]);
        const got = (p: MemoryPort) => [...p.sent, ...p.pending].some((f) => f.equals(request));
        expect(got(r.primary) || got(r.oldBackup)).toBe(false);
        // The primary dies now: that word waits for the open, so it promotes the backup this checkpoint made.
        r.agent.send({ type: 'primary-down', reason: 'qemu exited' });
        await new Promise((res) => setTimeout(res, 100));
        expect(r.bridge.pipeline.replicas.active.name).toBe('p0');
        later[0].resolve();
        await waitFor('the failover', () => r.bridge.pipeline.replicas.active.name === 'b1', 3000);
        expect(r.opened.map((p) => p.name)).toEqual(['b1']);
        // The held frame went to the backup the checkpoint made, never to the old one.
        expect(got(r.opened[0])).toBe(true);
        expect(got(r.oldBackup)).toBe(false);
        expect(() => r.oldBackup.inject([answer('stale')])).toThrow(/after close/);
        expect(r.bridge.pipeline.replicator.counters().checkpoints_done).toBe(2);
      } finally {
        await r.close();
      }
    });

    it('fails the checkpoint when the open fails, and keeps the old backup', async () => {
      const r = await rig('later');
      try {
        await answerWithFreshPort(r);
        later[0].reject(new Error('b1: no such interface'));
        await waitFor('DEGRADED', () => r.bridge.pipeline.state === 'DEGRADED', 3000);
        expect(r.bridge.pipeline.replicator.counters().checkpoints_failed).toBe(1);
        expect(r.bridge.snapshot().ports.find((p) => p.role === 'backup')?.name).toBe('b0');
        expect(() => r.oldBackup.inject([answer('still attached')])).not.toThrow();
      } finally {
        await r.close();
      }
    });

    it('closes the new port unused when a failover made its slot the active one while it opened', async () => {
      // Without a wait for the checkpoint's answer, a failover asked for meanwhile promotes the old backup at once.
      const r = await rig('later', 2, { failover: { checkpointWaitMs: 0 } as never });
      try {
        await answerWithFreshPort(r);
        expect(r.bridge.requestFailover().promoted).toBe(true);
        expect(r.bridge.pipeline.replicas.active.name).toBe('b0');
        later[0].resolve();
        await waitFor('the late port', () => r.opened.length === 1, 3000);
        await new Promise((res) => setImmediate(res));
        // The survivor keeps its port; the copy of the dead primary is never attached.
        expect(r.bridge.pipeline.replicas.active.name).toBe('b0');
        expect(() => r.oldBackup.inject([answer('still the active one')])).not.toThrow();
        expect(() => r.opened[0].inject([answer('late')])).toThrow(/after close/);
      } finally {
        await r.close();
      }
    });

    it('an open that never finishes fails the checkpoint in time, runs what waited, and closes the port if it comes late', async () => {
      const r = await rig('later', 2, {}, 150);
      try {
        await answerWithFreshPort(r);
        r.agent.send({ type: 'backup-down', reason: 'qemu exited' });
        await waitFor('the checkpoint to fail', () => r.bridge.pipeline.replicator.counters().checkpoints_failed === 1, 3000);
        // The word that waited behind the open ran after it.
        await waitFor('the backup lost', () => r.bridge.pipeline.replicas.standby === null, 3000);
        later[0].resolve();
        await new Promise((res) => setImmediate(res));
        expect(() => r.opened[0].inject([answer('late')])).toThrow(/after close/);
      } finally {
        await r.close();
      }
    });

    it('closes a port that opens after the bridge stopped', async () => {
      const r = await rig('later');
      await answerWithFreshPort(r);
      await r.close();
      later[0].resolve();
      await new Promise((res) => setImmediate(res));
      expect(r.opened).toHaveLength(1);
      expect(() => r.opened[0].inject([answer('late')])).toThrow(/after close/);
    });
  });

  it('a bridge that starts with no backup (a restart the roles file says had none) asks the agent for one and takes the port it names', async () => {
    const tmp = tempDir('fence-nobackup');
    const uplink = new MemoryPort('up0');
    const primary = new MemoryPort('p0');
    const opened: MemoryPort[] = [];
    const roles: unknown[] = [];
    const bridge = new Bridge({ uplink, primary, backup: new AbsentPort(NO_BACKUP_PORT) }, {
      name: 'fence',
      config: makePipelineConfig({ resync: 'copy' }),
      agentSocket: join(tmp.dir, 'agent.sock'),
      openPort: (ifname: string) => { const p = new MemoryPort(ifname); opened.push(p); return p; },
      noBackupAtStart: 'no backup at start (test)',
      onRoles: (r) => roles.push(r),
    });
    await bridge.start();
    const agent = await LineClient.connect(join(tmp.dir, 'agent.sock'));
    try {
      expect(bridge.pipeline.replicas.standby).toBeNull();
      // The primary is served meanwhile, unchecked.
      uplink.inject([request]);
      expect(primary.sent.length + primary.pending.length).toBe(1);
      expect(await agent.next()).toMatchObject({ type: 'hello' });
      agent.send({ type: 'hello', version: 2, role: 'agent', name: 'fence-agent' });
      const first = await agent.next() as { type: string; epoch: number };
      expect(first.type).toBe('reprotect');
      agent.send({ type: 'checkpoint-done', epoch: first.epoch, ms: 50, bytes: 1 << 20, port: 'b7' });
      await waitFor('COMPARING with the new backup', () => bridge.pipeline.state === 'COMPARING' && bridge.pipeline.replicas.standby?.name === 'b7', 3000);
      expect(opened.map((p) => p.name)).toEqual(['b7']);
      expect(roles[roles.length - 1]).toEqual({ primary: 'p0', backup: 'b7' });
    } finally {
      agent.close();
      await bridge.stop();
      tmp.remove();
    }
  });

  it('after a failover, status names each VM port by the role it holds now, not the slot it started in', async () => {
    const r = await rig();
    try {
      expect(r.bridge.requestFailover().promoted).toBe(true);
      const table = formatStatus(r.bridge.snapshot()).split('\n');
      expect(table.find((l) => /^role\s+interface/.test(l))).toBeDefined();
      const row = (ifname: string) => table.find((l) => new RegExp(`^\\S+\\s+${ifname}\\s+\\d`).test(l));
      // The promoted backup serves as the primary; the first primary's port is dead.
      expect(row('b0')).toMatch(/^promoted\s+b0\s/);
      expect(row('p0')).toMatch(/^dead\s+p0\s/);
      expect(row('up0')).toMatch(/^uplink\s+up0\s/);
    } finally {
      await r.close();
    }
  });
});

