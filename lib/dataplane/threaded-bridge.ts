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
 * (systemd restarts the bridge).
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

export class ThreadedBridge {
  readonly counters: DataPlaneCounters = { calls: 0, snapshots_taken: 0, snapshots_shared: 0, call_errors: 0 };
  /** Settles with the thread's exit code when the data-plane thread ends, for whatever reason. */
  readonly exited: Promise<number>;
  /** Settles only if the data-plane thread ends without being asked to (a crash). */
  readonly died: Promise<number>;
  private onDied: ((code: number) => void) | null = null;
  private readonly log: LogFn;
  private readonly worker: Worker;
  private control: ControlSocket | null = null;
  private metrics: MetricsServer | null = null;
  private nextId = 1;
  private readonly pending = new Map<number, { resolve(json: string): void; reject(e: Error): void; timer: NodeJS.Timeout }>();
  private lastSnapshot: { atMs: number; value: BridgeSnapshot } | null = null;
  private snapshotInFlight: Promise<BridgeSnapshot> | null = null;
  private stopping = false;
  private onStarted: ((m: FromDataPlane) => void) | null = null;
  /** The start message, if it came before `start` listened for it. */
  private early: FromDataPlane | null = null;
  private onStopped: (() => void) | null = null;

  constructor(private readonly options: ThreadedBridgeOptions) {
    this.log = options.log ?? noLog;
    this.worker = new Worker(options.workerScript ?? join(__dirname, 'worker.js'), {
      workerData: options.init,
      // A young generation of 8 MiB semi-spaces: V8 lets it grow to 16 MiB ones, resident once a flood of flows
      // has filled them. No cost per frame in bench/pipeline (1,447-1,480 ns against 1,315-1,593 ns).
      resourceLimits: { maxYoungGenerationSizeMb: DATA_PLANE_YOUNG_GENERATION_MB },
    });
    this.worker.on('message', (m: FromDataPlane) => this.onMessage(m));
    this.worker.on('error', (e) => {
      this.log('error', 'data-plane-failed', { error: e.message, stack: e.stack?.split('\n').slice(0, 6).join(' | ') });
    });
    this.died = new Promise((resolve) => { this.onDied = resolve; });
    this.exited = new Promise((resolve) => this.worker.once('exit', (code) => {
      for (const [, p] of this.pending) {
        clearTimeout(p.timer);
        p.reject(new Error('the data plane has stopped'));
      }
      this.pending.clear();
      this.onStarted?.({ type: 'start-failed', message: `the data-plane thread exited (${code}) while starting`, userFacing: false });
      this.onStopped?.();
      if (!this.stopping) {
        this.log('error', 'data-plane-exited', { code });
        this.onDied?.(code);
      }
      resolve(code);
    }));
  }

  /** Starts the data plane, then opens the control socket and the metrics server. Nothing is left running if it fails. */
  async start(): Promise<void> {
    const first = this.early ?? await new Promise<FromDataPlane>((resolve) => { this.onStarted = resolve; });
    this.onStarted = null;
    if (first.type !== 'started') {
      this.stopping = true; // its end is the failure reported here, not a crash
      await this.worker.terminate().catch(() => 0);
      const message = first.type === 'start-failed' ? first.message : 'the data plane did not start';
      throw first.type === 'start-failed' && first.userFacing ? new DataPlaneStartError(message) : new Error(message);
    }
    const o = this.options;
    try {
      if (o.controlSocket) {
        this.control = new ControlSocket({
          path: o.controlSocket,
          group: o.controlGroup,
          log: this.log,
          handlers: {
            status: () => this.snapshot(),
            checkpoint: async () => JSON.parse(await this.call('checkpoint')) as ManualCheckpointResult,
            failover: async () => JSON.parse(await this.call('failover')) as ManualFailoverResult,
            flows: async (limit, match) => JSON.parse(await this.call('flows', { limit, match })) as FlowReport[],
          },
        });
        await this.control.listen();
      }
      if (o.metrics) this.metrics = await startMetricsServer(o.metrics.host, o.metrics.port, () => this.snapshot(), { allowRemote: o.metrics.allowRemote, log: this.log });
    } catch (e) {
      await this.stop();
      throw e;
    }
    this.log('info', 'data-plane-thread', { threadId: this.worker.threadId, note: 'ports, pipeline and agent link on their own thread; control and metrics on the main thread' });
    // Only now is every socket open: what waits for `started` may use them all.
    const i = o.init;
    this.log('info', 'started', { name: i.name, uplink: i.ports.uplink, primary: i.ports.primary, backup: i.ports.backup, agentSocket: i.agentSocket ?? null, controlSocket: o.controlSocket ?? null, metrics: o.metrics ? `${o.metrics.host}:${o.metrics.port}` : null });
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
      this.snapshotInFlight = this.call('snapshot').then((json) => JSON.parse(json) as BridgeSnapshot);
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
        ...(this.control ? { control_socket: { ...this.control.counters } } : {}),
        ...(this.metrics ? { metrics_server: { ...this.metrics.counters } } : {}),
      },
    };
  }

  /** Closes the control socket and the metrics server, then stops the data plane (ports closed), bounded. Idempotent. */
  async stop(): Promise<void> {
    if (this.stopping) return this.exited.then(() => undefined);
    this.stopping = true;
    await Promise.allSettled([this.control?.close(), this.metrics?.close()]);
    const stopped = new Promise<void>((resolve) => { this.onStopped = resolve; });
    this.post({ type: 'stop' });
    const timer = setTimeout(() => {
      this.log('warn', 'data-plane-stop-slow', { waitedMs: STOP_WAIT_MS, note: 'ending the thread' });
      void this.worker.terminate();
    }, STOP_WAIT_MS);
    await stopped;
    clearTimeout(timer);
    await this.exited;
  }

  private call(op: DataPlaneOp, args: { limit?: number; match?: string } = {}): Promise<string> {
    if (this.stopping) return Promise.reject(new Error('the bridge is stopping'));
    const id = this.nextId++;
    this.counters.calls++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        this.counters.call_errors++;
        reject(new Error(`the data plane did not answer ${op} within ${CALL_TIMEOUT_MS} ms`));
      }, CALL_TIMEOUT_MS);
      this.pending.set(id, { resolve, reject, timer });
      this.post({ type: 'call', id, op, ...args });
    });
  }

  private post(m: ToDataPlane): void {
    this.worker.postMessage(m);
  }

  private onMessage(m: FromDataPlane): void {
    switch (m.type) {
      case 'started':
      case 'start-failed':
        if (this.onStarted) this.onStarted(m);
        else this.early = m;
        return;
      case 'stopped':
        this.onStopped?.();
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
