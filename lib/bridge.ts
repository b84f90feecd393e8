/**
 * Bridge: wiring only. Owns the three ports, the pipeline, the agent link,
 * the control socket and the metrics server, and moves frames between them.
 *
 *   uplink  ──► pipeline.fromClient ──► primary, backup
 *   primary ──► pipeline.fromVm ─────► uplink (when agreed)
 *   backup  ──► pipeline.fromVm ─────► (never the uplink)
 *   agent   ◄── checkpoint requests;  checkpoint-done/-failed ──► pipeline
 *   agent   ──► primary-down / backup-down ──► pipeline.failoverNow / backupLost
 *   netlink ──► carrier of each VM port (held `carrierHoldMs`) ──► failoverNow / backupLost
 *
 * The two VM ports are replica slots; which one is primary is the
 * pipeline's ReplicaSet's business, so after a failover nothing here changes
 * but the roles.
 *
 * One breath: a port delivers a batch, every frame goes through the
 * pipeline, then all ports are flushed once and the pipeline may reuse the
 * memory of what was released. Timers (checkpoint timeouts, unmatched age,
 * flow expiry) run every TICK_MS.
 */
import type { DataPlaneScheduling } from './dataplane/scheduling';
import { FRAME_WAIT_STALL_US, FrameWait, wallClockUs } from './io/frame-wait';
import { StallCauses, StallRecord, threadSelfView } from './io/stall-causes';
import { MemoryGiveBack, fullCollection } from './control/give-back';
import { readFileSync } from 'node:fs';
import { PacketPort, ReceivedFrame, ringBytes } from './io/port';
import { PipelineConfig } from './pipeline/config';
import { FailoverCause, FailoverDecision, ShadowPipeline, StageEvent } from './pipeline/pipeline';
import type { FlowReport } from './pipeline/shadow-flow';
import { AgentLink, AgentLinkLike, AgentLinkListener } from './replicate/agent-client';
import type { AgentRequestKind, CheckpointReason } from './replicate/replicator';
import type { CheckpointDoneMessage } from './replicate/agent-protocol';
import { ControlSocket, ManualCheckpointResult, ManualFailoverResult } from './control/control-socket';
import { MetricsServer, startMetricsServer } from './control/metrics';
import { BridgeSnapshot, PortRole, emptyAgentSnapshot, snapshotOf } from './control/snapshot';
import { LogFn, noLog } from './control/logger';
import { CarrierDebouncer } from './failover/liveness';
import { monotonicUs } from './clock';
import { SlotId, SLOT_IDS } from './failover/roles';

/** The carrier of an interface as the kernel has it now (sysfs); null when unknown (no such interface, no sysfs). */
function carrierNow(ifname: string): boolean | null {
  try {
    return readFileSync(`/sys/class/net/${ifname}/carrier`, 'utf8').trim() === '1';
  } catch {
    return null;
  }
}

/** Carrier changes of interfaces (netlink RTNLGRP_LINK, see io/link-watch). */
export interface LinkEventSource {
  on(ifname: string, listener: (ev: { carrier: boolean; deleted: boolean; monoUs: number }) => void): () => void;
}


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
  /** A group whose members may use the control socket too (see ControlSocketOptions.group). */
  controlGroup?: { gid: number; name: string };
  metrics?: { host: string; port: number; allowRemote?: boolean };
  log?: LogFn;
  /** The data path's clock, µs (tests may drive time); default monotonic. */
  clockUs?: () => number;
  /** Carrier events of the VM ports: a lost carrier counts as a dead replica. */
  links?: LinkEventSource;
  /**
   * Opens a port on another interface, for agents that put each new backup
   * behind a fresh one (`checkpoint-done` with `port`, protocol v2). Without
   * it such a checkpoint fails.
   */
  openPort?: (ifname: string) => PacketPort | Promise<PacketPort>;
  /**
   * The full collection run when the flow table has shrunk well below its
   * peak (control/give-back.ts); default: the runtime's own, null: never.
   */
  collect?: (() => void) | null;
  /** The event logged once frames move (default `started`; the data-plane thread of `run` says `data-plane-started`, and its main thread `started` once its sockets listen too). */
  startedEvent?: string;
  /** How the data-plane thread is scheduled (run's --realtime), for status and metrics. */
  scheduling?: DataPlaneScheduling;
  /**
   * Told which interface holds each role whenever that changes (a failover,
   * a lost backup, a re-protection, the backup moved to a fresh tap): `run`
   * keeps it in a file, so that a restarted bridge finds the VMs where they
   * are now rather than where its config first put them.
   */
  onRoles?: (roles: BridgeRoles) => void;
  /** The backup slot starts with no VM behind it (why, for the log): it is a lost backup from the start, and the agent is asked for one. */
  noBackupAtStart?: string;
  /** How long an `openPort` that returns a promise may take before the checkpoint fails (default PORT_OPEN_TIMEOUT_MS). */
  portOpenTimeoutMs?: number;
  /**
   * The rate gate of inline sends (ports with `setInlineSends`: AF_PACKET
   * with a send thread and sendInlineFrames > 0): at each tick, inline sends
   * are stopped when the bridge took in more than this many frames a second
   * since the last tick, and allowed again after INLINE_QUIET_TICKS ticks
   * under it (50 ms). Light traffic then keeps the latency of sending on
   * the data plane (no hand-off); under load every send goes through the send
   * thread, so a busy peer's stack never runs on the data plane. Absent: the
   * ports' own setting, never changed.
   */
  inlineSendsMaxFps?: number;
  /**
   * The agent link, made by the caller instead of listening on
   * `agentSocket`: a data-plane worker of `run --workers` talks to the agent
   * through the main thread's coordinator (dataplane/relay-agent-link.ts).
   */
  agentLink?: (listener: AgentLinkListener) => AgentLinkLike;
  /** `run --workers`: this bridge is worker `index` of `count`, its ports taking that shard of the frames. */
  shard?: { count: number; index: number };
  /** Told every role change (failover, lost backup, re-protection) with the roles' generation after it: the coordinator of `run --workers` makes the other workers follow. */
  onRoleChange?: (ev: StageEvent, generation: number) => void;
}

/** Which interface holds each role now (`backup` null: none). */
export interface BridgeRoles { primary: string; backup: string | null }

export const TICK_MS = 10;
/** The inline-send gate opens again after this many quiet ticks in a row (it closes on one busy tick). */
export const INLINE_QUIET_TICKS = 5;
/** At most one `frame-wait-stall` log line this often. */
export const STALL_LOG_EVERY_US = 10_000_000;
/** A port opened for `checkpoint-done` that is not there by then fails the checkpoint (the agent's later words wait for it). */
export const PORT_OPEN_TIMEOUT_MS = 5000;

function openError(ifname: string, e: unknown): string {
  return `cannot open the new backup's port ${ifname}: ${(e as Error)?.message ?? String(e)}`;
}

export class Bridge {
  readonly pipeline: ShadowPipeline;
  private readonly log: LogFn;
  private readonly clockUs: () => number;
  private readonly startedMs = Date.now();
  private agent: AgentLinkLike | null = null;
  private control: ControlSocket | null = null;
  private metrics: MetricsServer | null = null;
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;
  /** The VM ports by replica slot (slot 0 starts as the primary). */
  private readonly slotPorts: [PacketPort, PacketPort];
  private readonly carrier: [CarrierDebouncer, CarrierDebouncer];
  private readonly carrierTimers: (NodeJS.Timeout | null)[] = [null, null];
  private readonly unsubscribeLinks: (() => void)[] = [];
  /** Per slot: stop listening to its interface's carrier. */
  private readonly slotLinks: ((() => void) | null)[] = [null, null];
  private silenceTimer: NodeJS.Timeout | null = null;
  /** When the data path last read a frame (for the memory give-back's quiet moment). */
  private lastFrameUs = 0;
  /** Frames taken in since the last tick, and the inline-send gate's state (see BridgeOptions.inlineSendsMaxFps). */
  private framesSinceTick = 0;
  private readonly inlineGate = { on: true, quietTicks: INLINE_QUIET_TICKS, lastTickUs: 0, switches: 0, applied: [null, null, null] as (PacketPort | null)[] };
  private readonly giveBack: MemoryGiveBack;
  private readonly frameWait = new FrameWait();
  /** Where the time of each breath over 10 ms went, and when its last log line was written. */
  private readonly stalls = new StallCauses(threadSelfView(), wallClockUs);
  private stallLog = { lastUs: 0, quiet: 0 };
  private silenceDeadlineUs: number | null = null;
  /** The roles last told to `onRoles` (JSON), so that it hears only changes. */
  private rolesTold = '';
  /** While a port opens for a `checkpoint-done`: the agent events that came after it, to run in order. */
  private agentQueue: (() => void)[] | null = null;

  constructor(private readonly ports: BridgePorts, private readonly options: BridgeOptions) {
    this.log = options.log ?? noLog;
    // One clock for frames, timers and link events: monotonic µs (lib/clock.ts).
    this.clockUs = options.clockUs ?? monotonicUs;
    const { uplink, primary, backup } = ports;
    this.slotPorts = [primary, backup];
    const hold = options.config.failover.carrierHoldMs;
    this.carrier = [new CarrierDebouncer(hold), new CarrierDebouncer(hold)];
    this.giveBack = new MemoryGiveBack(options.config.memoryGiveBack, options.collect === undefined ? fullCollection() : options.collect,
      (event, fields) => this.log('info', event, fields));
    this.pipeline = new ShadowPipeline(options.config, {
      toReplica: (slot, f, vnet) => this.slotPorts[slot].send(f, vnet),
      toClient: (f, vnet) => uplink.send(f, vnet),
      sendCheckpoint: (req) => {
        if (!this.agent?.sendCheckpoint(req)) this.log('warn', 'checkpoint-not-sent', { epoch: req.epoch, why: 'no agent connected' });
      },
      sendReprotect: (req, slot) => {
        if (!this.agent?.sendReprotect(req.epoch, this.slotPorts[slot].name)) this.log('warn', 'reprotect-not-sent', { epoch: req.epoch, why: 'no agent connected' });
      },
      event: (ev) => {
        if (ev.type === 'failover') this.agent?.sendFailover(ev.record.epoch, this.slotPorts[ev.survivor].name);
        if (ev.type === 'failover' || ev.type === 'backup-lost' || ev.type === 'reprotect') {
          this.rolesMayHaveChanged();
          this.options.onRoleChange?.(ev, this.pipeline.replicas.generation);
        }
      },
      log: (level, event, fields) => this.log(level, event, fields),
    }, this.clockUs(), false, undefined, [primary.name, backup.name]);
    if (options.shard) this.pipeline.setShard(options.shard);
  }

  /** Opens the sockets and starts moving frames. Nothing is left open if it fails. */
  async start(): Promise<void> {
    const o = this.options;
    // Before an agent can connect (it is asked for a checkpoint at once): without a backup it is asked for one.
    if (o.noBackupAtStart) this.afterEvent(() => this.pipeline.backupLost(o.noBackupAtStart!, this.clockUs()));
    try {
      if (o.agentSocket || o.agentLink) {
        // Agent events run in the order they came: while the new backup's port opens (off this thread), later ones wait.
        const inOrder = <A extends unknown[]>(fn: (...args: A) => void) => (...args: A): void => this.agentInOrder(() => fn(...args));
        const listener: AgentLinkListener = {
          connected: inOrder((hello) => {
            this.log('info', 'agent-connected', { agent: hello.name });
            this.afterEvent(() => this.pipeline.agentConnected(true, this.clockUs()));
          }),
          disconnected: inOrder((why) => {
            this.log('warn', 'agent-disconnected', { why });
            this.afterEvent(() => this.pipeline.agentConnected(false, this.clockUs()));
          }),
          checkpointDone: inOrder((m) => this.checkpointDone(m)),
          checkpointFailed: inOrder((m) => this.afterEvent(() => this.pipeline.checkpointFailed(m.epoch, m.error, this.clockUs()))),
          heartbeat: () => {},
          // The agent watches the VMs themselves (QEMU's state, its process): its word is final, no hold.
          primaryDown: inOrder((m) => this.afterEvent(() => this.pipeline.failoverNow('agent', `agent: ${m.reason}`, this.clockUs()))),
          backupDown: inOrder((m) => this.afterEvent(() => this.pipeline.backupLost(`agent: ${m.reason}`, this.clockUs()))),
        };
        this.agent = o.agentLink ? o.agentLink(listener) : new AgentLink({ socketPath: o.agentSocket!, name: o.name, log: this.log }, listener);
        await this.agent.listen();
      }
      if (o.controlSocket) {
        this.control = new ControlSocket({
          path: o.controlSocket,
          group: o.controlGroup,
          log: this.log,
          handlers: {
            status: () => this.snapshot(),
            checkpoint: () => this.requestCheckpoint(),
            failover: () => this.requestFailover(),
            flows: (limit, match) => this.listFlows(limit, match),
          },
        });
        await this.control.listen();
      }
      if (o.metrics) this.metrics = await startMetricsServer(o.metrics.host, o.metrics.port, () => this.snapshot(), { allowRemote: o.metrics.allowRemote, log: this.log });
    } catch (e) {
      await this.stop();
      throw e;
    }
    const { uplink, primary, backup } = this.ports;
    // One clock: a breath's frames are stamped with the time they reach us, like every timer.
    uplink.onBatch((frames) => this.breath('breath uplink', frames, (f, now) => this.pipeline.fromClient(f.frame, now, f.vnet), uplink.arrivalTimes === true));
    for (const slot of SLOT_IDS) this.listenToSlot(slot);
    // The tick judges ages (the unmatched-age trigger, the silence detector): it runs in the check
    // phase, after this turn of the loop has read every ring. A timer fires before I/O is polled, so
    // after the process was starved of CPU it would otherwise find the primary's held output "old"
    // while the backup's matching frames sat unread in their ring (a false `timeout` checkpoint).
    // The gate's first tick measures from here: frames taken in before a late first tick count over the time they came in.
    this.inlineGate.lastTickUs = this.clockUs();
    this.timer = setInterval(() => {
      setImmediate(() => {
        if (this.stopped) return;
        const now = this.clockUs();
        this.gateInlineSends(now);
        this.afterEvent(() => this.pipeline.tick(now), 'tick');
        this.giveBack.tick(now, this.pipeline.flows.size, this.lastFrameUs);
        for (const r of this.stalls.tick()) this.reportStall(r);
      });
    }, TICK_MS);
    this.timer.unref?.();
    this.stalls.watchGc();
    this.log('info', o.startedEvent ?? 'started', { name: o.name, uplink: uplink.name, primary: primary.name, backup: backup.name, agentSocket: o.agentSocket ?? null });
  }

  /** Stops timers and sockets and closes the ports. Idempotent. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.stalls.close();
    for (const t of this.carrierTimers) if (t) clearTimeout(t);
    if (this.silenceTimer) clearTimeout(this.silenceTimer);
    for (const off of this.unsubscribeLinks) off();
    for (const off of this.slotLinks) off?.();
    // Ports and sockets together: a slow socket close must never leave frames forwarded meanwhile.
    await Promise.allSettled([
      this.ports.uplink.close(), this.slotPorts[0].close(), this.slotPorts[1].close(),
      this.agent?.close(), this.control?.close(), this.metrics?.close(),
    ]);
    this.log('info', 'stopped', { name: this.options.name });
  }

  /** A manual checkpoint (the control socket's `checkpoint`). */
  requestCheckpoint(): ManualCheckpointResult {
    let requested = false;
    this.afterEvent(() => { requested = this.pipeline.request('manual', undefined, this.clockUs()); });
    const r = this.pipeline.replicator;
    return { requested, epoch: r.epoch, state: r.state, ...(requested ? {} : { note: `not sent: state ${r.state}` }) };
  }

  /**
   * `run --workers`: another worker asked the agent for a checkpoint or a
   * re-protection; this one takes part (Replicator.joinBarrier). In order
   * with the agent's words (a port opening for a checkpoint-done first).
   */
  joinBarrier(kind: AgentRequestKind, reason: CheckpointReason, flow: string, answer: (joined: boolean) => void): void {
    this.agentInOrder(() => {
      let joined = false;
      this.afterEvent(() => { joined = this.pipeline.replicator.joinBarrier(kind, reason, flow, this.clockUs()); });
      answer(joined);
    });
  }

  /**
   * `run --workers`: another worker changed the roles (promoted the backup,
   * or lost it) and this one follows, unless it already has (its roles'
   * generation is there already: it saw the same death itself).
   */
  followRoleChange(generation: number, change: { type: 'failover'; cause: FailoverCause; detail: string } | { type: 'backup-lost'; cause: string }): void {
    this.agentInOrder(() => this.afterEvent(() => {
      if (this.pipeline.replicas.generation >= generation) return;
      const now = this.clockUs();
      if (change.type === 'failover') this.pipeline.failoverNow(change.cause, change.detail, now, now, true);
      else this.pipeline.backupLost(change.cause, now);
    }));
  }

  /** A planned failover (the control socket's `failover`). */
  requestFailover(): ManualFailoverResult {
    const before = this.pipeline.failover.refused;
    let decision = 'refused' as FailoverDecision;
    this.afterEvent(() => { decision = this.pipeline.failoverNow('manual', 'asked for over the control socket', this.clockUs()); });
    const roles = this.pipeline.replicas.slots.map((s) => ({ port: s.name, role: s.role }));
    if (decision === 'promoted') return { promoted: true, survivor: this.pipeline.replicas.active.name, roles };
    const waiting = this.pipeline.failoverWaiting;
    if (decision === 'deferred' && waiting) {
      return { promoted: false, deferred: true, why: `checkpoint ${waiting.epoch} is in flight: the failover follows its answer, within ${this.options.config.failover.checkpointWaitMs} ms`, roles };
    }
    const why = this.pipeline.failover.refused > before
      ? (this.pipeline.replicas.standby ? `the backup is stale (state ${this.pipeline.state})` : 'no backup')
      : 'not promoted';
    return { promoted: false, why, roles };
  }

  /** The most recent `limit` flows, those whose key holds `match` if given; oldest first. */
  listFlows(limit: number, match?: string): Promise<FlowReport[]> {
    // In slices: searching every flow's name for `match` must not hold frames up.
    return this.pipeline.reportListSliced(limit, match);
  }

  snapshot(): BridgeSnapshot {
    const t0 = wallClockUs();
    try {
      return this.snapshotNow();
    } finally {
      this.stalls.noteTask('snapshot', t0, wallClockUs());
    }
  }

  private snapshotNow(): BridgeSnapshot {
    const roles: [PortRole, PacketPort][] = [['uplink', this.ports.uplink], ['primary', this.slotPorts[0]], ['backup', this.slotPorts[1]]];
    return snapshotOf(this.pipeline, {
      name: this.options.name,
      startedMs: this.startedMs,
      nowMs: Date.now(),
      nowUs: this.clockUs(),
      ports: roles.map(([role, port]) => ({ role, name: port.name, ...port.stats(false), ...(port.ring ? { ring: ringOf(port.ring) } : {}) })),
      agent: this.agent ? this.agent.snapshot() : emptyAgentSnapshot(),
      components: {
        ...(this.agent ? { agent_link: { ...this.agent.counters } } : {}),
        ...(this.control ? { control_socket: { ...this.control.counters } } : {}),
        ...(this.metrics ? { metrics_server: { ...this.metrics.counters } } : {}),
        memory_give_back: { ...this.giveBack.counters },
      },
      frameWait: { ...this.frameWait.snapshot(), stalls: this.stalls.snapshot() },
      ...(this.options.scheduling ? { dataPlane: this.options.scheduling } : {}),
      ...(this.options.inlineSendsMaxFps !== undefined ? { inlineSends: { on: this.inlineGate.on, maxFps: this.options.inlineSendsMaxFps, switches: this.inlineGate.switches } } : {}),
    });
  }

  /** `task`: how the stall causes name this port's breaths ("breath hsp"), made once per port, not per breath. */
  private breath(task: string, frames: readonly ReceivedFrame[], each: (f: ReceivedFrame, nowUs: number) => void, timed: boolean): void {
    const now = this.clockUs();
    const startUs = timed ? wallClockUs() : 0;
    this.lastFrameUs = now;
    this.framesSinceTick += frames.length;
    for (let i = 0; i < frames.length; i++) each(frames[i], now);
    this.flushAll();
    // A ring is FIFO: the first frame is the batch's oldest.
    if (timed && frames.length) {
      const oldestUs = frames[0].timeUs;
      const endUs = this.frameWait.observe(oldestUs);
      this.stalls.noteTask(task, startUs, endUs);
      if (endUs - oldestUs > FRAME_WAIT_STALL_US) this.stalls.stall(oldestUs, startUs, endUs, frames.length);
    }
    this.armSilenceTimer(now);
  }

  /**
   * Once per tick: inline sends off when the frames taken in since the last
   * tick, per second, are above `inlineSendsMaxFps`; on again after
   * INLINE_QUIET_TICKS ticks at or below it. Applied
   * to a port when the gate changes and to a port newly in a role (a moved
   * backup starts with its own setting).
   */
  private gateInlineSends(nowUs: number): void {
    const max = this.options.inlineSendsMaxFps;
    if (max === undefined) return;
    const g = this.inlineGate;
    const spanUs = nowUs - g.lastTickUs;
    const fps = spanUs > 0 ? (this.framesSinceTick * 1e6) / spanUs : Infinity;
    this.framesSinceTick = 0;
    g.lastTickUs = nowUs;
    // Off at once on a busy tick; on again only after INLINE_QUIET_TICKS quiet ones in a row, so that
    // bursty load (a rate-limited download pauses between bursts) does not open it in its gaps.
    g.quietTicks = fps <= max ? g.quietTicks + 1 : 0;
    const on = g.quietTicks >= INLINE_QUIET_TICKS;
    const changed = on !== g.on;
    if (changed) {
      g.on = on;
      g.switches++;
    }
    const ports = [this.ports.uplink, this.slotPorts[0], this.slotPorts[1]];
    for (let i = 0; i < ports.length; i++) {
      if (!changed && g.applied[i] === ports[i]) continue;
      ports[i].setInlineSends?.(on);
      g.applied[i] = ports[i];
    }
  }

  /** Work done on the data plane's thread outside the bridge (a control call's reply, built and serialized), for the stall causes. */
  noteTask(name: string, startUs: number, endUs: number): void {
    this.stalls.noteTask(name, startUs, endUs);
  }

  /** One log line per STALL_LOG_EVERY_US at most: the stall just settled, and how many went unlogged before it. */
  private reportStall(r: StallRecord): void {
    const now = wallClockUs();
    if (this.stallLog.lastUs && now - this.stallLog.lastUs < STALL_LOG_EVERY_US) {
      this.stallLog.quiet++;
      return;
    }
    this.log('warn', 'frame-wait-stall', { waitMs: r.waitMs, frames: r.frames, cause: r.cause, parts: r.parts, during: r.during, unloggedBefore: this.stallLog.quiet });
    this.stallLog = { lastUs: now, quiet: 0 };
  }

  /**
   * The silence detector decides at a known moment (silence long enough, or
   * the probe's time up): a one-shot timer for it, rather than waiting for
   * the next regular tick (up to TICK_MS later).
   */
  private armSilenceTimer(nowUs: number): void {
    const at = this.pipeline.silenceDeadlineUs();
    if (at === null || at === this.silenceDeadlineUs || this.stopped) return;
    if (this.silenceTimer) clearTimeout(this.silenceTimer);
    this.silenceDeadlineUs = at;
    const timer = setTimeout(() => {
      // After the rings are read (see the regular tick): a primary frame waiting unread is no silence.
      setImmediate(() => {
        if (this.silenceTimer === timer) {
          this.silenceTimer = null;
          this.silenceDeadlineUs = null;
        }
        if (this.stopped) return;
        this.afterEvent(() => this.pipeline.tick(this.clockUs()));
        this.armSilenceTimer(this.clockUs());
      });
    }, Math.max(0, (at - nowUs) / 1000));
    this.silenceTimer = timer;
  }

  /**
   * A VM port's carrier changed. Down: the replica in that slot counts as
   * dead once the carrier has stayed down `carrierHoldMs` (a flap is logged
   * and ignored); a deleted interface is dead at once.
   */
  private onLink(slot: SlotId, ev: { carrier: boolean; deleted: boolean; monoUs: number }): void {
    const deb = this.carrier[slot];
    const name = this.slotPorts[slot].name;
    if (ev.carrier && !ev.deleted) {
      if (deb.isDown) {
        const downMs = (ev.monoUs - deb.downSince) / 1000;
        deb.up();
        const t = this.carrierTimers[slot];
        if (t) clearTimeout(t);
        this.carrierTimers[slot] = null;
        this.log('warn', 'link-flap', { port: name, downMs, note: 'carrier came back within the hold time: no failover' });
      }
      return;
    }
    if (this.pipeline.replicas.sideOf(slot) === -1) return; // already dead
    const since = ev.monoUs;
    deb.down(since);
    this.log('warn', 'carrier-lost', { port: name, holdMs: deb.holdMs, deleted: ev.deleted });
    if (ev.deleted) {
      this.replicaDead(slot, 'carrier', `${name} deleted`, since);
      return;
    }
    if (this.carrierTimers[slot]) return;
    this.carrierTimers[slot] = setTimeout(() => {
      this.carrierTimers[slot] = null;
      if (!deb.isDown) return;
      // The carrier may be back with its event still queued behind this timer: ask the kernel.
      if (carrierNow(name) === true) {
        deb.up();
        this.log('warn', 'link-flap', { port: name, downMs: (this.clockUs() - deb.downSince) / 1000, note: 'carrier back at the end of the hold time: no failover' });
        return;
      }
      this.replicaDead(slot, 'carrier', `${name} lost carrier`, deb.downSince);
    }, deb.holdMs);
  }

  /** The replica in `slot` is dead: promote the other one if it was the active one, else run without a backup. */
  private replicaDead(slot: SlotId, cause: 'carrier', detail: string, sinceUs: number): void {
    this.afterEvent(() => {
      const side = this.pipeline.replicas.sideOf(slot);
      const now = this.clockUs();
      if (side === 0) this.pipeline.failoverNow(cause, detail, now, sinceUs);
      else if (side === 1) this.pipeline.backupLost(detail, now);
      this.carrier[slot].reset();
    });
  }

  /** Frames and carrier of the port in `slot` go to the pipeline as that slot's. */
  private listenToSlot(slot: SlotId): void {
    const port = this.slotPorts[slot];
    const task = `breath ${port.name}`;
    port.onBatch((frames) => {
      if (this.slotPorts[slot] !== port) return; // a port being closed after a move
      this.breath(task, frames, (f, now) => this.pipeline.fromVm(slot, f.frame, now, f.vnet), port.arrivalTimes === true);
    });
    this.slotLinks[slot]?.();
    this.slotLinks[slot] = this.options.links ? this.options.links.on(port.name, (ev) => this.onLink(slot, ev)) : null;
  }

  /**
   * Runs an agent event now, or after the ones before it: while a port opens
   * for a `checkpoint-done`, what the agent says next (primary-down, another
   * answer, its disconnection) waits, so that it applies to the roles that
   * answer made, exactly as if the port had opened at once.
   */
  private agentInOrder(fn: () => void): void {
    if (this.agentQueue) {
      this.agentQueue.push(fn);
      return;
    }
    fn();
  }

  /** `checkpoint-done`: the epoch fence (a port moved or reopened), then the checkpoint applies. */
  private checkpointDone(m: CheckpointDoneMessage): void {
    const apply = (): void => {
      this.pipeline.checkpointDone(m.epoch, this.clockUs(), m.ms, { bytes: m.bytes, pages: m.pages });
      // The agent may hold the new backup's link down until the port reads it: it may bring it up now.
      if (m.port !== undefined) this.agent?.sendBackupAttached(m.epoch, m.port);
    };
    // The epoch fence: the backup moved to a fresh interface (v2), or stayed on its interface and is
    // read through a fresh socket (v3); nothing queued on the old socket is ever read.
    const move = m.port === undefined ? null : this.standbySlotMove(m.port, (this.agent?.agent?.version ?? 1) >= 3);
    if (!move) {
      this.afterEvent(apply);
      return;
    }
    const fail = (error: string): void => this.pipeline.checkpointFailed(m.epoch, error, this.clockUs());
    if (!this.options.openPort) {
      this.afterEvent(() => fail(`the agent ${move.same ? 'asked for a fresh socket on' : 'moved the backup to'} ${move.ifname}, but this bridge cannot open ports`));
      return;
    }
    let opened: PacketPort | Promise<PacketPort>;
    try {
      opened = this.options.openPort(move.ifname);
    } catch (e) {
      this.afterEvent(() => fail(openError(move.ifname, e)));
      return;
    }
    if (!(opened instanceof Promise)) {
      this.afterEvent(() => { this.installStandbyPort(move.slot, opened as PacketPort, m.epoch); apply(); });
      return;
    }
    // Opened off this thread (the ring's setup waits for the kernel): frames keep flowing meanwhile, and the
    // checkpoint stays in flight, as if the agent had answered that much later.
    const startedUs = this.clockUs();
    this.agentQueue = [];
    let settled = false;
    const timeoutMs = this.options.portOpenTimeoutMs ?? PORT_OPEN_TIMEOUT_MS;
    // A kernel that never finishes the open must not hold the agent's later words (a primary-down) for good.
    const timer = setTimeout(() => settle(null, `opening the new backup's port ${move.ifname} took over ${timeoutMs} ms`), timeoutMs);
    timer.unref?.();
    const settle = (port: PacketPort | null, error: string | null): void => {
      if (settled) {
        // Too late: the checkpoint failed meanwhile.
        if (port) void port.close();
        if (port) this.log('warn', 'backup-port-open-late', { epoch: m.epoch, port: port.name, openMs: Math.round((this.clockUs() - startedUs) / 100) / 10, note: 'opened after its checkpoint had failed; closed unused' });
        return;
      }
      settled = true;
      clearTimeout(timer);
      const waitedMs = (this.clockUs() - startedUs) / 1000;
      if (this.stopped) {
        if (port) void port.close();
      } else {
        this.afterEvent(() => {
          if (port && this.pipeline.replicas.active.id === move.slot) {
            // A failover while it opened (no wait for the checkpoint's answer: failover.checkpointWaitMs 0) made
            // that slot the active one: the copy is of a primary that is gone, and the survivor keeps its port.
            void port.close();
            this.log('warn', 'backup-port-open-stale', { epoch: m.epoch, port: port.name, openMs: Math.round(waitedMs * 10) / 10, note: 'a failover happened while it opened; closed unused' });
          } else if (port) {
            this.installStandbyPort(move.slot, port, m.epoch, waitedMs);
            apply();
          } else {
            fail(error!);
          }
        }, 'port-open');
      }
      const queued = this.agentQueue ?? [];
      this.agentQueue = null;
      // What waited runs in order; one that opens a port again makes the rest wait for it.
      while (queued.length > 0 && !this.stopped) {
        if (this.agentQueue) {
          (this.agentQueue as (() => void)[]).push(...queued);
          break;
        }
        queued.shift()!();
      }
    };
    opened.then((port) => settle(port, null), (e: unknown) => settle(null, openError(move.ifname, e)));
  }

  /**
   * Which slot a `checkpoint-done` naming `ifname` moves: the one that is not
   * the active replica's (the agent made the new backup behind `ifname`).
   * Null when nothing moves.
   *
   * `reopenSame` (protocol v3): when `ifname` is the slot's interface already,
   * the backup VM was overwritten in place (a COLO checkpoint) and the agent
   * has held its output since before the checkpoint began; so every frame
   * still unread on the port is from the old state, and every frame from the
   * new state arrives after `backup-attached`. A fresh socket on the same
   * interface separates the two: the old one is closed unread. (A v2 agent
   * naming the same interface changes nothing, as before.)
   */
  private standbySlotMove(ifname: string, reopenSame: boolean): { slot: SlotId; ifname: string; same: boolean } | null {
    const slot: SlotId = this.pipeline.replicas.active.id === 0 ? 1 : 0;
    const same = this.slotPorts[slot].name === ifname;
    if (same && !reopenSame) return null;
    return { slot, ifname, same };
  }

  /**
   * Puts `port` in `slot` (the new backup's interface, or a fresh socket on
   * the same one). The old port is closed with whatever the old backup left
   * queued on it, unread.
   */
  private installStandbyPort(slot: SlotId, port: PacketPort, epoch: number, openMs?: number): void {
    const old = this.slotPorts[slot];
    const same = old.name === port.name;
    this.slotPorts[slot] = port;
    this.pipeline.replicas.slots[slot].name = port.name;
    if (!same) {
      // A new interface: the old one's carrier history is not its.
      this.carrier[slot].reset();
      const t = this.carrierTimers[slot];
      if (t) clearTimeout(t);
      this.carrierTimers[slot] = null;
    }
    this.listenToSlot(slot);
    this.rolesMayHaveChanged();
    old.close().catch((e: Error) => this.log('warn', 'port-close-failed', { port: old.name, error: e.message }));
    const opened = openMs === undefined ? {} : { openMs: Math.round(openMs * 10) / 10 };
    if (same) this.log('info', 'backup-port-reopened', { epoch, port: port.name, ...opened, note: 'the backup was overwritten in place; frames its old state left unread are discarded (epoch fence)' });
    else this.log('info', 'backup-port-moved', { epoch, from: old.name, to: port.name, ...opened, note: 'frames left on the old port are discarded unread (epoch fence)' });
  }

  /** Tells `onRoles` the roles now, if they changed since it was last told. */
  private rolesMayHaveChanged(): void {
    if (!this.options.onRoles) return;
    const r = this.pipeline.replicas;
    const roles: BridgeRoles = { primary: r.active.name, backup: r.standby?.name ?? null };
    const json = JSON.stringify(roles);
    if (json === this.rolesTold) return;
    try {
      this.options.onRoles(roles);
      this.rolesTold = json;
    } catch (e) {
      this.log('warn', 'roles-not-saved', { error: (e as Error).message });
    }
  }

  /** Anything that may release frames outside a breath (timers, agent answers) flushes afterwards. */
  private afterEvent(fn: () => void, task = 'event'): void {
    const t0 = wallClockUs();
    fn();
    this.flushAll();
    this.stalls.noteTask(task, t0, wallClockUs());
  }

  private flushAll(): void {
    this.ports.uplink.flush();
    this.slotPorts[0].flush();
    this.slotPorts[1].flush();
    this.pipeline.endBreath();
  }
}

/** A ring as the snapshot shows it: its slots, their size and its kernel memory. */
function ringOf(r: NonNullable<PacketPort['ring']>): { frames: number; frameSize: number; bytes: number; large?: { frames: number; frameSize: number; fanout?: boolean } } {
  return { frames: r.frames, frameSize: r.frameSize, bytes: ringBytes(r), ...(r.large ? { large: { ...r.large } } : {}) };
}
