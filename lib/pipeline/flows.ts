/**
 * FlowRegistry: the flow stage. One bounded table of ShadowFlows shared by
 * the ingress and egress stages (both look flows up; either may create one:
 * a client SYN or a VM's first frame), the per-flow reports, and the lazy
 * resynchronization after a checkpoint.
 *
 * In:  decoded frames to look up (per direction and side), stage events.
 * Out: flow entries; counters (created, evicted, active, carried).
 *
 * A flow is born `compare` when a backup exists, `solo` otherwise (see
 * FlowMode), or `solo` when the policy table (`flowPolicy`, matched once, at
 * birth) says `pass` or `drop-backup-only`. Events change modes through the stages that own the meaning
 * (the egress stage carries flows over at failover); this stage only keeps
 * the count of carried flows so the unchecked path knows whether it must
 * look flows up at all.
 */
import { DecodedFrame } from '../packet/frame';
import { SlabPool } from '../packet/slab';
import { FlowEntry, FlowTable } from '../flow/flow-table';
import { flowProtocolOf } from '../flow/key';
import { TcpFlag } from '../packet/constants';
import { FlowLookup } from '../flow/key-cache';
import { FlowHeldQueue, HeldQueues } from '../release/held';
import type { ReplicaSet } from '../failover/roles';
import { MatchTotals, StreamNoise } from '../compare/tcp-stream';
import { PipelineConfig } from './config';
import { Stage, StageEvent } from './events';
import { FlowPolicyTable } from './flow-policy';
import { BOTH_CLOSED, FlowMode, FlowReport, ShadowFlow } from './shadow-flow';

export interface FlowRegistryDeps {
  config: PipelineConfig;
  replicas: ReplicaSet;
  held: HeldQueues;
  /** Copies of the backup's bytes that comparators keep. */
  backupCopies: SlabPool;
  /** Copies of standby frames kept for failover. */
  standbyCopies: SlabPool;
  totals: MatchTotals;
  reportLimit: number;
  /** An evicted flow still had held output: the owner asks for a checkpoint to settle it. */
  evictedWithHeldOutput(flow: ShadowFlow, why: 'lru' | 'idle'): void;
  /** An evicted open connection came back and goes on unprotected; `heldReleased`: its old held frames sent first. */
  evictedResumed?(flow: ShadowFlow, heldReleased: number): void;
}

/** How many evicted open connections are remembered, to recognize them if they speak again. */
export const MAX_EVICTED_KEYS = 65536;

const EXPIRY_INTERVAL_US = 1_000_000;

/** Flows whose names a sliced report scan searches before it lets frames through (a few milliseconds' work). */
export const REPORT_SCAN_SLICE = 4096;

/** Distinct non-IP classes (ARP and ethertypes, per VLAN) compared as flows of their own. */
export const MAX_NON_IP_FLOWS = 256;

export class FlowRegistry implements Stage {
  readonly stageName = 'flow';
  readonly table: FlowTable<ShadowFlow>;
  readonly ingressLookup: FlowLookup<ShadowFlow>;
  /** One lookup per comparison side: each remembers its last flow. */
  readonly egressLookup: [FlowLookup<ShadowFlow>, FlowLookup<ShadowFlow>];
  /**
   * Reports of flows that left the table, a ring of at most `reportLimit`
   * (oldest at `departedNext` once full), with their birth serials.
   */
  private readonly departed: { serial: number; report: FlowReport }[] = [];
  private departedNext = 0;
  /** ARP and other ethertypes compared as datagrams, by class and VLAN. */
  readonly nonIp = new Map<string, ShadowFlow>();
  created = 0;
  /** Carried-over flows alive: while there are none, the unchecked path needs no flow lookup. */
  carried = 0;
  /** Flows left with one replica: born while there was no backup, or whose backup died, or taken out of comparison by the policy table. */
  unprotected = 0;
  /** Flows the policy table made `pass` (backup fed, output unchecked) and `drop-backup-only`. */
  policyPass = 0;
  policyDropBackupOnly = 0;
  /** `pass` TCP flows whose primary died and that are reset on their next frame: while there are none, the unchecked path needs no lookup. */
  awaitingReset = 0;
  /** The compiled `flowPolicy` table. */
  readonly policy: FlowPolicyTable;
  /** Open TCP connections pushed out of a full table. */
  evictedOpen = 0;
  /** Of those, the ones that came back: their replicas' offsets were lost with them, so they go on unprotected. */
  resumedUnprotected = 0;
  /** TCP connections first seen without their SYN under `resync: align` (begun before this bridge saw them): unprotected. */
  midstreamUnprotected = 0;
  /** Flows not compared (carried over, unprotected) whose client opened a new connection on their 4-tuple: replaced by a fresh flow. */
  reopened = 0;
  /** Keys of open TCP connections evicted from the table (bounded, oldest forgotten first). */
  private readonly evictedKeys = new Map<string, true>();
  /**
   * Held output of evicted flows, by key, until the checkpoint that settles
   * it: if the connection speaks again first, what it said before goes out
   * before what it says now. Bounded by the held output itself.
   */
  private readonly evictedHeld = new Map<string, FlowHeldQueue>();
  /** Checkpoints completed: a flow whose `epoch` is behind is resynchronized before its next frame. */
  private checkpointEpoch = 0;
  /**
   * Flows born before this checkpoint epoch had output the bridge did not
   * follow (it was DEGRADED or failed over): how far their primary has sent
   * is not known, so their clients' ACKs are not judged.
   */
  private untrackedUntilEpoch = 0;
  private nextExpiryUs = 0;
  /** What every TCP comparator treats as noise (from `config.normalize`). */
  private readonly noise: StreamNoise;

  constructor(private readonly d: FlowRegistryDeps) {
    const n = d.config.normalize;
    this.noise = { httpDateToleranceMs: n.httpDate ? n.httpDateToleranceMs : null };
    this.policy = new FlowPolicyTable(d.config.flowPolicy);
    // Half-open connections (a client SYN and nothing after) go first when the table is full.
    this.table = new FlowTable<ShadowFlow>(d.config.maxFlows, (e, why) => this.onEvict(e, why), (flow) => flow.halfOpen);
    this.ingressLookup = new FlowLookup(this.table, 'ingress');
    this.egressLookup = [new FlowLookup(this.table, 'egress'), new FlowLookup(this.table, 'egress')];
  }

  handleEvent(ev: StageEvent): void {
    // Every flow restarts comparison after a checkpoint; each does so lazily, on its next frame (`settle`).
    if (ev.type === 'checkpoint-done') this.checkpointEpoch++;
    else if (ev.type === 'degraded' || ev.type === 'failover') this.untracked();
    // The release stage (before this one) has released or discarded every held frame.
    if (ev.type === 'checkpoint-done' || ev.type === 'degraded' || ev.type === 'failover' || ev.type === 'backup-lost') this.evictedHeld.clear();
  }

  /** The primary's output now goes unfollowed: flows alive until the next checkpoint lose track of it. */
  untracked(): void {
    this.untrackedUntilEpoch = this.checkpointEpoch + 1;
  }

  /** Whether everything the primary sent on this flow went through the comparator (its stream end is where the primary stands). */
  followed(flow: ShadowFlow): boolean {
    return flow.bornEpoch >= this.untrackedUntilEpoch;
  }

  counters(): Record<string, number> {
    return {
      created: this.created, evicted: this.table.evictions, active: this.table.size, carried: this.carried, unprotected: this.unprotected,
      evicted_open: this.evictedOpen, evicted_resumed_unprotected: this.resumedUnprotected, midstream_unprotected: this.midstreamUnprotected, reopened: this.reopened,
      policy_pass_flows: this.policyPass, policy_drop_backup_only_flows: this.policyDropBackupOnly,
    };
  }

  /** Brings a flow up to the last checkpoint before it handles a frame. */
  settle(flow: ShadowFlow): ShadowFlow {
    if (flow.epoch !== this.checkpointEpoch) {
      flow.epoch = this.checkpointEpoch;
      if (flow.mode === 'compare') flow.resync(this.d.config.resync);
      else if (flow.policy === 'pass' && this.d.config.resync === 'copy') flow.resyncPassed();
    }
    return flow;
  }

  newFlow(key: string, f: DecodedFrame, dir: 'ingress' | 'egress'): ShadowFlow {
    this.created++;
    const d = this.d;
    const flow = new ShadowFlow(key, flowProtocolOf(f), d.held, d.backupCopies, d.totals, d.config.captureDivergence, d.standbyCopies, d.config.compare.datagramWindow, this.noise);
    flow.epoch = flow.bornEpoch = this.checkpointEpoch;
    flow.serial = this.created;
    const action = d.replicas.standby ? this.policy.match(f, dir) : 'compare';
    if (!d.replicas.standby) {
      flow.mode = 'solo';
      this.unprotected++;
    } else if (action !== 'compare') {
      // Decided once: the same 4-tuple gets the same answer for its whole life.
      flow.mode = 'solo';
      flow.policy = action;
      flow.passFed = action === 'pass';
      this.unprotected++;
      if (action === 'pass') this.policyPass++;
      else this.policyDropBackupOnly++;
    } else if (f.l4 === 'tcp' && !(f.tcp.flags & TcpFlag.SYN)) {
      if (this.evictedKeys.size > 0 && this.evictedKeys.delete(key)) {
        // An evicted connection speaking again: never compared from raw sequence numbers, never passed silently.
        flow.mode = 'solo';
        this.unprotected++;
        this.resumedUnprotected++;
        // Its output passes unchecked from now on: the part still held goes first, in the order the primary sent it.
        const old = this.evictedHeld.get(key);
        this.evictedHeld.delete(key);
        d.evictedResumed?.(flow, old ? old.releaseAll() : 0);
      } else if (d.config.resync === 'align') {
        // A connection that began before this bridge saw it (started or restarted under traffic). With `align`
        // the backup keeps its own sequence space, which only the SYNs tell: its copy of this connection can
        // never be compared or fed, and each checkpoint asked for it would be wasted until the client's budget
        // ran out. It goes on unprotected from the start. (With `copy` the first checkpoint gives the backup
        // the primary's sequence space, and the flow is compared from then on.)
        flow.mode = 'solo';
        this.unprotected++;
        this.midstreamUnprotected++;
      }
    }
    return flow;
  }

  /**
   * A client SYN on a flow that is not compared: a flow carried over from a
   * failover, or one left unprotected (no backup at its birth, over its
   * checkpoint budget, reset as wedged). When the SYN opens a new connection
   * on the 4-tuple (the client's ISN is not the one this flow began with),
   * the old flow is done: its translation (carried over: the old
   * connection's deltas and released point) would make the new connection's
   * frames count as already received and drop them, and the new one deserves
   * comparison if there is a backup. It is replaced by a fresh flow, as if
   * the old one had expired. `pass` and `drop-backup-only` flows keep their
   * flow (the policy is for the 4-tuple's whole life), as do flows waiting
   * to reset their ends after a failover (`resetDone`). Returns the entry to
   * use.
   */
  reopen(entry: FlowEntry<ShadowFlow>, f: DecodedFrame, nowUs: number): FlowEntry<ShadowFlow> {
    const old = entry.state;
    if (old.mode === 'compare' || old.policy !== 'compare' || old.resetAfterFailover || !old.tcp) return entry;
    const client = old.tcp.client;
    if (client.synSeen && client.seqBase === f.tcp.seq) return entry; // its own SYN, again
    // Unprotected and still no backup: a fresh flow would be the same.
    if (old.mode === 'solo' && !this.d.replicas.standby) return entry;
    this.keepReport(old);
    if (old.mode === 'carried') this.carried--;
    old.standbyLog.clear();
    if (old.held.length > 0) old.held.releaseAll();
    this.table.delete(entry.key);
    this.reopened++;
    return this.table.getOrCreate(entry.key, nowUs, (key) => this.newFlow(key, f, 'ingress'));
  }

  nonIpFlow(f: DecodedFrame, cls: 'arp' | 'ethertype'): ShadowFlow {
    let name = cls === 'arp' ? `arp vlan ${f.vlanKey}` : `ethertype 0x${f.etherType.toString(16).padStart(4, '0')} vlan ${f.vlanKey}`;
    // A VM that sends random ethertypes or VLANs must not grow this map: beyond the bound they share one flow.
    if (this.nonIp.size >= MAX_NON_IP_FLOWS && !this.nonIp.has(name)) name = 'non-ip other';
    let flow = this.nonIp.get(name);
    const d = this.d;
    if (!flow) {
      flow = new ShadowFlow(name, cls, d.held, d.backupCopies, d.totals, d.config.captureDivergence, d.standbyCopies, d.config.compare.datagramWindow);
      flow.epoch = this.checkpointEpoch;
      flow.serial = ++this.created;
      this.nonIp.set(name, flow);
    }
    // Neighbour traffic has no connection to lose: it is compared again as soon as there is a backup.
    if (flow.mode !== 'compare' && d.replicas.standby) flow.mode = 'compare';
    return this.settle(flow);
  }

  /**
   * A `pass` flow reset after a failover is done with: its ends were reset
   * (it lingers as a closed connection), or its client opens a new
   * connection on the same 4-tuple (which the survivor serves alone).
   */
  resetDone(flow: ShadowFlow, closed: boolean): void {
    if (!flow.resetAfterFailover) return;
    flow.resetAfterFailover = false;
    this.awaitingReset--;
    if (closed) flow.closedSides = BOTH_CLOSED;
    else flow.restartConnection();
  }

  /** Changes a flow's mode, keeping the carried count. */
  setMode(flow: ShadowFlow, mode: FlowMode): void {
    if (flow.mode === 'carried') this.carried--;
    if (mode === 'carried') this.carried++;
    if (mode === 'solo' && flow.mode === 'compare' && flow.protocol !== 'arp' && flow.protocol !== 'ethertype') this.unprotected++;
    flow.mode = mode;
  }

  *all(): IterableIterator<ShadowFlow> {
    for (const e of this.table.entries()) yield e.state;
    yield* this.nonIp.values();
  }

  /** Forgets idle flows (at most once a second). */
  expire(nowUs: number): void {
    if (nowUs < this.nextExpiryUs) return;
    this.nextExpiryUs = nowUs + EXPIRY_INTERVAL_US;
    const c = this.d.config;
    const shortest = Math.min(c.closedTcpLingerMs, c.datagramIdleMs, c.tcpIdleMs, c.halfOpenIdleMs) * 1000;
    this.table.expire(nowUs, (flow) => {
      if (flow.held.length > 0) return Infinity;
      // A SYN that nothing followed (a scan, a spoofed flood, a client that gave up): Linux gives up on its
      // SYN-ACK retransmissions after about a minute too.
      if (flow.halfOpen) return c.halfOpenIdleMs * 1000;
      if (!flow.stream) return c.datagramIdleMs * 1000;
      return flow.bothClosed || flow.stream.rstAgreed ? c.closedTcpLingerMs * 1000 : c.tcpIdleMs * 1000;
    }, shortest);
  }

  /** Every flow's report, in birth order: the newest `reportLimit`, whether still in the table or gone. */
  get reports(): FlowReport[] {
    return this.reportList(this.d.reportLimit);
  }

  /**
   * The newest `limit` flows whose name holds `match` (if given), in birth
   * order. Reports are made only for the flows listed: the table is
   * scanned newest first and the scan stops at `limit`.
   */
  reportList(limit: number, match?: string): FlowReport[] {
    const scan = this.scanReports(limit, match);
    let step = scan.next();
    while (!step.done) step = scan.next();
    return step.value;
  }

  /**
   * reportList in slices: with `match`, each flow's name must be made to be
   * searched (about half a microsecond each), so the scan yields to the event
   * loop every REPORT_SCAN_SLICE flows and frames go on between slices. The
   * flows listed are those found as the scan went.
   */
  async reportListSliced(limit: number, match?: string): Promise<FlowReport[]> {
    const scan = this.scanReports(limit, match);
    let step = scan.next();
    while (!step.done) {
      await new Promise<void>((resolve) => setImmediate(resolve));
      step = scan.next();
    }
    return step.value;
  }

  private *scanReports(limit: number, match?: string): Generator<void, FlowReport[], void> {
    limit = Math.min(limit, this.d.reportLimit);
    if (!(limit > 0)) return [];
    const found: { serial: number; flow?: ShadowFlow; report?: FlowReport }[] = [];
    // The table's entries are in birth order (a Map keeps insertion order; a reused key is a new entry).
    const live = Array.from(this.table.entries(), (e) => e.state);
    let scanned = 0;
    for (let i = live.length - 1, n = 0; i >= 0 && n < limit; i--) {
      const flow = live[i];
      if (match === undefined || flow.name.includes(match)) {
        found.push({ serial: flow.serial, flow });
        n++;
      }
      if (match !== undefined && ++scanned % REPORT_SCAN_SLICE === 0) yield;
    }
    for (const flow of this.nonIp.values()) if (match === undefined || flow.name.includes(match)) found.push({ serial: flow.serial, flow });
    for (const kept of this.departed) if (match === undefined || kept.report.key.includes(match)) found.push(kept);
    found.sort((a, b) => a.serial - b.serial);
    return found.slice(-limit).map((x) => x.report ?? x.flow!.report);
  }

  /** Keeps a departing flow's report among the newest `reportLimit`. */
  private keepReport(flow: ShadowFlow): void {
    const limit = this.d.reportLimit;
    if (limit <= 0) return;
    const kept = { serial: flow.serial, report: flow.report };
    if (this.departed.length < limit) {
      this.departed.push(kept);
      return;
    }
    this.departed[this.departedNext] = kept;
    this.departedNext = (this.departedNext + 1) % limit;
  }

  private onEvict(e: FlowEntry<ShadowFlow>, why: 'lru' | 'idle'): void {
    const flow = e.state;
    this.keepReport(flow);
    if (flow.mode === 'carried') this.carried--;
    if (flow.resetAfterFailover) this.awaitingReset--;
    flow.standbyLog.clear();
    if (flow.tcp && flow.mode === 'compare' && !flow.bothClosed && !flow.halfOpen) {
      this.evictedOpen++;
      if (this.evictedKeys.size >= MAX_EVICTED_KEYS) this.evictedKeys.delete(this.evictedKeys.keys().next().value as string);
      this.evictedKeys.set(e.key, true);
    }
    if (flow.held.length > 0) {
      if (this.evictedKeys.has(e.key)) this.evictedHeld.set(e.key, flow.held);
      this.d.evictedWithHeldOutput(flow, why);
    }
  }
}
