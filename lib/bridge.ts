/**
 * Bridge: wiring only. Owns the three ports, the pipeline, the agent link,
 * the control socket and the metrics server, and moves frames between them.
 *
 *   uplink  ──► pipeline.fromClient ──► primary, backup
 *   primary ──► pipeline.fromVm ─────► uplink (when agreed)
 *   backup  ──► pipeline.fromVm ─────► (never the uplink)
 *   agent   ◄── checkpoint requests;  checkpoint-done/-failed ──► pipeline
 *
 * One breath: a port delivers a batch, every frame goes through the
 * pipeline, then all ports are flushed once and the pipeline may reuse the
 * memory of what was released. Timers (checkpoint timeouts, unmatched age,
 * flow expiry) run every TICK_MS.
 */
import { PacketPort, ReceivedFrame } from './io/port';
import { PRIMARY, BACKUP } from './compare/tcp-stream';
import { PipelineConfig } from './pipeline/config';
import { ShadowPipeline } from './pipeline/pipeline';
import { AgentLink } from './replicate/agent-client';
import { ControlSocket } from './control/control-socket';
import { MetricsServer, startMetricsServer } from './control/metrics';
import { BridgeSnapshot, PortRole, emptyAgentSnapshot, snapshotOf } from './control/snapshot';
import { LogFn, noLog } from './control/logger';

export interface BridgePorts {
  uplink: PacketPort;
  primary: PacketPort;
  backup: PacketPort;
}

export interface BridgeOptions {
  name: string;
  config: PipelineConfig;
  /** UNIX socket the sync agent connects to; none: DEGRADED (primary output unchecked). */
  agentSocket?: string;
  controlSocket?: string;
  metrics?: { host: string; port: number; allowRemote?: boolean };
  log?: LogFn;
  /** Microseconds since the epoch (tests may drive time). */
  clockUs?: () => number;
}

export const TICK_MS = 10;

export class Bridge {
  readonly pipeline: ShadowPipeline;
  private readonly log: LogFn;
  private readonly clockUs: () => number;
  private readonly startedMs = Date.now();
  private agent: AgentLink | null = null;
  private control: ControlSocket | null = null;
  private metrics: MetricsServer | null = null;
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;

  constructor(private readonly ports: BridgePorts, private readonly options: BridgeOptions) {
    this.log = options.log ?? noLog;
    this.clockUs = options.clockUs ?? (() => Date.now() * 1000);
    const { uplink, primary, backup } = ports;
    this.pipeline = new ShadowPipeline(options.config, {
      toReplica: (slot, f, vnet) => (slot === 0 ? primary : backup).send(f, vnet),
      toClient: (f, vnet) => uplink.send(f, vnet),
      sendCheckpoint: (req) => {
        if (!this.agent?.sendCheckpoint(req)) this.log('warn', 'checkpoint-not-sent', { epoch: req.epoch, why: 'no agent connected' });
      },
      log: (level, event, fields) => this.log(level, event, fields),
    }, this.clockUs(), false);
  }

  /** Opens the sockets and starts moving frames. Nothing is left open if it fails. */
  async start(): Promise<void> {
    const o = this.options;
    try {
      if (o.agentSocket) {
        this.agent = new AgentLink({ socketPath: o.agentSocket, name: o.name, log: this.log }, {
          connected: (hello) => {
            this.log('info', 'agent-connected', { agent: hello.name });
            this.afterEvent(() => this.pipeline.agentConnected(true, this.clockUs()));
          },
          disconnected: (why) => {
            this.log('warn', 'agent-disconnected', { why });
            this.afterEvent(() => this.pipeline.agentConnected(false, this.clockUs()));
          },
          checkpointDone: (m) => this.afterEvent(() => this.pipeline.checkpointDone(m.epoch, this.clockUs(), m.ms)),
          checkpointFailed: (m) => this.afterEvent(() => this.pipeline.checkpointFailed(m.epoch, m.error, this.clockUs())),
        });
        await this.agent.listen();
      }
      if (o.controlSocket) {
        this.control = new ControlSocket({
          path: o.controlSocket,
          log: this.log,
          handlers: {
            status: () => this.snapshot(),
            checkpoint: () => {
              let requested = false;
              this.afterEvent(() => { requested = this.pipeline.request('manual', undefined, this.clockUs()); });
              const r = this.pipeline.replicator;
              return { requested, epoch: r.epoch, state: r.state, ...(requested ? {} : { note: `not sent: state ${r.state}` }) };
            },
            flows: (limit) => {
              this.pipeline.syncReports();
              return this.pipeline.reports.slice(-limit);
            },
          },
        });
        await this.control.listen();
      }
      if (o.metrics) this.metrics = await startMetricsServer(o.metrics.host, o.metrics.port, () => this.snapshot(), { allowRemote: o.metrics.allowRemote });
    } catch (e) {
      await this.stop();
      throw e;
    }
    const { uplink, primary, backup } = this.ports;
    uplink.onBatch((frames) => this.breath(frames, (f) => this.pipeline.fromClient(f.frame, f.timeUs, f.vnet)));
    primary.onBatch((frames) => this.breath(frames, (f) => this.pipeline.fromVm(PRIMARY, f.frame, f.timeUs, f.vnet)));
    backup.onBatch((frames) => this.breath(frames, (f) => this.pipeline.fromVm(BACKUP, f.frame, f.timeUs, f.vnet)));
    this.timer = setInterval(() => this.afterEvent(() => this.pipeline.tick(this.clockUs())), TICK_MS);
    this.timer.unref?.();
    this.log('info', 'started', { name: o.name, uplink: uplink.name, primary: primary.name, backup: backup.name, agentSocket: o.agentSocket ?? null });
  }

  /** Stops timers and sockets and closes the ports. Idempotent. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    await Promise.allSettled([this.agent?.close(), this.control?.close(), this.metrics?.close()]);
    await Promise.allSettled([this.ports.uplink.close(), this.ports.primary.close(), this.ports.backup.close()]);
    this.log('info', 'stopped', { name: this.options.name });
  }

  snapshot(): BridgeSnapshot {
    const roles: [PortRole, PacketPort][] = [['uplink', this.ports.uplink], ['primary', this.ports.primary], ['backup', this.ports.backup]];
    return snapshotOf(this.pipeline, {
      name: this.options.name,
      startedMs: this.startedMs,
      nowMs: Date.now(),
      ports: roles.map(([role, port]) => ({ role, name: port.name, ...port.stats() })),
      agent: this.agent ? this.agent.snapshot() : emptyAgentSnapshot(),
    });
  }

  private breath(frames: readonly ReceivedFrame[], each: (f: ReceivedFrame) => void): void {
    for (let i = 0; i < frames.length; i++) each(frames[i]);
    this.flushAll();
  }

  /** Anything that may release frames outside a breath (timers, agent answers) flushes afterwards. */
  private afterEvent(fn: () => void): void {
    fn();
    this.flushAll();
  }

  private flushAll(): void {
    this.ports.uplink.flush();
    this.ports.primary.flush();
    this.ports.backup.flush();
    this.pipeline.endBreath();
  }
}
