/**
 * `run --workers N`: the main thread's coordinator of N data-plane workers.
 * Each worker is a whole Bridge on its own shard of the flows (its ports take
 * only that shard's frames, lib/dataplane/shard.ts), with its own pipeline
 * and replicator. What concerns the VMs, not a flow, is done once, for all:
 *
 *   - one connection to the sync agent (this module holds it; each worker's
 *     bridge talks to a RelayAgentLink);
 *   - checkpoints and re-protections are barriers. The first worker that asks
 *     holds its client ingress; the coordinator asks every other worker to
 *     join (Replicator.joinBarrier: each holds its client ingress too), and
 *     only when every worker has answered does the agent hear one request.
 *     So no client frame reaches a VM while the agent copies it. The agent's
 *     answer goes to every worker that joined, under its own epoch. A
 *     `checkpoint-done` naming a port: each worker opens its own socket on
 *     it, and the agent hears one `backup-attached` once they all have;
 *   - role changes: a worker that promotes the backup or loses it (its
 *     carrier watch, its silence detector, the agent's word, a manual
 *     failover) reports it with its roles' generation; the first report of a
 *     generation is told to the agent (`failover`) and to every other
 *     worker, which follows (Bridge.followRoleChange) unless it got there
 *     itself.
 *
 * A request that comes while a barrier is under way waits for its end, then
 * starts the next barrier. Bounded waits: a worker that does not answer a
 * join within JOIN_TIMEOUT_MS is left out of that checkpoint (logged); a
 * barrier the agent does not answer ends after the checkpoint timeout (the
 * workers' own replicators have failed it by then); `backup-attached` goes
 * to the agent after ATTACH_TIMEOUT_MS even if a worker's port never opened.
 */
import type { LogFn } from '../control/logger';
import type { AgentLinkLike, AgentLinkListener } from '../replicate/agent-client';
import type { CheckpointDoneMessage } from '../replicate/agent-protocol';
import { CHECKPOINT_REASONS } from '../replicate/replicator';
import type { AgentRequestKind, CheckpointReason } from '../replicate/replicator';
import type { AgentWord, FromWorker, RoleChange, ToWorker } from './protocol';

/** A worker that has not answered a join this long is left out of the checkpoint. */
export const JOIN_TIMEOUT_MS = 1000;
/** Beyond the port-open timeout of the workers (bridge.ts PORT_OPEN_TIMEOUT_MS), how long `backup-attached` waits for the last of them. */
export const ATTACH_TIMEOUT_MS = 6000;

/** A worker's part in a barrier: its own epoch, or out (refused, or did not answer). */
type Part = number | 'out' | null;

interface Barrier {
  kind: AgentRequestKind;
  reason: CheckpointReason;
  flow?: string;
  /** reprotect: the interface the new backup is to run behind. */
  backup?: string;
  parts: Part[];
  /** The agent's epoch, once it was asked. */
  epoch: number | null;
  startedMs: number;
  /** After a checkpoint-done that names a port: which workers have attached it. */
  attaching: { port: string; attached: Set<number>; sinceMs: number } | null;
}

interface Waiting { worker: number; kind: AgentRequestKind; epoch: number; reason: CheckpointReason; flow?: string; backup?: string }

export interface CoordinatorCounters {
  barriers: number;
  barriers_joined: number;
  barriers_refused: number;
  join_timeouts: number;
  barrier_timeouts: number;
  attach_timeouts: number;
  role_changes: number;
  role_reports_duplicate: number;
  requests_waited: number;
}

export interface CoordinatorOptions {
  workers: number;
  post(worker: number, m: ToWorker): void;
  /** How long the agent may take (the replicators' checkpointTimeoutMs / reprotectTimeoutMs). */
  checkpointTimeoutMs: number;
  reprotectTimeoutMs: number;
  log?: LogFn;
  nowMs?: () => number;
}

export class Coordinator {
  readonly counters: CoordinatorCounters = {
    barriers: 0, barriers_joined: 0, barriers_refused: 0, join_timeouts: 0, barrier_timeouts: 0, attach_timeouts: 0,
    role_changes: 0, role_reports_duplicate: 0, requests_waited: 0,
  };
  /**
   * Checkpoints asked of the agent, by the reason of the request that began
   * each barrier: one for all the workers in it. Each worker's replicator
   * counts its own request, so two workers that asked at once (both see the
   * agent connect) would count one checkpoint twice.
   */
  readonly checkpointsRequested = Object.fromEntries(CHECKPOINT_REASONS.map((r) => [r, 0])) as Record<CheckpointReason, number>;
  private agent: AgentLinkLike | null = null;
  private barrier: Barrier | null = null;
  private readonly waiting: Waiting[] = [];
  private epoch = 0;
  /** The roles' generation of the last role change told to everyone. */
  private generation = 0;
  private readonly log: LogFn;
  private readonly now: () => number;

  constructor(private readonly o: CoordinatorOptions) {
    this.log = o.log ?? (() => {});
    this.now = o.nowMs ?? Date.now;
  }

  /** The agent link's listener: what the agent says goes to the workers. */
  readonly listener: AgentLinkListener = {
    connected: (hello) => this.broadcast({ ev: 'connected', hello }),
    disconnected: (why) => {
      // Every worker fails its request in flight, and those that wait, on this word: the barrier is over.
      this.waiting.length = 0;
      this.endBarrier();
      this.broadcast({ ev: 'disconnected', why });
    },
    checkpointDone: (m) => this.answered(m),
    checkpointFailed: (m) => {
      const b = this.barrier;
      if (!b || b.epoch !== m.epoch || b.attaching) return;
      this.toParts(b, (epoch) => ({ ev: 'checkpoint-failed', m: { ...m, epoch } }));
      this.endBarrier();
    },
    heartbeat: () => {},
    primaryDown: (m) => this.broadcast({ ev: 'primary-down', m }),
    backupDown: (m) => this.broadcast({ ev: 'backup-down', m }),
  };

  /** The link the coordinator speaks through (made with `listener`). */
  attach(agent: AgentLinkLike): void {
    this.agent = agent;
  }

  /** Whether a barrier is under way (status, tests). */
  get busy(): boolean {
    return this.barrier !== null;
  }

  fromWorker(worker: number, m: FromWorker): void {
    switch (m.type) {
      case 'to-agent':
        if (m.op === 'backup-attached') this.attached(worker, m.epoch, m.port);
        else this.requested({ worker, kind: m.op, epoch: m.epoch, reason: m.op === 'checkpoint' ? m.reason : 'manual', flow: m.op === 'checkpoint' ? m.flow : undefined, backup: m.op === 'reprotect' ? m.backup : undefined });
        return;
      case 'joined': {
        const b = this.barrier;
        if (!b || b.kind !== m.kind || b.epoch !== null || b.parts[worker] !== null) return;
        // Joined: its request came first (a worker's messages keep their order), so a part still empty is out.
        b.parts[worker] = 'out';
        if (m.ok) this.log('warn', 'barrier-join-lost', { worker, kind: m.kind, note: 'the worker joined but its request never came: left out' });
        else this.counters.barriers_refused++;
        this.maybeAsk();
        return;
      }
      case 'roles':
        this.roleChanged(worker, m.generation, m.change);
    }
  }

  /** Timeouts; the caller runs it every few ms. */
  tick(): void {
    const b = this.barrier;
    if (!b) return;
    const now = this.now();
    if (b.epoch === null && now - b.startedMs > JOIN_TIMEOUT_MS) {
      const late = b.parts.flatMap((p, i) => (p === null ? [i] : []));
      this.counters.join_timeouts++;
      this.log('warn', 'barrier-join-timeout', { kind: b.kind, workers: late, waitedMs: now - b.startedMs, note: 'left out of this request' });
      for (const i of late) b.parts[i] = 'out';
      this.maybeAsk();
      return;
    }
    if (b.attaching) {
      if (now - b.attaching.sinceMs > ATTACH_TIMEOUT_MS) {
        this.counters.attach_timeouts++;
        this.log('warn', 'backup-attach-timeout', { epoch: b.epoch, port: b.attaching.port, attached: [...b.attaching.attached], note: 'told to the agent without the workers that did not open it' });
        this.finishAttach(b);
      }
      return;
    }
    const limit = b.kind === 'reprotect' ? this.o.reprotectTimeoutMs : this.o.checkpointTimeoutMs;
    if (b.epoch !== null && now - b.startedMs > limit + JOIN_TIMEOUT_MS) {
      this.counters.barrier_timeouts++;
      this.log('warn', 'barrier-timeout', { kind: b.kind, epoch: b.epoch, waitedMs: now - b.startedMs, note: 'no answer from the agent: the workers failed it themselves' });
      this.endBarrier();
    }
  }

  private requested(w: Waiting): void {
    const b = this.barrier;
    if (b && b.epoch === null && b.kind === w.kind && b.parts[w.worker] === null) {
      b.parts[w.worker] = w.epoch;
      this.maybeAsk();
      return;
    }
    if (b) {
      // The agent is at work on another request, or this worker asked again after giving up on its part.
      this.counters.requests_waited++;
      const i = this.waiting.findIndex((x) => x.worker === w.worker);
      if (i >= 0) this.waiting.splice(i, 1);
      this.waiting.push(w);
      return;
    }
    this.begin(w, []);
  }

  private begin(first: Waiting, more: Waiting[]): void {
    const parts: Part[] = new Array<Part>(this.o.workers).fill(null);
    const b: Barrier = { kind: first.kind, reason: first.reason, flow: first.flow, backup: first.backup, parts, epoch: null, startedMs: this.now(), attaching: null };
    for (const w of [first, ...more]) parts[w.worker] = w.epoch;
    this.barrier = b;
    this.counters.barriers++;
    const flow = `worker ${first.worker}: ${first.flow ?? first.reason}`;
    for (let i = 0; i < parts.length; i++) {
      if (parts[i] === null) this.o.post(i, { type: 'join', kind: b.kind, reason: b.reason, flow });
    }
    this.maybeAsk();
  }

  /** Every worker has answered: one request to the agent for all of them. */
  private maybeAsk(): void {
    const b = this.barrier;
    if (!b || b.epoch !== null || b.parts.some((p) => p === null)) return;
    const joined = b.parts.filter((p) => typeof p === 'number').length;
    if (joined === 0) {
      this.endBarrier();
      return;
    }
    this.counters.barriers_joined += joined;
    if (b.kind === 'checkpoint') this.checkpointsRequested[b.reason]++;
    b.epoch = ++this.epoch;
    const sent = !this.agent ? false
      : b.kind === 'reprotect' ? this.agent.sendReprotect(b.epoch, b.backup)
      : this.agent.sendCheckpoint({ epoch: b.epoch, reason: b.reason, ...(b.flow !== undefined ? { flow: b.flow } : {}) });
    if (!sent) {
      this.toParts(b, (epoch) => ({ ev: 'checkpoint-failed', m: { type: 'checkpoint-failed', epoch, error: 'no agent connected' } }));
      this.endBarrier();
    }
  }

  private answered(m: CheckpointDoneMessage): void {
    const b = this.barrier;
    if (!b || b.epoch !== m.epoch || b.attaching) return; // a late answer to a barrier given up on
    this.toParts(b, (epoch) => ({ ev: 'checkpoint-done', m: { ...m, epoch } }));
    if (m.port !== undefined && b.kind === 'checkpoint' && (this.agent?.agent?.version ?? 1) >= 2) {
      b.attaching = { port: m.port, attached: new Set(), sinceMs: this.now() };
      return;
    }
    this.endBarrier();
  }

  private attached(worker: number, epoch: number, port: string): void {
    const b = this.barrier;
    if (!b?.attaching || b.parts[worker] !== epoch || b.attaching.port !== port) return;
    b.attaching.attached.add(worker);
    if (b.parts.every((p, i) => typeof p !== 'number' || b.attaching!.attached.has(i))) this.finishAttach(b);
  }

  private finishAttach(b: Barrier): void {
    this.agent?.sendBackupAttached(b.epoch!, b.attaching!.port);
    this.endBarrier();
  }

  private roleChanged(worker: number, generation: number, change: RoleChange): void {
    if (generation <= this.generation) {
      this.counters.role_reports_duplicate++;
      return;
    }
    this.generation = generation;
    this.counters.role_changes++;
    if (change.type === 'failover') this.agent?.sendFailover(generation, change.survivor);
    this.log('info', 'workers-follow', { from: worker, generation, change: change.type, cause: change.cause });
    // The others follow before anything this change ends or starts reaches them (a re-protection's join).
    for (let i = 0; i < this.o.workers; i++) if (i !== worker) this.o.post(i, { type: 'follow', generation, change });
    // Every worker abandons its checkpoint in flight with the roles it was asked under, and those waiting.
    for (let i = this.waiting.length - 1; i >= 0; i--) if (this.waiting[i].kind === 'checkpoint') this.waiting.splice(i, 1);
    if (this.barrier?.kind === 'checkpoint') this.endBarrier();
  }

  private toParts(b: Barrier, word: (epoch: number) => AgentWord): void {
    b.parts.forEach((p, i) => {
      if (typeof p === 'number') this.o.post(i, { type: 'agent', word: word(p) });
    });
  }

  private broadcast(word: AgentWord): void {
    for (let i = 0; i < this.o.workers; i++) this.o.post(i, { type: 'agent', word });
  }

  /** The barrier is over; the requests that waited start the next one. */
  private endBarrier(): void {
    this.barrier = null;
    if (this.waiting.length === 0) return;
    const [first, ...rest] = this.waiting.splice(0);
    const same = rest.filter((w) => w.kind === first.kind);
    this.waiting.push(...rest.filter((w) => w.kind !== first.kind));
    this.begin(first, same);
  }
}
