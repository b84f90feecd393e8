/**
 * `shadowvm run` with its data plane on a thread of its own. The main
 * thread keeps what outsiders talk to: the control socket and the metrics
 * server (and the signals, in run.ts). The data-plane thread (worker.ts)
 * keeps the ports, the pipeline, the agent link and the timers.
 *
 * Whatever control and metrics clients do, the data plane is asked for at
 * most one snapshot at a time, and one reused for SNAPSHOT_REUSE_MS: a flood
 * of `status` requests or scrapes costs it at most 1000 / SNAPSHOT_REUSE_MS
 * snapshots a second. Parsing requests, building replies, rendering
 * metrics, and slow or hostile connections cost only the main thread.
 *
 * If the data-plane thread dies, `exited` settles and run.ts exits non-zero
 * (systemd restarts the bridge). A thread that dies runs none of its own
 * stop: Node closes its handles and the addons their sockets, but the agent
 * socket's file stays, so the main thread removes it if nobody answers there
 * any more.
 *
 * `workers` > 1 (`run --workers N`): N data-plane threads, each on its shard
 * of the flows, and the main thread holds the agent link too, through the
 * coordinator (coordinator.ts) that makes checkpoints and role changes one
 * for all. `status` and the metrics show the workers' snapshots merged
 * (control/snapshot-merge.ts); a manual checkpoint or failover goes to
 * worker 0, whose barrier or role change the others join; `flows` lists the
 * newest of all workers'. Any worker that dies ends the process.
 */
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Worker } from 'node:worker_threads';
import { ControlSocket, ManualCheckpointResult, ManualFailoverResult } from '../control/control-socket';
import { LogFn, noLog } from '../control/logger';
import { MetricsServer, startMetricsServer } from '../control/metrics';
import type { BridgeSnapshot } from '../control/snapshot';
import { UserFacingError } from '../errors';
import type { FlowReport } from '../pipeline/shadow-flow';
import { AgentLink } from '../replicate/agent-client';
import { mergeSnapshots } from '../control/snapshot-merge';
import { clearStaleSocket } from '../control/unix-socket';
import { Coordinator } from './coordinator';
import type { DataPlaneInit, DataPlaneOp, FromDataPlane, ToDataPlane } from './protocol';

/** The data-plane thread's young generation (three semi-spaces' worth: 8 MiB ones). */
export const DATA_PLANE_YOUNG_GENERATION_MB = 24;

/** A snapshot this young is served again rather than asked for. */
export const SNAPSHOT_REUSE_MS = 20;
/** A call the data plane does not answer in this long fails (the control client gets an error). */
export const CALL_TIMEOUT_MS = 5000;
/** How long `stop` waits for the data plane to close its ports before ending the thread. */
export const STOP_WAIT_MS = 3000;

/** The data plane could not start (a port, the agent socket, the carrier watch): its message, one line. */
export class DataPlaneStartError extends UserFacingError {}

export interface ThreadedBridgeOptions {
  init: DataPlaneInit;
  /** Data-plane threads, each on its shard of the flows (default 1: one, as before, with the agent link on it). */
  workers?: number;
  controlSocket?: string;
  controlGroup?: { gid: number; name: string };
  metrics?: { host: string; port: number; allowRemote?: boolean };
  log?: LogFn;
  /** The worker's script (default: worker.js beside this file, as built in dist/). */
  workerScript?: string;
}

export interface DataPlaneCounters {
  calls: number;
  snapshots_taken: number;
  snapshots_shared: number;
  call_errors: number;
}

/**
 * The newest `limit` of several workers' flow lists (each oldest first; flows
 * carry no birth time): taken from their ends in turn, newest first, and
 * given back oldest first.
 */
export function newestOfEach<T>(lists: readonly (readonly T[])[], limit: number): T[] {
  const out: T[] = [];
  for (let back = 1; out.length < limit; back++) {
    let any = false;
    // Last worker first: reversed at the end, a round comes out in the workers' order.
    for (let w = lists.length - 1; w >= 0; w--) {
      const l = lists[w];
      if (l.length < back) continue;
      any = true;
      if (out.length < limit) out.push(l[l.length - back]);
    }
    if (!any) break;
  }
  return out.reverse();
}

/** How often the coordinator's timeouts are checked. */
const COORDINATOR_TICK_MS = 10;

export class ThreadedBridge {
  readonly counters: DataPlaneCounters = { calls: 0, snapshots_taken: 0, snapshots_shared: 0, call_errors: 0 };
  /** Settles when every data-plane thread has ended, for whatever reason (with the first non-zero code, if any). */
  readonly exited: Promise<number>;
  /** Settles only if a data-plane thread ends without being asked to (a crash). */
  readonly died: Promise<number>;
  private onDied: ((code: number) => void) | null = null;
  private readonly log: LogFn;
  private readonly workers: Worker[] = [];
  /** `workers` > 1: the agent link and the barriers are the main thread's. */
  private readonly coordinator: Coordinator | null = null;
  private agent: AgentLink | null = null;
  private coordinatorTimer: NodeJS.Timeout | null = null;
  private control: ControlSocket | null = null;
  private metrics: MetricsServer | null = null;
  private nextId = 1;
  private readonly pending = new Map<number, { worker: number; resolve(json: string): void; reject(e: Error): void; timer: NodeJS.Timeout }>();
  private lastSnapshot: { atMs: number; value: BridgeSnapshot } | null = null;
  private snapshotInFlight: Promise<BridgeSnapshot> | null = null;
  private stopping = false;
  /** Per worker: its start message, once it came. */
  private readonly startMessages: (FromDataPlane | null)[] = [];
  private onStartMessage: (() => void) | null = null;
  private readonly stoppedWorkers = new Set<number>();
  private onStopped: (() => void) | null = null;

  constructor(private readonly options: ThreadedBridgeOptions) {
    this.log = options.log ?? noLog;
    const count = options.workers ?? 1;
    const init = options.init;
    if (count > 1) {
      this.coordinator = new Coordinator({
        workers: count,
        post: (i, m) => this.post(i, { type: 'coord', m }),
        checkpointTimeoutMs: init.config.replicator.checkpointTimeoutMs,
        reprotectTimeoutMs: init.config.replicator.reprotectTimeoutMs,
        log: this.log,
      });
      if (init.agentSocket) {
        this.agent = new AgentLink({ socketPath: init.agentSocket, name: init.name, log: this.log }, this.coordinator.listener);
        this.coordinator.attach(this.agent);
      }
    }
    const exits: Promise<number>[] = [];
    this.died = new Promise((resolve) => { this.onDied = resolve; });
    for (let index = 0; index < count; index++) {
      const workerInit: DataPlaneInit = count === 1 ? init : {
        ...init,
        shard: { count, index },
        // The main thread holds the agent socket; worker 0 keeps the roles file.
        agentSocket: undefined,
        roles: index === 0 ? init.roles : undefined,
        // One worker applies the realtime policy's helpers; each data-plane thread its own policy.
        helperTids: index === 0 ? init.helperTids : [],
      };
      const worker = new Worker(options.workerScript ?? join(__dirname, 'worker.js'), {
        workerData: workerInit,
        // A young generation of 8 MiB semi-spaces: V8 lets it grow to 16 MiB ones, resident once a flood of flows
        // has filled them. No cost per frame in bench/pipeline (1,447-1,480 ns against 1,315-1,593 ns).
        resourceLimits: { maxYoungGenerationSizeMb: DATA_PLANE_YOUNG_GENERATION_MB },
      });
      this.workers.push(worker);
      this.startMessages.push(null);
      worker.on('message', (m: FromDataPlane) => this.onMessage(index, m));
      worker.on('error', (e) => {
        this.log('error', 'data-plane-failed', { ...(count > 1 ? { worker: index } : {}), error: e.message, stack: e.stack?.split('\n').slice(0, 6).join(' | ') });
      });
      exits.push(new Promise((resolve) => worker.once('exit', (code) => {
        for (const [id, p] of this.pending) {
          if (p.worker !== index) continue;
          clearTimeout(p.timer);
          this.pending.delete(id);
          p.reject(new Error('the data plane has stopped'));
        }
        if (!this.startMessages[index]) {
          this.startMessages[index] = { type: 'start-failed', message: `the data-plane thread exited (${code}) while starting`, userFacing: false };
          this.onStartMessage?.();
        }
        this.stoppedWorkers.add(index);
        if (this.stoppedWorkers.size === count) this.onStopped?.();
        // One worker listens on the agent socket itself once started (more: the main thread does, and closes it at stop).
        const started = this.startMessages[index]?.type === 'started';
        const leftBehind = !this.stopping && started && count === 1 && init.agentSocket ? this.removeStaleAgentSocket(init.agentSocket) : null;
        if (!this.stopping) {
          this.log('error', 'data-plane-exited', { ...(count > 1 ? { worker: index } : {}), code });
          this.onDied?.(code);
        }
        // `exited` (which stop awaits, and run.ts's exit after it) waits for the file to go.
        if (leftBehind) void leftBehind.then(() => resolve(code));
        else resolve(code);
      })));
    }
    this.exited = Promise.all(exits).then((codes) => codes.find((c) => c !== 0) ?? 0);
  }

  /** Starts the data plane, then opens the control socket and the metrics server. Nothing is left running if it fails. */
  async start(): Promise<void> {
    await new Promise<void>((resolve) => {
      const check = () => { if (this.startMessages.every((m) => m !== null)) resolve(); };
      this.onStartMessage = check;
      check();
    });
    this.onStartMessage = null;
    const failed = this.startMessages.find((m) => m!.type !== 'started');
    if (failed) {
      this.stopping = true; // its end is the failure reported here, not a crash
      await Promise.all(this.workers.map((w) => w.terminate().catch(() => 0)));
      const message = failed.type === 'start-failed' ? failed.message : 'the data plane did not start';
      throw failed.type === 'start-failed' && failed.userFacing ? new DataPlaneStartError(message) : new Error(message);
    }
    const o = this.options;
    try {
      if (this.agent) await this.agent.listen();
      if (this.coordinator) {
        const c = this.coordinator;
        this.coordinatorTimer = setInterval(() => c.tick(), COORDINATOR_TICK_MS);
      }
      if (o.controlSocket) {
        this.control = new ControlSocket({
          path: o.controlSocket,
          group: o.controlGroup,
          log: this.log,
          handlers: {
            status: () => this.snapshot(),
            checkpoint: async () => JSON.parse(await this.call(0, 'checkpoint')) as ManualCheckpointResult,
            failover: async () => JSON.parse(await this.call(0, 'failover')) as ManualFailoverResult,
            flows: (limit, match) => this.flows(limit, match),
          },
        });
        await this.control.listen();
      }
      if (o.metrics) this.metrics = await startMetricsServer(o.metrics.host, o.metrics.port, () => this.snapshot(), { allowRemote: o.metrics.allowRemote, log: this.log });
    } catch (e) {
      await this.stop();
      throw e;
    }
    const threadIds = this.workers.map((w) => w.threadId);
    this.log('info', 'data-plane-thread', { threadId: threadIds[0], ...(threadIds.length > 1 ? { workers: threadIds.length, threadIds } : {}), note: 'ports, pipeline and agent link on their own thread; control and metrics on the main thread' });
    // Only now is every socket open: what waits for `started` may use them all.
    const i = o.init;
    this.log('info', 'started', { name: i.name, uplink: i.ports.uplink, primary: i.ports.primary, backup: i.ports.backup, agentSocket: i.agentSocket ?? null, controlSocket: o.controlSocket ?? null, metrics: o.metrics ? `${o.metrics.host}:${o.metrics.port}` : null, workers: this.workers.length });
  }

  /**
   * The data plane's snapshot with the main thread's own components. One in
   * flight at a time; one younger than SNAPSHOT_REUSE_MS is served again.
   */
  async snapshot(): Promise<BridgeSnapshot> {
    const fresh = this.lastSnapshot && performance.now() - this.lastSnapshot.atMs < SNAPSHOT_REUSE_MS ? this.lastSnapshot.value : null;
    let value: BridgeSnapshot;
    if (fresh) {
      this.counters.snapshots_shared++;
      value = fresh;
    } else if (this.snapshotInFlight) {
      this.counters.snapshots_shared++;
      value = await this.snapshotInFlight;
    } else {
      this.counters.snapshots_taken++;
      this.snapshotInFlight = this.takeSnapshot();
      try {
        value = await this.snapshotInFlight;
        this.lastSnapshot = { atMs: performance.now(), value };
      } finally {
        this.snapshotInFlight = null;
      }
    }
    return {
      ...value,
      components: {
        ...value.components,
        data_plane_thread: { ...this.counters },
        ...(this.coordinator ? { workers_coordinator: { ...this.coordinator.counters } } : {}),
        ...(this.agent ? { agent_link: { ...this.agent.counters } } : {}),
        ...(this.control ? { control_socket: { ...this.control.counters } } : {}),
        ...(this.metrics ? { metrics_server: { ...this.metrics.counters } } : {}),
      },
    };
  }

  private async takeSnapshot(): Promise<BridgeSnapshot> {
    const parts = await Promise.all(this.workers.map((_, i) => this.call(i, 'snapshot').then((json) => JSON.parse(json) as BridgeSnapshot)));
    if (parts.length === 1) return parts[0];
    // A barrier is one checkpoint asked of the agent, however many workers asked for it.
    const merged = mergeSnapshots(parts, this.coordinator ? { requested: this.coordinator.checkpointsRequested } : {});
    // The workers' relays know the agent only by what the coordinator told them: the link itself is here.
    return this.agent ? { ...merged, agent: this.agent.snapshot() } : merged;
  }

  /** The newest `limit` flows (those whose key holds `match`) of every worker, oldest first. */
  private async flows(limit: number, match?: string): Promise<FlowReport[]> {
    const parts = await Promise.all(this.workers.map((_, i) => this.call(i, 'flows', { limit, match }).then((json) => JSON.parse(json) as FlowReport[])));
    if (parts.length === 1) return parts[0];
    return newestOfEach(parts, limit);
  }

  /** Closes the control socket and the metrics server, then stops the data plane (ports closed), bounded. Idempotent. */
  async stop(): Promise<void> {
    if (this.stopping) return this.exited.then(() => undefined);
    this.stopping = true;
    if (this.coordinatorTimer) clearInterval(this.coordinatorTimer);
    await Promise.allSettled([this.control?.close(), this.metrics?.close(), this.agent?.close()]);
    const stopped = new Promise<void>((resolve) => {
      this.onStopped = resolve;
      if (this.stoppedWorkers.size === this.workers.length) resolve();
    });
    for (let i = 0; i < this.workers.length; i++) if (!this.stoppedWorkers.has(i)) this.post(i, { type: 'stop' });
    const timer = setTimeout(() => {
      this.log('warn', 'data-plane-stop-slow', { waitedMs: STOP_WAIT_MS, note: 'ending the thread' });
      for (const w of this.workers) void w.terminate();
    }, STOP_WAIT_MS);
    await stopped;
    clearTimeout(timer);
    await this.exited;
  }

  /** The agent socket's file, left by a data-plane thread that died, unless another process listens there now. */
  private async removeStaleAgentSocket(path: string): Promise<void> {
    try {
      await clearStaleSocket(path, 'agent socket');
    } catch (e) {
      this.log('warn', 'agent-socket-left', { path, error: (e as Error).message });
    }
  }

  private call(worker: number, op: DataPlaneOp, args: { limit?: number; match?: string } = {}): Promise<string> {
    if (this.stopping) return Promise.reject(new Error('the bridge is stopping'));
    const id = this.nextId++;
    this.counters.calls++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        this.counters.call_errors++;
        reject(new Error(`the data plane did not answer ${op} within ${CALL_TIMEOUT_MS} ms`));
      }, CALL_TIMEOUT_MS);
      this.pending.set(id, { worker, resolve, reject, timer });
      this.post(worker, { type: 'call', id, op, ...args });
    });
  }

  private post(worker: number, m: ToDataPlane): void {
    if (this.stoppedWorkers.has(worker)) return;
    this.workers[worker].postMessage(m);
  }

  private onMessage(worker: number, m: FromDataPlane): void {
    switch (m.type) {
      case 'started':
      case 'start-failed':
        this.startMessages[worker] = m;
        this.onStartMessage?.();
        return;
      case 'stopped':
        return; // its exit follows
      case 'coord':
        this.coordinator?.fromWorker(worker, m.m);
        return;
      case 'reply': {
        const p = this.pending.get(m.id);
        if (!p) return; // timed out already
        this.pending.delete(m.id);
        clearTimeout(p.timer);
        if (m.ok) p.resolve(m.json);
        else {
          this.counters.call_errors++;
          p.reject(new Error(m.error));
        }
      }
    }
  }
}
