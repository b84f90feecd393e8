/**
 * The QEMU agent's decisions, against the real bridge side of the protocol
 * (AgentLink on a UNIX socket) and VMs whose copy, death and standbys a test
 * controls: every failure gives a clear answer or report, nothing hangs, and
 * the old backup is never touched before a new copy is complete.
 */
import { EventEmitter } from 'node:events';
import { join } from 'node:path';
import { AgentVm, CopyReport, runQemuAgent, QemuAgent } from '../../../lib/agents/qemu-agent';
import { AgentLink, AgentLinkListener } from '../../../lib/replicate/agent-client';
import { QmpClient, QmpTimeoutError } from '../../../lib/qemu/qmp';
import { tempDir, waitFor } from './socket-helpers';

class FakeVm implements AgentVm {
  /** QMP commands the agent sent this VM. */
  readonly commands: string[] = [];
  readonly qmp = Object.assign(new EventEmitter(), {
    execute: async (cmd: string) => { this.commands.push(cmd); return {}; },
  }) as unknown as QmpClient;
  running = true;
  killed = false;
  readonly exited: Promise<void>;
  private die!: () => void;
  constructor(readonly name: string, readonly tap: string) {
    this.exited = new Promise((r) => { this.die = r; });
  }
  /** The VM's process ends (a crash, a SIGKILL from outside). */
  crash(): void {
    this.running = false;
    this.die();
  }
  async kill(): Promise<void> {
    this.killed = true;
    this.crash();
  }
}

interface Heard { type: string; [k: string]: unknown }

async function rig(copy: (source: FakeVm, target: FakeVm) => Promise<CopyReport>, attachTimeoutMs = 3000) {
  const tmp = tempDir('qagent');
  const socketPath = join(tmp.dir, 'agent.sock');
  const heard: Heard[] = [];
  const listener: AgentLinkListener = {
    connected: () => heard.push({ type: 'connected' }),
    disconnected: () => heard.push({ type: 'disconnected' }),
    checkpointDone: (m) => heard.push({ ...m }),
    checkpointFailed: (m) => heard.push({ ...m }),
    heartbeat: () => {},
    primaryDown: (m) => heard.push({ ...m }),
    backupDown: (m) => heard.push({ ...m }),
  };
  const link = new AgentLink({ socketPath, name: 'br' }, listener);
  await link.listen();
  const primary = new FakeVm('vm1', 'tp');
  const backup = new FakeVm('vm2', 'tb');
  const standbys: FakeVm[] = [];
  const retired: string[] = [];
  const logs: string[] = [];
  const agent: QemuAgent = runQemuAgent({
    socketPath, name: 'qa', primary, backup, reconnectInitialMs: 10, retireDelayMs: 0, attachTimeoutMs,
    factory: {
      standby: async () => { const vm = new FakeVm(`s${standbys.length + 1}`, `ts${standbys.length + 1}`); standbys.push(vm); return vm; },
      copy: async (s, t, leaveTargetPaused) => {
        const report = await copy(s as FakeVm, t as FakeVm);
        if (!leaveTargetPaused) (t as FakeVm).commands.push('cont (by the copy)');
        return report;
      },
      retire: async (vm) => { retired.push(vm.name); },
    },
    log: (_level, event) => logs.push(event),
  });
  await waitFor('agent connected', () => heard.some((h) => h.type === 'connected'), 3000);
  const next = async (type: string) => {
    const seen = heard.filter((h) => h.type === type).length;
    await waitFor(type, () => heard.filter((h) => h.type === type).length > seen, 3000);
    return heard.filter((h) => h.type === type)[seen];
  };
  return {
    link, agent, primary, backup, standbys, retired, logs, heard, next,
    close: async () => { await agent.stop(); await link.close(); tmp.remove(); },
  };
}

const ok = async (): Promise<CopyReport> => ({ ms: 70, bytes: 86_000_000, pages: 21_000 });

describe('QEMU agent', () => {
  it('answers a checkpoint with the copy\'s figures and the new backup\'s tap, then retires the old backup', async () => {
    const r = await rig(ok);
    try {
      const done = r.next('checkpoint-done');
      r.link.sendCheckpoint({ epoch: 1, reason: 'mismatch' });
      expect(await done).toEqual({ type: 'checkpoint-done', epoch: 1, ms: 70, bytes: 86_000_000, pages: 21_000, port: 'ts1' });
      await waitFor('old backup retired', () => r.retired.includes('vm2'), 3000);
      expect(r.backup.killed).toBe(true);
      expect(r.agent.vms.backup?.name).toBe('s1');
      expect(r.heard.some((h) => h.type === 'backup-down')).toBe(false);
    } finally {
      await r.close();
    }
  });

  it('keeps the new backup paused from the end of the copy until the bridge says its port reads it', async () => {
    const r = await rig(ok);
    try {
      const done = r.next('checkpoint-done');
      r.link.sendCheckpoint({ epoch: 1, reason: 'mismatch' });
      await done;
      const fresh = r.standbys[0];
      await new Promise((res) => setTimeout(res, 100));
      expect(fresh.commands).toEqual([]);
      expect(r.link.sendBackupAttached(1, 'ts1')).toBe(true);
      await waitFor('started', () => fresh.commands.length === 1, 3000);
      expect(fresh.commands).toEqual(['cont']);
      expect(r.logs).toContain('qemu-agent-backup-started');
    } finally {
      await r.close();
    }
  });

  it('starts it anyway, and says so, when the bridge never confirms', async () => {
    const r = await rig(ok, 150);
    try {
      r.link.sendCheckpoint({ epoch: 1, reason: 'mismatch' });
      await r.next('checkpoint-done');
      await waitFor('started after the timeout', () => r.standbys[0].commands.includes('cont'), 3000);
    } finally {
      await r.close();
    }
  });

  it('answers checkpoint-failed with the cause when QEMU does not answer, and leaves both VMs as they were', async () => {
    const r = await rig(async () => { throw new QmpTimeoutError('migrate', 30_000, 'vm1.qmp'); });
    try {
      const failed = r.next('checkpoint-failed');
      r.link.sendCheckpoint({ epoch: 1, reason: 'mismatch' });
      expect(await failed).toMatchObject({ epoch: 1, error: expect.stringMatching(/copy of vm1 failed: .*migrate/) });
      expect(r.primary.killed || r.backup.killed).toBe(false);
      expect(r.agent.vms).toEqual({ primary: r.primary, backup: r.backup });
      // The standby that did not get the copy is discarded.
      await waitFor('standby discarded', () => r.standbys[0]?.killed === true, 3000);
      expect(r.logs).toContain('qemu-agent-checkpoint-failed');
    } finally {
      await r.close();
    }
  });

  it('reports primary-down, not a failed checkpoint, when the primary dies under the copy; the old backup is untouched', async () => {
    let release!: (e: Error) => void;
    const r = await rig((source) => new Promise((_, reject) => { release = reject; void source; }));
    try {
      r.link.sendCheckpoint({ epoch: 1, reason: 'mismatch' });
      await waitFor('copy started', () => release !== undefined, 3000);
      const down = r.next('primary-down');
      r.primary.crash();
      release(new Error('QMP socket closed'));
      expect(await down).toMatchObject({ reason: expect.stringContaining('vm1') });
      await new Promise((res) => setTimeout(res, 100));
      expect(r.heard.filter((h) => h.type === 'checkpoint-failed')).toEqual([]);
      expect(r.heard.filter((h) => h.type === 'primary-down')).toHaveLength(1);
      expect(r.backup.killed).toBe(false);
    } finally {
      await r.close();
    }
  });

  it('follows a failover, kills the old primary, and builds a new backup from the survivor on reprotect', async () => {
    const copies: string[] = [];
    const r = await rig(async (s, t) => { copies.push(`${s.name}->${t.name}`); return ok(); });
    try {
      r.link.sendFailover(2, 'tb');
      await waitFor('old primary killed', () => r.primary.killed, 3000);
      expect(r.agent.vms.primary).toBe(r.backup);
      const done = r.next('checkpoint-done');
      r.link.sendReprotect(3, 'tp');
      expect(await done).toMatchObject({ epoch: 3, port: 'ts1' });
      expect(copies).toEqual(['vm2->s1']);
      expect(r.heard.some((h) => h.type === 'primary-down')).toBe(false);
    } finally {
      await r.close();
    }
  });

  it('reports backup-down when the backup dies, and copies again on the reprotect that follows', async () => {
    const r = await rig(ok);
    try {
      const down = r.next('backup-down');
      r.backup.crash();
      expect(await down).toMatchObject({ reason: expect.stringContaining('vm2') });
      expect(r.agent.vms.backup).toBeNull();
      const done = r.next('checkpoint-done');
      r.link.sendReprotect(2, 'tb');
      expect(await done).toMatchObject({ epoch: 2, port: 'ts1' });
      expect(r.agent.vms.backup?.name).toBe('s1');
    } finally {
      await r.close();
    }
  });

  it('reconnects to a bridge that went away and came back, and serves it', async () => {
    const r = await rig(ok);
    try {
      await r.link.close();
      const again = new AgentLink({ socketPath: r.link.options.socketPath, name: 'br2' }, {
        connected: () => r.heard.push({ type: 'reconnected' }), disconnected: () => {}, checkpointDone: (m) => r.heard.push({ ...m }),
        checkpointFailed: () => {}, heartbeat: () => {}, primaryDown: () => {}, backupDown: () => {},
      });
      await again.listen();
      try {
        await waitFor('agent back', () => r.heard.some((h) => h.type === 'reconnected'), 5000);
        const done = r.next('checkpoint-done');
        again.sendCheckpoint({ epoch: 7, reason: 'manual' });
        expect(await done).toMatchObject({ epoch: 7 });
      } finally {
        await again.close();
      }
    } finally {
      await r.close();
    }
  });
});
