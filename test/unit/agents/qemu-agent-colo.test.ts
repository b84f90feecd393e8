/**
 * The QEMU agent's COLO mode against the real bridge side of the protocol
 * (AgentLink, v3) and VMs whose QMP a test scripts: the fence rule (the
 * secondary's output is held before `checkpoint-done` names its own tap,
 * and released only after `backup-attached`), a primary death in the
 * middle of a checkpoint answered according to whether the secondary loaded
 * it, and the size a checkpoint-done reports (the primary's RAM counters).
 */
import { EventEmitter } from 'node:events';
import { join } from 'node:path';
import { AgentVm, QemuAgent, runQemuAgent } from '../../../lib/agents/qemu-agent';
import { AgentLink, AgentLinkListener } from '../../../lib/replicate/agent-client';
import { CheckpointDoneMessage } from '../../../lib/replicate/agent-protocol';
import { LogFn } from '../../../lib/control/logger';
import { QmpClient } from '../../../lib/qemu/qmp';
import { tempDir, waitFor } from './socket-helpers';

/** Everything the VMs were told and the bridge heard, in order. */
type Timeline = string[];

class ScriptedVm implements AgentVm {
  readonly qmp: QmpClient;
  running = true;
  readonly exited: Promise<void>;
  /** What a checkpoint trigger on this VM (the primary) does; set by the test. */
  onTrigger: () => void = () => {};
  /** What query-migrate says: in COLO state until x-colo-lost-heartbeat. */
  inColo = false;
  /** The RAM counters query-migrate reports in COLO state (a QEMU with qemu-colo/patches/0003); none when unset. */
  ram: { transferred: number; normal: number; duplicate: number } | undefined;
  private die!: () => void;
  constructor(readonly name: string, readonly tap: string, private readonly timeline: Timeline) {
    this.exited = new Promise((r) => { this.die = r; });
    const emitter = new EventEmitter();
    this.qmp = Object.assign(emitter, {
      closed: false,
      execute: async (cmd: string, args?: Record<string, unknown>) => {
        if (!this.running) throw new Error(`${name}: QMP closed`);
        if (cmd === 'qom-set') timeline.push(`${name}:gate-${args?.value === 'on' ? 'held' : 'released'}`);
        else if (cmd !== 'query-status' && cmd !== 'query-migrate') timeline.push(`${name}:${cmd}`);
        if (cmd === 'migrate-set-parameters') setTimeout(() => this.onTrigger(), 1);
        if (cmd === 'x-colo-lost-heartbeat') this.inColo = false;
        if (cmd === 'query-migrate') return { status: this.inColo ? 'colo' : 'none', ...(this.inColo && this.ram ? { ram: { ...this.ram } } : {}) };
        if (cmd === 'query-status') return { status: 'running', running: true };
        return {};
      },
    }) as unknown as QmpClient;
  }
  event(name: string, data: Record<string, unknown> = {}): void {
    (this.qmp as unknown as EventEmitter).emit('event', { event: name, data, timestamp: { seconds: 0, microseconds: 0 } });
  }
  crash(): void {
    this.running = false;
    (this.qmp as unknown as EventEmitter).emit('close', 'gone');
    this.die();
  }
  async kill(): Promise<void> { this.crash(); }
}

async function rig() {
  const tmp = tempDir('qcolo');
  const socketPath = join(tmp.dir, 'agent.sock');
  const timeline: Timeline = [];
  const done: CheckpointDoneMessage[] = [];
  const logged: string[] = [];
  const log: LogFn = (_level, event) => logged.push(event);
  const listener: AgentLinkListener = {
    connected: () => timeline.push('bridge:connected'),
    disconnected: () => {},
    checkpointDone: (m) => { done.push(m); timeline.push(`bridge:checkpoint-done ${m.epoch} ${m.port}`); },
    checkpointFailed: (m) => timeline.push(`bridge:checkpoint-failed ${m.epoch}`),
    heartbeat: () => {},
    primaryDown: () => timeline.push('bridge:primary-down'),
    backupDown: () => timeline.push('bridge:backup-down'),
  };
  const link = new AgentLink({ socketPath, name: 'br' }, listener);
  await link.listen();
  const primary = new ScriptedVm('p', 'tp', timeline);
  const secondary = new ScriptedVm('s', 'ts', timeline);
  const agent: QemuAgent = runQemuAgent({
    socketPath, name: 'qc', primary, backup: new ScriptedVm('old', 'tb', timeline), sync: 'colo', reconnectInitialMs: 10, retireDelayMs: 0,
    warmStandby: false, coloCheckpointTimeoutMs: 2000, log,
    factory: {
      standby: async () => secondary,
      copy: async () => { throw new Error('no full copies in COLO mode'); },
      enterColo: async () => ({ ms: 500, bytes: 86_000_000, pages: 21_000 }),
      retire: async () => {},
    },
  });
  await waitFor('agent connected', () => timeline.includes('bridge:connected'), 3000);
  const saw = (entry: string) => waitFor(entry, () => timeline.includes(entry), 3000);
  // The first checkpoint starts COLO into the fresh VM, on its fresh tap; the bridge attaches it.
  link.sendCheckpoint({ epoch: 1, reason: 'manual' });
  await saw('bridge:checkpoint-done 1 ts');
  link.sendBackupAttached(1, 'ts');
  await saw('s:gate-released');
  timeline.length = 0;
  done.length = 0;
  return { link, agent, primary, secondary, timeline, done, logged, saw, close: async () => { await agent.stop(); await link.close(); tmp.remove(); } };
}

describe('QEMU agent, sync colo', () => {
  it('holds the secondary\'s output before checkpoint-done names its own tap, and releases it only after backup-attached', async () => {
    const r = await rig();
    try {
      r.primary.onTrigger = () => {
        r.secondary.event('STOP');
        r.primary.event('STOP');
        setTimeout(() => { r.secondary.event('RESUME'); r.primary.event('RESUME'); }, 20);
      };
      r.link.sendCheckpoint({ epoch: 2, reason: 'mismatch' });
      await r.saw('bridge:checkpoint-done 2 ts');
      await new Promise((res) => setTimeout(res, 50));
      expect(r.timeline).toEqual(['p:migrate-set-parameters', 's:gate-held', 'bridge:checkpoint-done 2 ts']);
      expect(r.agent.stats.coloCheckpoints).toBe(1);
      r.link.sendBackupAttached(2, 'ts');
      await r.saw('s:gate-released');
      expect(r.timeline.indexOf('s:gate-released')).toBeGreaterThan(r.timeline.indexOf('bridge:checkpoint-done 2 ts'));
    } finally {
      await r.close();
    }
  });

  it('answers checkpoint-done before primary-down when the primary dies after the secondary loaded the checkpoint', async () => {
    const r = await rig();
    try {
      r.primary.onTrigger = () => {
        r.secondary.event('STOP');
        r.primary.event('STOP');
        setTimeout(() => { r.secondary.event('RESUME'); r.primary.crash(); r.secondary.event('COLO_EXIT', { reason: 'error' }); }, 10);
      };
      r.link.sendCheckpoint({ epoch: 2, reason: 'mismatch' });
      await r.saw('bridge:primary-down');
      const done = r.timeline.indexOf('bridge:checkpoint-done 2 ts');
      expect(done).toBeGreaterThan(-1);
      expect(done).toBeLessThan(r.timeline.indexOf('bridge:primary-down'));
      expect(r.timeline).toContain('s:x-colo-lost-heartbeat');
      // Its new state speaks only once the bridge has read the tap afresh.
      expect(r.timeline).not.toContain('s:gate-released');
      expect(r.timeline).not.toContain('bridge:checkpoint-failed 2');
    } finally {
      await r.close();
    }
  });

  it('answers checkpoint-done before primary-down when the secondary says RESUME only after the primary\'s QMP closed (it was still loading the state)', async () => {
    // Seen in the QEMU lab: a primary SIGKILLed a few ms after its STOP had already sent its whole state; its QMP
    // closed first, the secondary finished loading and said RESUME about 20 ms later, then COLO_EXIT. Taken for
    // an unloaded secondary, the survivor spoke in the primary's sequence space through the old deltas, and the
    // client's download stalled for good.
    const r = await rig();
    try {
      r.primary.onTrigger = () => {
        r.secondary.event('STOP');
        r.primary.event('STOP');
        setTimeout(() => r.primary.crash(), 5);
        setTimeout(() => { r.secondary.event('RESUME'); r.secondary.event('COLO_EXIT', { reason: 'error' }); }, 30);
      };
      r.link.sendCheckpoint({ epoch: 2, reason: 'mismatch' });
      await r.saw('bridge:primary-down');
      const done = r.timeline.indexOf('bridge:checkpoint-done 2 ts');
      expect(done).toBeGreaterThan(-1);
      expect(done).toBeLessThan(r.timeline.indexOf('bridge:primary-down'));
      expect(r.logged).not.toContain('qemu-agent-failover-past-colo-load');
    } finally {
      await r.close();
    }
  });

  it('sends primary-down alone, and lets the old state speak at once, when the secondary had not loaded it', async () => {
    const r = await rig();
    try {
      r.primary.onTrigger = () => {
        r.secondary.event('STOP');
        r.primary.event('STOP');
        setTimeout(() => { r.primary.crash(); r.secondary.event('COLO_EXIT', { reason: 'error' }); }, 10);
      };
      r.link.sendCheckpoint({ epoch: 2, reason: 'mismatch' });
      await r.saw('bridge:primary-down');
      expect(r.timeline.some((t) => t.startsWith('bridge:checkpoint-done') || t.startsWith('bridge:checkpoint-failed'))).toBe(false);
      expect(r.timeline.indexOf('s:gate-released')).toBeGreaterThan(r.timeline.indexOf('s:gate-held'));
      expect(r.timeline.indexOf('s:gate-released')).toBeLessThan(r.timeline.indexOf('bridge:primary-down'));
    } finally {
      await r.close();
    }
  });

  it('answers checkpoint-failed, and makes the primary run again, when a checkpoint never finishes', async () => {
    const r = await rig();
    try {
      r.primary.inColo = true;
      r.primary.onTrigger = () => { r.secondary.event('STOP'); r.primary.event('STOP'); }; // a frozen secondary: no RESUME ever
      r.link.sendCheckpoint({ epoch: 2, reason: 'mismatch' });
      await waitFor('checkpoint-failed', () => r.timeline.includes('bridge:checkpoint-failed 2'), 5000);
      expect(r.timeline).not.toContain('bridge:checkpoint-done 2 ts');
      // x-colo-lost-heartbeat ends COLO on the primary, which then runs again (QEMU starts it).
      expect(r.timeline.indexOf('p:x-colo-lost-heartbeat')).toBeGreaterThan(-1);
      expect(r.timeline.indexOf('p:x-colo-lost-heartbeat')).toBeLessThan(r.timeline.indexOf('bridge:checkpoint-failed 2'));
      expect(r.primary.inColo).toBe(false);
    } finally {
      await r.close();
    }
  });

  it('answers checkpoint-done with the RAM bytes and full pages the checkpoint moved: the primary\'s counters after it less those before', async () => {
    const r = await rig();
    try {
      r.primary.inColo = true;
      // The counters since the migration that entered COLO: the full copy, then earlier checkpoints.
      r.primary.ram = { transferred: 86_000_000, normal: 21_000, duplicate: 11_700 };
      r.primary.onTrigger = () => {
        r.secondary.event('STOP');
        r.primary.event('STOP');
        // 300 pages in full (4096 bytes and an 8-byte header each), 40 zero pages (a header and a byte), the end marker.
        const ram = r.primary.ram!;
        r.primary.ram = { transferred: ram.transferred + 300 * 4104 + 40 * 9 + 8, normal: ram.normal + 300, duplicate: ram.duplicate + 40 };
        setTimeout(() => { r.secondary.event('RESUME'); r.primary.event('RESUME'); }, 5);
      };
      r.link.sendCheckpoint({ epoch: 2, reason: 'mismatch' });
      await r.saw('bridge:checkpoint-done 2 ts');
      expect(r.done[0]).toMatchObject({ epoch: 2, bytes: 300 * 4104 + 40 * 9 + 8, pages: 300, port: 'ts' });
      expect(r.agent.stats.coloBytes).toEqual([300 * 4104 + 40 * 9 + 8]);
      expect(r.agent.stats.coloPages).toEqual([300]);
      expect(r.logged).not.toContain('qemu-agent-colo-size-unknown');
      r.link.sendBackupAttached(2, 'ts');
      await r.saw('s:gate-released');
    } finally {
      await r.close();
    }
  });

  it('answers bytes 0 and leaves pages out, and says why once, when QEMU does not report its counters in COLO state', async () => {
    const r = await rig();
    try {
      r.primary.inColo = true;
      r.primary.onTrigger = () => {
        r.secondary.event('STOP');
        r.primary.event('STOP');
        setTimeout(() => { r.secondary.event('RESUME'); r.primary.event('RESUME'); }, 5);
      };
      for (const epoch of [2, 3]) {
        r.link.sendCheckpoint({ epoch, reason: 'mismatch' });
        await r.saw(`bridge:checkpoint-done ${epoch} ts`);
        r.link.sendBackupAttached(epoch, 'ts');
        await waitFor('the gate released', () => r.timeline.filter((t) => t === 's:gate-released').length === epoch - 1, 3000);
      }
      expect(r.done.map((m) => [m.bytes, m.pages])).toEqual([[0, undefined], [0, undefined]]);
      expect(r.agent.stats.coloCheckpoints).toBe(2);
      expect(r.agent.stats.coloBytes).toEqual([]);
      expect(r.logged.filter((e) => e === 'qemu-agent-colo-size-unknown')).toHaveLength(1);
    } finally {
      await r.close();
    }
  });
});
