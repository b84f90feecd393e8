/**
 * The QEMU sync agent (way 1, full copy): speaks protocol v2 to the bridge
 * and QMP to the VMs, and makes the backup an exact copy of the primary.
 *
 *   checkpoint ──► pause primary ─► stop-and-copy into a standby QEMU (-incoming, fresh tap)
 *                  ─► both run ─► checkpoint-done {ms, bytes, pages, port: standby's tap}
 *                  ─► the old backup is retired (killed, its tap removed)
 *   failover   ──► the backup is the primary now; the old primary is killed
 *   reprotect  ──► a new backup copied from the primary, announced the same way
 *   QEMU exits / QMP closes ──► primary-down / backup-down at once
 *
 * Each new backup runs behind a fresh tap and `checkpoint-done` names it: the
 * bridge moves the backup's port there before it applies the checkpoint, so
 * nothing the old backup sent can be compared with the new one's stream
 * (the epoch fence). The old backup is never touched before the new copy is
 * complete: a primary that dies in the middle of a checkpoint leaves the old
 * backup, intact and running, for the failover. A copy that fails answers
 * `checkpoint-failed` with the cause and leaves both VMs running (the copy
 * resumes the primary on every path).
 *
 * A standby QEMU is kept ready (started with `-incoming defer`) so that a
 * checkpoint does not wait for a QEMU to start.
 */
import { LogFn, noLog } from '../control/logger';
import { CheckpointMessage, FailoverMessage, ParsedAgentMessage, ReprotectMessage, VmLiveness } from '../replicate/agent-protocol';
import { QmpClient, QmpEvent } from '../qemu/qmp';
import { startLoadedVm } from '../qemu/migration';
import { AgentSession } from './agent-session';

/** A VM as the agent needs it. `QemuProcess` is one. */
export interface AgentVm {
  readonly name: string;
  readonly tap: string | undefined;
  readonly qmp: QmpClient;
  readonly running: boolean;
  readonly exited: Promise<unknown>;
  kill(): Promise<unknown>;
}

/** What a copy moved and how long the primary was paused (see lab/qemu/pair.ts cloneInto). */
export interface CopyReport {
  ms: number;
  bytes: number;
  pages: number;
}

/** Where new backups come from and where old ones go. */
export interface VmFactory {
  /** A new VM on a fresh tap, paused and waiting for an incoming migration. */
  standby(): Promise<AgentVm>;
  /**
   * Stop-and-copy `source` into `target`; `source` runs afterwards, and so
   * does `target` unless `leaveTargetPaused` (then the agent starts it).
   */
  copy(source: AgentVm, target: AgentVm, leaveTargetPaused?: boolean): Promise<CopyReport>;
  /** A VM that is dead (or was just killed): remove what it leaves behind (its tap). */
  retire(vm: AgentVm): Promise<void>;
}

export interface QemuAgentOptions {
  socketPath: string;
  name?: string;
  primary: AgentVm;
  /** Null: none yet (the bridge asks for one with `reprotect`). */
  backup: AgentVm | null;
  factory: VmFactory;
  /** Keep a standby QEMU started ahead of the next checkpoint (default true). */
  warmStandby?: boolean;
  /** How long after `checkpoint-done` the old backup is killed (default 200 ms: the bridge has closed its port by then). */
  retireDelayMs?: number;
  /**
   * Keep a new backup paused from the end of the copy until the bridge says
   * its port reads the new tap (`backup-attached`), so that nothing the new
   * backup says is sent before anyone listens (default true). Without the
   * word within `attachTimeoutMs` (default 3000) it starts anyway, logged.
   */
  holdUntilAttached?: boolean;
  attachTimeoutMs?: number;
  heartbeatMs?: number;
  reconnectInitialMs?: number;
  reconnectMaxMs?: number;
  /** The roles changed (a copy became the backup, a failover, a lost backup): e.g. to keep a state file. */
  onRoles?: (vms: { primary: AgentVm | null; backup: AgentVm | null }) => void;
  log?: LogFn;
}

export interface QemuAgentStats {
  checkpoints: number;
  done: number;
  failed: number;
  reprotects: number;
  failovers: number;
  retired: number;
  /** Pause of the primary per successful copy, ms (last 1,000). */
  copyMs: number[];
  copyBytes: number[];
}

export interface QemuAgent {
  readonly stats: QemuAgentStats;
  readonly connected: boolean;
  /** The VMs in their roles now. */
  readonly vms: { primary: AgentVm | null; backup: AgentVm | null };
  stop(): Promise<void>;
}

const MAX_SAMPLES = 1000;



class QmpQemuAgent implements QemuAgent {
  readonly stats: QemuAgentStats = { checkpoints: 0, done: 0, failed: 0, reprotects: 0, failovers: 0, retired: 0, copyMs: [], copyBytes: [] };
  private readonly session: AgentSession;
  private readonly log: LogFn;
  private primary: AgentVm | null;
  private backup: AgentVm | null;
  private warm: Promise<AgentVm> | null = null;
  /** One copy at a time; requests queue behind it. */
  private work: Promise<void> = Promise.resolve();
  private stopped = false;
  /** VMs whose death we caused (retired, failed standbys): not reported. */
  private readonly expectedDeaths = new Set<AgentVm>();
  private readonly paused = new Set<AgentVm>();
  /** New backups whose link waits for `backup-attached`, by tap. */
  private readonly attachWaiters = new Map<string, () => void>();
  /** VMs whose death was reported to the bridge. */
  private readonly reported = new Set<AgentVm>();

  constructor(private readonly o: QemuAgentOptions) {
    this.log = o.log ?? noLog;
    this.primary = o.primary;
    this.backup = o.backup;
    this.watch(o.primary);
    if (o.backup) this.watch(o.backup);
    this.session = new AgentSession({
      socketPath: o.socketPath, name: o.name ?? 'qemu-agent', version: 2, heartbeatMs: o.heartbeatMs ?? 1000,
      reconnectInitialMs: o.reconnectInitialMs ?? 100, reconnectMaxMs: o.reconnectMaxMs ?? 5000, logPrefix: 'qemu-agent', log: this.log,
    }, {
      message: (msg) => this.receive(msg),
      liveness: () => ({ primary: this.livenessOf(this.primary), backup: this.livenessOf(this.backup) }),
    });
    this.prepareStandby();
  }

  get connected(): boolean {
    return this.session.connected;
  }

  get vms(): { primary: AgentVm | null; backup: AgentVm | null } {
    return { primary: this.primary, backup: this.backup };
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.session.stop();
    await this.work.catch(() => {});
    const warm = this.warm;
    this.warm = null;
    if (warm) {
      const vm = await warm.catch(() => null);
      if (vm) await this.discard(vm);
    }
  }

  private receive(msg: ParsedAgentMessage): void {
    switch (msg.type) {
      case 'checkpoint':
        this.serially(() => this.checkpoint(msg));
        return;
      case 'reprotect':
        this.serially(() => this.reprotect(msg));
        return;
      case 'failover':
        this.failover(msg);
        return;
      case 'backup-attached':
        this.attachWaiters.get(msg.port)?.();
        return;
      default:
        return;
    }
  }

  private serially(task: () => Promise<void>): void {
    this.work = this.work.then(task, task);
  }

  // ───────────────────────── checkpoints ─────────────────────────

  private async checkpoint(msg: CheckpointMessage): Promise<void> {
    this.stats.checkpoints++;
    if (await this.newBackup(msg.epoch, 'checkpoint')) this.stats.done++;
  }

  private async reprotect(msg: ReprotectMessage): Promise<void> {
    if (await this.newBackup(msg.epoch, 'reprotect')) this.stats.reprotects++;
  }

  /**
   * The primary copied into a new backup, which takes the backup's role and
   * is announced (checkpoint-done with its tap); the old backup is retired
   * only then. False (and checkpoint-failed or primary-down sent) when no
   * copy was made.
   */
  private async newBackup(epoch: number, what: 'checkpoint' | 'reprotect'): Promise<boolean> {
    const primary = this.primary;
    if (!primary || !primary.running) {
      this.fail(epoch, 'no running primary to copy');
      return false;
    }
    const made = await this.copyPrimary(primary, epoch, what);
    if (!made) return false;
    const old = this.backup;
    this.backup = made.vm;
    this.watch(made.vm);
    this.rolesChanged();
    this.answer(epoch, made.vm, made.report);
    if (old && old !== made.vm) this.retireLater(old, `replaced by a new copy (${what})`);
    return true;
  }

  /** A standby, the copy into it; null (and checkpoint-failed sent) when either fails. */
  private async copyPrimary(primary: AgentVm, epoch: number, what: string): Promise<{ vm: AgentVm; report: CopyReport } | null> {
    let standby: AgentVm;
    try {
      standby = await this.takeStandby();
    } catch (e) {
      this.fail(epoch, `no standby QEMU for the copy: ${(e as Error).message}`);
      return null;
    }
    this.paused.add(primary);
    try {
      const hold = this.o.holdUntilAttached !== false && standby.tap !== undefined;
      const report = await this.o.factory.copy(primary, standby, hold);
      if (hold) this.startWhenAttached(standby, epoch);
      if (!primary.running) throw new Error('the primary died during the copy');
      this.stats.copyMs.push(report.ms);
      this.stats.copyBytes.push(report.bytes);
      if (this.stats.copyMs.length > MAX_SAMPLES) { this.stats.copyMs.shift(); this.stats.copyBytes.shift(); }
      this.log('info', `qemu-agent-${what}`, { epoch, primary: primary.name, copy: standby.name, tap: standby.tap, ms: report.ms, bytes: report.bytes, pages: report.pages });
      this.prepareStandby();
      return { vm: standby, report };
    } catch (e) {
      // A primary that died under the copy: say so before anything else. A checkpoint-failed
      // first would leave the bridge DEGRADED (backup stale) and refusing the failover it needs;
      // the old backup is untouched and agreed with everything released.
      if (await this.diedWithin(primary, 1000)) {
        this.log('error', 'qemu-agent-primary-died-during-copy', { epoch, primary: primary.name, error: (e as Error).message, note: 'the old backup is intact: failover, not a failed checkpoint' });
        this.reportDown(primary);
      } else {
        this.fail(epoch, `copy of ${primary.name} failed: ${(e as Error).message}`);
      }
      await this.discard(standby);
      this.prepareStandby();
      return null;
    } finally {
      this.paused.delete(primary);
    }
  }

  /** Waits for the bridge's `backup-attached` naming the VM's tap (or the timeout), then starts the VM. */
  private startWhenAttached(vm: AgentVm, epoch: number): void {
    const tap = vm.tap as string;
    const timeoutMs = this.o.attachTimeoutMs ?? 3000;
    const up = (why: string) => {
      this.attachWaiters.delete(tap);
      clearTimeout(timer);
      if (!vm.running) return;
      startLoadedVm(vm.qmp).then(
        () => this.log(why === 'attached' ? 'info' : 'warn', 'qemu-agent-backup-started', { vm: vm.name, tap, epoch, why }),
        (e: Error) => this.log('error', 'qemu-agent-backup-start-failed', { vm: vm.name, tap, error: e.message }),
      );
    };
    const timer = setTimeout(() => up(`no backup-attached within ${timeoutMs} ms`), timeoutMs);
    this.attachWaiters.set(tap, () => up('attached'));
  }

  private answer(epoch: number, vm: AgentVm, r: CopyReport): void {
    const sent = this.session.send({ type: 'checkpoint-done', epoch, ms: r.ms, bytes: r.bytes, pages: r.pages, ...(vm.tap ? { port: vm.tap } : {}) });
    if (!sent) this.log('warn', 'qemu-agent-answer-lost', { epoch, why: 'the bridge is not connected; it will time the checkpoint out and ask again' });
  }

  private fail(epoch: number, error: string): void {
    this.stats.failed++;
    this.log('warn', 'qemu-agent-checkpoint-failed', { epoch, error });
    this.session.send({ type: 'checkpoint-failed', epoch, error });
  }

  // ───────────────────────── failover ─────────────────────────

  private failover(msg: FailoverMessage): void {
    this.stats.failovers++;
    const dead = this.primary;
    const survivor = this.backup;
    if (survivor && msg.survivor && survivor.tap && survivor.tap !== msg.survivor) {
      this.log('warn', 'qemu-agent-failover-mismatch', { survivor: msg.survivor, backup: survivor.tap, note: 'the bridge promoted a port that is not our backup; following the bridge' });
    }
    this.primary = survivor;
    this.backup = null;
    this.rolesChanged();
    this.log('warn', 'qemu-agent-failover', { epoch: msg.epoch, primary: survivor?.name ?? null, dead: dead?.name ?? null });
    // A primary the bridge gave up on may still run (a silent death): it must never speak again.
    if (dead) this.retireLater(dead, 'the bridge failed over from it', 0);
  }

  // ───────────────────────── VMs ─────────────────────────

  private prepareStandby(): void {
    if (this.stopped || this.warm || this.o.warmStandby === false) return;
    const p = this.o.factory.standby();
    p.catch((e: Error) => {
      this.log('warn', 'qemu-agent-standby-failed', { error: e.message, note: 'the next checkpoint starts one itself' });
      if (this.warm === p) this.warm = null;
    });
    this.warm = p;
  }

  private async takeStandby(): Promise<AgentVm> {
    const warm = this.warm;
    this.warm = null;
    if (warm) {
      const vm = await warm.catch(() => null);
      if (vm && vm.running) return vm;
    }
    return this.o.factory.standby();
  }

  private retireLater(vm: AgentVm, why: string, delayMs = this.o.retireDelayMs ?? 200): void {
    this.expectedDeaths.add(vm);
    setTimeout(() => {
      this.log('info', 'qemu-agent-retire', { vm: vm.name, tap: vm.tap, why });
      this.discard(vm).then(() => { this.stats.retired++; });
    }, delayMs).unref?.();
  }

  private async discard(vm: AgentVm): Promise<void> {
    this.expectedDeaths.add(vm);
    await vm.kill().catch(() => {});
    await this.o.factory.retire(vm).catch((e: Error) => this.log('warn', 'qemu-agent-retire-failed', { vm: vm.name, error: e.message }));
  }

  /** Reports a VM's death in its role at the moment it dies. */
  private watch(vm: AgentVm): void {
    const onEvent = (ev: QmpEvent) => {
      if (ev.event === 'STOP' || ev.event === 'RESUME') this.session.heartbeat();
    };
    vm.qmp.on('event', onEvent);
    vm.exited.then(() => {
      vm.qmp.off('event', onEvent);
      this.reportDown(vm);
    });
  }

  /** primary-down or backup-down for a VM in its role, once. */
  private reportDown(vm: AgentVm): void {
    if (this.stopped || this.expectedDeaths.has(vm) || this.reported.has(vm)) return;
    this.reported.add(vm);
    if (vm === this.primary) {
      this.log('error', 'qemu-agent-primary-down', { vm: vm.name });
      this.session.send({ type: 'primary-down', reason: `QEMU ${vm.name} exited` });
    } else if (vm === this.backup) {
      this.log('error', 'qemu-agent-backup-down', { vm: vm.name });
      this.backup = null;
      this.rolesChanged();
      this.session.send({ type: 'backup-down', reason: `QEMU ${vm.name} exited` });
      this.discard(vm).catch(() => {});
    }
  }

  private async diedWithin(vm: AgentVm, ms: number): Promise<boolean> {
    if (!vm.running) return true;
    let timer: NodeJS.Timeout | undefined;
    const died = await Promise.race([
      vm.exited.then(() => true),
      new Promise<boolean>((r) => { timer = setTimeout(() => r(false), ms); }),
    ]);
    clearTimeout(timer);
    return died;
  }

  private rolesChanged(): void {
    try {
      this.o.onRoles?.({ primary: this.primary, backup: this.backup });
    } catch (e) {
      this.log('warn', 'qemu-agent-roles-hook-failed', { error: (e as Error).message });
    }
  }

  private livenessOf(vm: AgentVm | null): VmLiveness {
    if (!vm || !vm.running) return 'down';
    return this.paused.has(vm) ? 'paused' : 'up';
  }
}

/** Starts the QEMU agent; it keeps (re)connecting to the bridge until `stop()`. */
export function runQemuAgent(options: QemuAgentOptions): QemuAgent {
  return new QmpQemuAgent(options);
}
