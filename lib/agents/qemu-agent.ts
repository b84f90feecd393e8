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
 *
 * `sync: 'colo'` (way 2, QEMU's COLO checkpoints; both QEMUs the patched
 * build): the first checkpoint (and every re-protection, and any checkpoint
 * after COLO broke) is a full copy into a fresh standby on a fresh tap, as
 * above, that stays the primary's COLO secondary; every later checkpoint
 * sends only the pages dirtied since the last one into that same VM:
 *
 *   checkpoint ──► trigger (x-checkpoint-delay) ─► secondary stops, then the primary (STOP)
 *                  ─► hold the secondary's output (its gate) ─► state sent, loaded ─► primary RESUME
 *                  ─► checkpoint-done {ms, bytes, pages, port: the secondary's own tap} ─► backup-attached ─► release the gate
 *   primary dies ──► wait for the secondary's COLO_EXIT ─► did it load the checkpoint in flight?
 *                  yes: checkpoint-done first, then primary-down; no: release the gate, primary-down;
 *                  x-colo-lost-heartbeat makes it a normal VM either way
 *   a checkpoint fails or times out ──► x-colo-lost-heartbeat to both (the primary runs again),
 *                  checkpoint-failed; the next checkpoint starts COLO anew into a fresh VM
 *
 * The fence rule for a backup overwritten in place (protocol v3): no frame
 * the secondary sent in its old state may be compared with what it says in
 * the new one. Its guest sends nothing while it is stopped, and QEMU's tap
 * writes reach the bridge's AF_PACKET socket within the write() call, so
 * once the primary's STOP is seen (the secondary stops before it answers the
 * primary) everything the old state said is on the bridge's socket, read or
 * not. From then the gate holds whatever the secondary says; what it said
 * between that moment and the gate taking effect can only be from after the
 * load and is on the socket too. `checkpoint-done` naming the secondary's
 * own tap goes only after the gate holds, and the bridge, seeing its own
 * interface named, reads it through a fresh socket before it applies the
 * checkpoint: everything on the old socket (old state, or new state said
 * too early) is dropped unread, everything held is released after
 * `backup-attached`, onto the fresh socket, in the new epoch. A bridge older
 * than v3 does not reopen: then every checkpoint is a full copy into a fresh
 * VM on a fresh tap (way 1's fence).
 */
import { LogFn, noLog } from '../control/logger';
import { CheckpointMessage, FailoverMessage, ParsedAgentMessage, ReprotectMessage, VmLiveness } from '../replicate/agent-protocol';
import { QmpClient, QmpEvent } from '../qemu/qmp';
import { startLoadedVm } from '../qemu/migration';
import { ColoCheckpointProgress, coloCheckpoint, leaveColo, setColoGate } from '../qemu/colo';
import { AgentSession } from './agent-session';

/** How a checkpoint makes the backup a copy of the primary. */
export type SyncMode = 'full-copy' | 'colo';
export const SYNC_MODES: readonly SyncMode[] = ['full-copy', 'colo'];

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
  /**
   * (sync colo) Makes `target`, a standby from `standby()` (the COLO-capable
   * QEMU, its output held by the gate of lib/qemu/colo.ts), the COLO
   * secondary of `source`: a full copy, then both run in COLO state.
   */
  enterColo?(source: AgentVm, target: AgentVm): Promise<CopyReport>;
}

export interface QemuAgentOptions {
  socketPath: string;
  name?: string;
  primary: AgentVm;
  /** Null: none yet (the bridge asks for one with `reprotect`). */
  backup: AgentVm | null;
  factory: VmFactory;
  /** Full copy into a fresh VM at every checkpoint (default), or COLO checkpoints (needs `factory.enterColo`). */
  sync?: SyncMode;
  /** (colo) A checkpoint not over after this long has failed; QEMU never gives up by itself (default 10000 ms). */
  coloCheckpointTimeoutMs?: number;
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
  /** Pause of the primary per successful copy, ms (last 1,000); in colo mode the copies that start COLO. */
  copyMs: number[];
  /** RAM bytes and full pages of each such copy. */
  copyBytes: number[];
  copyPages: number[];
  /** (colo) Checkpoints made by COLO, each trigger → primary running again, and the primary's pause in them (last 1,000). */
  coloCheckpoints: number;
  coloMs: number[];
  coloPauseMs: number[];
  /** (colo) RAM bytes and full pages each COLO checkpoint moved (last 1,000; only those whose size QEMU reported). */
  coloBytes: number[];
  coloPages: number[];
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
  readonly stats: QemuAgentStats = {
    checkpoints: 0, done: 0, failed: 0, reprotects: 0, failovers: 0, retired: 0, copyMs: [], copyBytes: [], copyPages: [],
    coloCheckpoints: 0, coloMs: [], coloPauseMs: [], coloBytes: [], coloPages: [],
  };
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
  /** New backups whose output waits for `backup-attached`, by tap: calling one lets the VM speak now. */
  private readonly attachWaiters = new Map<string, (why: string) => Promise<void>>();
  /** VMs whose death was reported to the bridge. */
  private readonly reported = new Set<AgentVm>();
  private readonly sync: SyncMode;
  /** (colo) The primary and its COLO secondary (the backup), while COLO runs between them. */
  private colo: ColoPair | null = null;
  private warnedOldBridge = false;
  private warnedNoColoSize = false;

  constructor(private readonly o: QemuAgentOptions) {
    this.log = o.log ?? noLog;
    this.sync = o.sync ?? 'full-copy';
    if (this.sync === 'colo' && !o.factory.enterColo) throw new Error('sync colo needs a VM factory that can enter COLO (enterColo)');
    this.primary = o.primary;
    this.backup = o.backup;
    this.watch(o.primary);
    if (o.backup) this.watch(o.backup);
    this.session = new AgentSession({
      // colo needs the bridge to reopen a port named again (v3); full copy needs v2 only.
      socketPath: o.socketPath, name: o.name ?? 'qemu-agent', version: this.sync === 'colo' ? 3 : 2, heartbeatMs: o.heartbeatMs ?? 1000,
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
        void this.attachWaiters.get(msg.port)?.('attached');
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
    const pair = this.colo;
    if (pair && this.coloUsable(pair)) {
      if (await this.coloStep(msg.epoch, pair)) this.stats.done++;
      return;
    }
    if (await this.newBackup(msg.epoch, 'checkpoint')) this.stats.done++;
  }

  /** Whether this checkpoint can be a COLO one: the pair is the roles' pair, both run, and the bridge fences a reused port. */
  private coloUsable(pair: ColoPair): boolean {
    if (pair.primary !== this.primary || pair.secondary !== this.backup || !pair.primary.running || !pair.secondary.running || pair.exited) return false;
    if (this.session.bridgeVersion >= 3) return true;
    if (!this.warnedOldBridge) {
      this.warnedOldBridge = true;
      this.log('warn', 'qemu-agent-colo-old-bridge', { bridgeVersion: this.session.bridgeVersion, note: 'the bridge cannot fence a backup overwritten in place (protocol v3): every checkpoint is a full copy into a fresh VM' });
    }
    return false;
  }

  /**
   * One COLO checkpoint into the secondary that runs now; see the header for
   * the order of steps and why it fences. True when checkpoint-done was sent.
   */
  private async coloStep(epoch: number, pair: ColoPair): Promise<boolean> {
    const { primary, secondary } = pair;
    // Output held since the last checkpoint, its backup-attached never heard (a bridge that went away):
    // it belongs to the state before this checkpoint, so it must go out before this one starts.
    const pending = secondary.tap !== undefined ? this.attachWaiters.get(secondary.tap) : undefined;
    if (pending) await pending('a new checkpoint begins');
    const progress: ColoCheckpointProgress = { primaryStopped: false, secondaryStopped: false, secondaryResumed: false };
    pair.inflight = { epoch, progress, startedMs: performance.now() };
    this.paused.add(primary);
    try {
      const r = await coloCheckpoint(primary.qmp, secondary.qmp, {
        timeoutMs: this.o.coloCheckpointTimeoutMs ?? 10_000, progress,
        // The secondary is stopped once the primary is: from here on, what it says is held.
        whenPrimaryStopped: () => setColoGate(secondary.qmp, true),
      });
      if (this.colo !== pair) return false; // a death or a failover took over meanwhile
      pair.inflight = null;
      this.stats.coloCheckpoints++;
      pushSample(this.stats.coloMs, r.ms);
      pushSample(this.stats.coloPauseMs, r.pauseMs);
      if (r.size) {
        pushSample(this.stats.coloBytes, r.size.bytes);
        pushSample(this.stats.coloPages, r.size.pages);
      } else if (!this.warnedNoColoSize) {
        this.warnedNoColoSize = true;
        this.log('warn', 'qemu-agent-colo-size-unknown', { vm: primary.name, note: 'this QEMU does not report RAM counters in COLO state (qemu-colo/patches/0003, make qemu-colo): checkpoint-done says bytes 0 and no pages' });
      }
      this.log('info', 'qemu-agent-colo-checkpoint', { epoch, primary: primary.name, secondary: secondary.name, ms: round1(r.ms), pauseMs: round1(r.pauseMs), bytes: r.size?.bytes ?? null, pages: r.size?.pages ?? null, zeroPages: r.size?.zeroPages ?? null });
      this.startWhenAttached(secondary, epoch, 'release');
      this.answer(epoch, secondary, { ms: round1(r.ms), bytes: r.size?.bytes ?? 0, pages: r.size?.pages });
      return true;
    } catch (e) {
      const error = (e as Error).message;
      if (pair.death || await this.diedWithin(primary, 1000)) {
        await pair.death; // the death handler answers for the checkpoint in flight
        return false;
      }
      if (this.colo !== pair) return false;
      // Both alive, COLO stuck or broken: the primary must run again, and the secondary's state is unknown.
      this.colo = null;
      this.log('warn', 'qemu-agent-colo-broken', { epoch, primary: primary.name, secondary: secondary.name, error, note: 'COLO ended on both; the next checkpoint starts it anew into a fresh VM' });
      await leaveColo(primary.qmp).catch((err: Error) => this.log('error', 'qemu-agent-colo-leave-failed', { vm: primary.name, error: err.message }));
      leaveColo(secondary.qmp, 2000).catch((err: Error) => this.log('warn', 'qemu-agent-colo-leave-failed', { vm: secondary.name, error: err.message }));
      this.fail(epoch, `COLO checkpoint failed: ${error}`);
      return false;
    } finally {
      this.paused.delete(primary);
    }
  }

  /**
   * The COLO primary died. The secondary reports COLO_EXIT once it has read
   * everything the dead primary sent, so a checkpoint load that could still
   * finish has finished by then; a query-status afterwards makes sure every
   * event it sent before is in. If it loaded the checkpoint in flight (it
   * stopped for it and ran again), the bridge hears checkpoint-done first
   * (the fence for the new state), then primary-down; otherwise its old
   * state goes on, on the same socket, and the gate opens at once.
   */
  private async coloPrimaryDied(pair: ColoPair): Promise<void> {
    const sec = pair.secondary;
    if (this.colo === pair) this.colo = null;
    // Bounded well inside the bridge's wait for this answer (failover.checkpointWaitMs, 2,000 ms by
    // default): COLO_EXIT follows the primary's death within milliseconds when the secondary is healthy.
    await Promise.race([pair.exitSeen, new Promise((r) => setTimeout(r, COLO_EXIT_WAIT_MS))]);
    await sec.qmp.execute('query-status', undefined, { timeoutMs: 500 }).catch(() => {});
    const inflight = pair.inflight;
    const loaded = inflight !== null && inflight.progress.secondaryStopped && inflight.progress.secondaryResumed;
    await sec.qmp.execute('x-colo-lost-heartbeat', undefined, { timeoutMs: 3000 })
      .catch((e: Error) => this.log('warn', 'qemu-agent-colo-failover-failed', { vm: sec.name, error: e.message, note: 'it may have left COLO already' }));
    this.log('warn', 'qemu-agent-colo-primary-died', { primary: pair.primary.name, secondary: sec.name, inFlight: inflight?.epoch ?? null, loaded, exitSeen: pair.exited });
    if (loaded && inflight) {
      this.startWhenAttached(sec, inflight.epoch, 'release');
      // Its size died with the primary's counters: unknown, so bytes 0 and no pages.
      this.answer(inflight.epoch, sec, { ms: round1(performance.now() - inflight.startedMs), bytes: 0 });
    } else {
      await setColoGate(sec.qmp, false).catch((e: Error) => this.log('error', 'qemu-agent-gate-release-failed', { vm: sec.name, error: e.message }));
    }
    this.reportDown(pair.primary);
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
    if (this.sync === 'colo') return this.coloCopy(primary, epoch, what);
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
      this.recordCopy(report);
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

  /**
   * (colo) The primary copied into a fresh COLO secondary on a fresh tap (a
   * full copy, announced like way 1's); its output is held until the bridge
   * has attached its tap. The primary first leaves any COLO it was in.
   */
  private async coloCopy(primary: AgentVm, epoch: number, what: string): Promise<{ vm: AgentVm; report: CopyReport } | null> {
    const old = this.colo;
    this.colo = null;
    let standby: AgentVm | null = null;
    this.paused.add(primary);
    try {
      // Never two secondaries: the old one (if any) is left to run on its own until it is retired.
      if (await leaveColo(primary.qmp)) this.log('info', 'qemu-agent-colo-left', { vm: primary.name, note: 'COLO with the old secondary ended before a new one starts' });
      if (old && old.secondary.running) leaveColo(old.secondary.qmp, 2000).catch(() => {});
      standby = await this.takeStandby();
      const report = await (this.o.factory.enterColo as NonNullable<VmFactory['enterColo']>)(primary, standby);
      if (!primary.running) throw new Error('the primary died while COLO started');
      const pair = newColoPair(primary, standby);
      this.colo = pair;
      if (standby.tap !== undefined) this.startWhenAttached(standby, epoch, 'release');
      else await setColoGate(standby.qmp, false);
      this.recordCopy(report);
      this.log('info', `qemu-agent-${what}`, { epoch, primary: primary.name, copy: standby.name, tap: standby.tap, colo: true, ms: round1(report.ms), bytes: report.bytes, pages: report.pages });
      this.prepareStandby();
      return { vm: standby, report: { ...report, ms: round1(report.ms) } };
    } catch (e) {
      if (await this.diedWithin(primary, 1000)) {
        this.log('error', 'qemu-agent-primary-died-during-copy', { epoch, primary: primary.name, error: (e as Error).message, note: 'the old backup is intact: failover, not a failed checkpoint' });
        this.reportDown(primary);
      } else {
        this.fail(epoch, `COLO start from ${primary.name} failed: ${(e as Error).message}`);
      }
      if (standby) await this.discard(standby);
      this.prepareStandby();
      return null;
    } finally {
      this.paused.delete(primary);
    }
  }

  /**
   * Waits for the bridge's `backup-attached` naming the VM's tap (or the
   * timeout), then lets the VM speak: `start` a VM left paused by a copy,
   * `release` the gate of a COLO secondary.
   */
  private startWhenAttached(vm: AgentVm, epoch: number, how: 'start' | 'release' = 'start'): void {
    const tap = vm.tap as string;
    const timeoutMs = this.o.attachTimeoutMs ?? 3000;
    const waiter = (why: string): Promise<void> => {
      if (this.attachWaiters.get(tap) === waiter) this.attachWaiters.delete(tap);
      clearTimeout(timer);
      if (!vm.running) return Promise.resolve();
      return (how === 'start' ? startLoadedVm(vm.qmp) : setColoGate(vm.qmp, false)).then(
        () => this.log(why === 'attached' ? 'info' : 'warn', 'qemu-agent-backup-started', { vm: vm.name, tap, epoch, how, why }),
        (e: Error) => this.log('error', 'qemu-agent-backup-start-failed', { vm: vm.name, tap, how, error: e.message }),
      );
    };
    const timer = setTimeout(() => void waiter(`no backup-attached within ${timeoutMs} ms`), timeoutMs);
    this.attachWaiters.set(tap, waiter);
  }

  private recordCopy(report: CopyReport): void {
    pushSample(this.stats.copyMs, report.ms);
    pushSample(this.stats.copyBytes, report.bytes);
    pushSample(this.stats.copyPages, report.pages);
  }

  /** `pages` undefined: not known (left out of the message). */
  private answer(epoch: number, vm: AgentVm, r: { ms: number; bytes: number; pages?: number }): void {
    const sent = this.session.send({ type: 'checkpoint-done', epoch, ms: r.ms, bytes: r.bytes, ...(r.pages !== undefined ? { pages: r.pages } : {}), ...(vm.tap ? { port: vm.tap } : {}) });
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
    const pair = this.colo;
    this.colo = null;
    if (pair?.inflight?.progress.secondaryResumed) {
      this.log('error', 'qemu-agent-failover-past-colo-load', { epoch: msg.epoch, inFlight: pair.inflight.epoch, note: 'the bridge promoted a secondary that had already loaded a checkpoint it never heard of; its flows may break' });
    }
    this.primary = survivor;
    this.backup = null;
    this.rolesChanged();
    this.log('warn', 'qemu-agent-failover', { epoch: msg.epoch, primary: survivor?.name ?? null, dead: dead?.name ?? null });
    if (this.sync === 'colo' && survivor && survivor.running) {
      // The bridge has applied whatever checkpoint-done came before: the survivor runs as a normal VM and speaks.
      leaveColo(survivor.qmp)
        .catch((e: Error) => this.log('warn', 'qemu-agent-colo-leave-failed', { vm: survivor.name, error: e.message }))
        .then(() => setColoGate(survivor.qmp, false))
        .catch((e: Error) => this.log('error', 'qemu-agent-gate-release-failed', { vm: survivor.name, error: e.message }));
    }
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
      const pair = this.colo;
      if (pair && vm === pair.primary && vm === this.primary && !this.expectedDeaths.has(vm) && !this.stopped) {
        pair.death = this.coloPrimaryDied(pair).catch((e: Error) => {
          this.log('error', 'qemu-agent-colo-death-failed', { error: e.message });
          this.reportDown(vm);
        });
        return;
      }
      if (pair && vm === pair.secondary) {
        // A primary paused in the middle of a checkpoint stays paused until it hears this.
        this.colo = null;
        if (pair.primary.running) leaveColo(pair.primary.qmp).catch((e: Error) => this.log('error', 'qemu-agent-colo-leave-failed', { vm: pair.primary.name, error: e.message }));
      }
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

/** How long a dead COLO primary's secondary may take to report COLO_EXIT before the agent decides without it. */
const COLO_EXIT_WAIT_MS = 1200;

/** A COLO primary and its secondary, and what the checkpoint in flight has got to. */
interface ColoPair {
  primary: AgentVm;
  secondary: AgentVm;
  inflight: { epoch: number; progress: ColoCheckpointProgress; startedMs: number } | null;
  /** The secondary reported COLO_EXIT (its primary is gone, or COLO ended). */
  exited: boolean;
  exitSeen: Promise<void>;
  /** Set when the primary died while the pair ran: the handling in progress. */
  death: Promise<void> | null;
}

function newColoPair(primary: AgentVm, secondary: AgentVm): ColoPair {
  let seen: () => void = () => {};
  const pair: ColoPair = { primary, secondary, inflight: null, exited: false, exitSeen: new Promise<void>((r) => { seen = r; }), death: null };
  // The secondary's progress through the checkpoint in flight is read here, for as long as the pair lives,
  // not only while coloCheckpoint waits: a primary killed right after it sent its state makes coloCheckpoint
  // reject at once (its QMP closed), while the secondary goes on loading that state and says RESUME later.
  // COLO_EXIT comes after that RESUME on the same connection, so by exitSeen the progress is final.
  const onEvent = (ev: QmpEvent) => {
    const progress = pair.inflight?.progress;
    if (ev.event === 'STOP') {
      if (progress) progress.secondaryStopped = true;
    } else if (ev.event === 'RESUME') {
      if (progress?.secondaryStopped) progress.secondaryResumed = true;
    } else if (ev.event === 'COLO_EXIT') {
      pair.exited = true;
      secondary.qmp.off('event', onEvent);
      seen();
    }
  };
  secondary.qmp.on('event', onEvent);
  return pair;
}

function pushSample(samples: number[], v: number): void {
  samples.push(v);
  if (samples.length > MAX_SAMPLES) samples.shift();
}

function round1(v: number): number {
  return Math.round(v * 10) / 10;
}

/** Starts the QEMU agent; it keeps (re)connecting to the bridge until `stop()`. */
export function runQemuAgent(options: QemuAgentOptions): QemuAgent {
  return new QmpQemuAgent(options);
}
