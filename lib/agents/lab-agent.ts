/**
 * The lab agent: a sync agent that moves no state. It speaks protocol v1 to
 * the bridge so the bridge's checkpoint path can run for real in the netns
 * lab and in tests, where primary and backup are processes that answer alike
 * without help.
 *
 *   bridge ──checkpoint──► lab agent ──(after delayMs)──► checkpoint-done / checkpoint-failed
 *                          lab agent ──every heartbeatMs──► heartbeat (primary, backup)
 *
 * The connection (reconnects, hello, heartbeats, malformed lines) is the
 * shared AgentSession's.
 */
import { UserFacingError } from '../errors';
import { LogFn, noLog } from '../control/logger';
import { CheckpointMessage, ParsedAgentMessage, ReprotectMessage, VmLiveness } from '../replicate/agent-protocol';
import { AgentSession } from './agent-session';

export interface LabAgentOptions {
  /** The bridge's agent socket. */
  socketPath: string;
  /** Sent in `hello`; default "lab-agent". */
  name?: string;
  /** How long a checkpoint "takes"; default 0. */
  delayMs?: number;
  /** Fraction of checkpoints answered with `checkpoint-failed` (0: none, 1: all, the `--fail` mode). Default 0. */
  failFraction?: number;
  /** The `error` text of a failed checkpoint. */
  failError?: string;
  /** `bytes` reported in `checkpoint-done`; default 0 (nothing moves). */
  bytesPerCheckpoint?: number;
  /** Heartbeat period; default 1000 ms. */
  heartbeatMs?: number;
  /** First reconnect delay; default 100 ms, doubling up to `reconnectMaxMs` (default 5000 ms). */
  reconnectInitialMs?: number;
  reconnectMaxMs?: number;
  /**
   * Re-protection: builds a new backup in the dead replica's place (`port`:
   * the bridge port of the dead replica, when the bridge says it). The agent
   * answers the `reprotect` with `checkpoint-done` once it resolves, with
   * `checkpoint-failed` if it rejects. Absent: answered at once (nothing to
   * rebuild when nothing died for real).
   */
  rebuildBackup?: (port: string | undefined) => Promise<void>;
  /** In [0, 1): decides which checkpoints fail; default Math.random. */
  random?: () => number;
  log?: LogFn;
}

export interface LabAgentStats {
  /** Sessions in which the bridge said hello. */
  sessions: number;
  connectAttempts: number;
  checkpoints: number;
  done: number;
  failed: number;
  heartbeats: number;
  reprotects: number;
  protocolErrors: number;
  /** `error` messages the bridge sent us. */
  errorsFromBridge: number;
}

export interface LabAgent {
  readonly stats: LabAgentStats;
  /** Whether the bridge has said hello on the current connection. */
  readonly connected: boolean;
  /** What heartbeats report from now on (the netns lab uses it to simulate a dead VM). */
  setLiveness(primary: VmLiveness, backup: VmLiveness): void;
  /** Sends `primary-down` or `backup-down` now; false if not connected. */
  reportDown(which: 'primary' | 'backup', reason: string): boolean;
  /** Disconnects and stops reconnecting. */
  stop(): Promise<void>;
}

class SocketLabAgent implements LabAgent {
  private readonly counts = { checkpoints: 0, done: 0, failed: 0, reprotects: 0 };
  private readonly session: AgentSession;
  /** Checkpoints being "made" on the current connection. */
  private readonly answers = new Set<NodeJS.Timeout>();
  private liveness: { primary: VmLiveness; backup: VmLiveness } = { primary: 'up', backup: 'up' };
  private readonly log: LogFn;

  constructor(private readonly o: Required<Omit<LabAgentOptions, 'log' | 'rebuildBackup'>> & Pick<LabAgentOptions, 'rebuildBackup'> & { log: LogFn }) {
    this.log = o.log;
    // A v1 agent: it never moves the backup, so it has nothing of v2 to say.
    this.session = new AgentSession({
      socketPath: o.socketPath, name: o.name, version: 1, heartbeatMs: o.heartbeatMs,
      reconnectInitialMs: o.reconnectInitialMs, reconnectMaxMs: o.reconnectMaxMs, logPrefix: 'lab-agent', log: o.log,
    }, {
      message: (msg) => this.receive(msg),
      liveness: () => this.liveness,
      sessionEnded: () => {
        for (const t of this.answers) clearTimeout(t);
        this.answers.clear();
      },
    });
  }

  get stats(): LabAgentStats {
    return { ...this.session.stats, ...this.counts };
  }

  get connected(): boolean {
    return this.session.connected;
  }

  setLiveness(primary: VmLiveness, backup: VmLiveness): void {
    this.liveness = { primary, backup };
  }

  reportDown(which: 'primary' | 'backup', reason: string): boolean {
    if (!this.connected) return false;
    this.session.send(which === 'primary' ? { type: 'primary-down', reason } : { type: 'backup-down', reason });
    return true;
  }

  stop(): Promise<void> {
    return this.session.stop();
  }

  private receive(msg: ParsedAgentMessage): void {
    switch (msg.type) {
      case 'checkpoint':
        this.checkpoint(msg);
        return;
      case 'failover':
        this.log('info', 'lab-agent-failover', { epoch: msg.epoch, survivor: msg.survivor });
        return;
      case 'reprotect':
        this.reprotect(msg);
        return;
      default:
        return;
    }
  }

  private reprotect(msg: ReprotectMessage): void {
    const started = performance.now();
    this.log('info', 'lab-agent-reprotect', { epoch: msg.epoch, backup: msg.backup });
    const rebuild = this.o.rebuildBackup ? this.o.rebuildBackup(msg.backup) : Promise.resolve();
    rebuild.then(
      () => {
        this.counts.reprotects++;
        this.session.send({ type: 'checkpoint-done', epoch: msg.epoch, ms: Math.round((performance.now() - started) * 1000) / 1000, bytes: 0 });
      },
      (e: Error) => {
        this.counts.failed++;
        this.log('warn', 'lab-agent-reprotect-failed', { epoch: msg.epoch, error: e.message });
        this.session.send({ type: 'checkpoint-failed', epoch: msg.epoch, error: `rebuilding the backup failed: ${e.message}` });
      },
    );
  }

  private checkpoint(msg: CheckpointMessage): void {
    this.counts.checkpoints++;
    const started = performance.now();
    const fail = this.o.failFraction > 0 && this.o.random() < this.o.failFraction;
    const timer = setTimeout(() => {
      this.answers.delete(timer);
      const ms = Math.round((performance.now() - started) * 1000) / 1000;
      if (fail) {
        this.counts.failed++;
        this.session.send({ type: 'checkpoint-failed', epoch: msg.epoch, error: this.o.failError });
      } else {
        this.counts.done++;
        this.session.send({ type: 'checkpoint-done', epoch: msg.epoch, ms, bytes: this.o.bytesPerCheckpoint });
      }
    }, this.o.delayMs);
    this.answers.add(timer);
  }
}

/** Option values a CLI or test may pass in wrong: a typed complaint. */
export class LabAgentOptionError extends UserFacingError {
  constructor(readonly option: string, readonly detail: string) {
    super(`lab agent: ${option} ${detail}`);
    this.name = 'LabAgentOptionError';
  }
}

export const DEFAULT_LAB_AGENT_OPTIONS = {
  name: 'lab-agent',
  delayMs: 0,
  failFraction: 0,
  failError: 'lab agent: failure requested (--fail)',
  bytesPerCheckpoint: 0,
  heartbeatMs: 1000,
  reconnectInitialMs: 100,
  reconnectMaxMs: 5000,
} as const;

/** Starts the lab agent; it keeps (re)connecting to the bridge until `stop()`. */
export function runLabAgent(options: LabAgentOptions): LabAgent {
  const o = { ...DEFAULT_LAB_AGENT_OPTIONS, random: Math.random, log: noLog, ...stripUndefined(options) };
  if (!(o.delayMs >= 0)) throw new LabAgentOptionError('delayMs', 'must be zero or positive');
  if (!(o.failFraction >= 0 && o.failFraction <= 1)) throw new LabAgentOptionError('failFraction', 'must be between 0 and 1');
  if (!(o.heartbeatMs > 0)) throw new LabAgentOptionError('heartbeatMs', 'must be positive');
  if (!(o.reconnectInitialMs > 0 && o.reconnectMaxMs >= o.reconnectInitialMs)) {
    throw new LabAgentOptionError('reconnectInitialMs', 'must be positive and no larger than reconnectMaxMs');
  }
  if (!(Number.isSafeInteger(o.bytesPerCheckpoint) && o.bytesPerCheckpoint >= 0)) throw new LabAgentOptionError('bytesPerCheckpoint', 'must be a non-negative integer');
  return new SocketLabAgent(o);
}

function stripUndefined<T extends object>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T;
}
