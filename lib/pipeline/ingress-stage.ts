/**
 * IngressStage: client frames to the replicas.
 *
 *   client frame ──► [held while a checkpoint runs] ──► active replica: as is
 *                                                   └─► standby: ACK, SACK, TSecr in its space
 *   carried-over flow (after failover) ──────────────► promoted replica, in its space
 *
 * Where each goes is read from the ReplicaSet at the moment it goes, so a
 * role change needs nothing here. Events: checkpoint-begin starts holding
 * (bounded: beyond the limit the newest are dropped and counted; TCP
 * retransmits them); checkpoint-done, degraded, failover and backup-lost
 * send what was held to whoever should get it now.
 *
 * Client TCP segments that no connection accepts are not a reason to make
 * the replicas differ (`policy.strayFromClient`, `policy.badTcpFlagsFromClient`):
 *   - flags no TCP accepts (SYN+FIN, SYN+RST, none of ACK/SYN/RST): dropped;
 *   - on a compared connection, a sequence number more than STRAY_WINDOW away
 *     from what the primary acknowledged: to the primary alone (it answers
 *     with a challenge ACK, which goes out as any pure ACK does; the backup
 *     never hears of it);
 *   - an ACK of bytes the primary never sent (no client can acknowledge what
 *     it never received): dropped, as the primary may have sent more than
 *     the bridge has seen yet and would take it, with any junk it carries;
 *   - no flow and no SYN: to both, unchanged (a connection the bridge has
 *     not seen, e.g. from before it started, or a closed port: both answer
 *     with the same reset, which the egress stage releases from the primary
 *     without comparing, as it carries no state).
 * Each is counted by reason (policy actions `client-<reason>/<action>`) and
 * logged the first time.
 *
 * The policy table (`flowPolicy`): a `drop-backup-only` flow's frames go to
 * the active replica alone (datagrams, which have no flow entry here, are
 * matched against the compiled table as they come: same 4-tuple, same
 * answer); a `pass` flow's go to both, translated, as a compared flow's do.
 * A `pass` TCP flow whose primary died is reset instead (EgressStage.carry).
 */
import { TcpFlag } from '../packet/constants';
import { seqDiff, seqGt } from '../packet/seq';
import { rewriteTcp32 } from '../packet/l4-checksum';
import { BACKUP, PRIMARY } from '../compare/tcp-stream';
import { DecodedFrame, decodeFrame } from '../packet/frame';
import { SlabCopier, SlabPool } from '../packet/slab';
import { TcpOptions } from '../packet/tcp-options';
import { learnFromSyn } from '../normalize/tcp';
import { refersToVmSpace, translateForBackup } from '../rewrite/ingress';
import { buildTcpReset } from '../failover/frames';
import type { ReplicaSet, ReplicaSlot, SlotId } from '../failover/roles';
import type { Replicator } from '../replicate/replicator';
import { VIRTIO_NET_HDR_F_NEEDS_CSUM, VirtioNetHeader } from '../io/port';
import { PipelineConfig } from './config';
import { Stage, StageEvent } from './events';
import { FlowRegistry } from './flows';
import { NOTHING_HELD, ShadowFlow } from './shadow-flow';
import type { FrameCounts } from './frame-counts';

/**
 * A token bucket holding one second's worth of `rate` (0: no limit), and
 * when it last said how many it refused (at most every 10 s).
 */
class RateBudget {
  private tokens = NaN;
  private atUs = 0;
  private loggedUs = -Infinity;
  private sinceLog = 0;

  admit(rate: number, nowUs: number): boolean {
    if (!(rate > 0)) return true;
    this.tokens = Number.isNaN(this.tokens) ? rate : Math.min(rate, this.tokens + (Math.max(0, nowUs - this.atUs) * rate) / 1e6);
    this.atUs = nowUs;
    if (this.tokens >= 1) {
      this.tokens -= 1;
      return true;
    }
    this.sinceLog++;
    return false;
  }

  /** Calls `log` with the count refused since the last call, if 10 s have passed since then. */
  logNow(nowUs: number, log: (refused: number) => void): void {
    if (nowUs - this.loggedUs < 10_000_000) return;
    log(this.sinceLog);
    this.loggedUs = nowUs;
    this.sinceLog = 0;
  }
}

/** A client frame kept for later (during a checkpoint, or until a flow's backup delta is known). */
export interface HeldIngress {
  frame: Buffer;
  vnet: VirtioNetHeader | undefined;
}

const MAX_INGRESS_HELD_PER_FLOW = 256;

/**
 * How far (bytes, either way) a client's sequence number may stand from what
 * the primary acknowledged and still be taken as its own: far above any
 * receive window Linux opens by default (a few MiB), far below 2^31.
 */
export const STRAY_WINDOW = 64 << 20;

export type StrayReason = 'bad-flags' | 'out-of-window' | 'ack-unsent' | 'no-flow';

/** Whether no TCP would take a segment with these flags, whatever its state. */
export function badTcpFlags(flags: number): boolean {
  if (flags & TcpFlag.SYN) return (flags & (TcpFlag.FIN | TcpFlag.RST)) !== 0;
  return (flags & (TcpFlag.ACK | TcpFlag.RST)) === 0;
}

export interface IngressDeps {
  config: PipelineConfig;
  replicas: ReplicaSet;
  replicator: Replicator;
  flows: FlowRegistry;
  counts: FrameCounts;
  toReplica(slot: SlotId, frame: Buffer, vnet?: VirtioNetHeader): void;
  /** Resets of `pass` flows after a failover. */
  toClient?(frame: Buffer): void;
  log?(level: 'info' | 'warn', event: string, fields: Record<string, unknown>): void;
}

export class IngressStage implements Stage {
  readonly stageName = 'ingress';
  frames = 0;
  heldFrames = 0;
  holdDropped = 0;
  translated = 0;
  badTcpOptions = 0;
  /** Client SYNs dropped because new connections came faster than `policy.newFlowsPerSecond`. */
  synOverBudget = 0;
  /** ACKs to the backup lowered to what it has sent (resync align; see sendTranslated). */
  backupAcksClamped = 0;
  /** Client frames not copied to a stale backup (DEGRADED, `resync: copy`). */
  degradedNotToBackup = 0;
  /** Client frames kept from the backup by a `drop-backup-only` rule. */
  policyPrimaryOnly = 0;
  /** Client segments of `pass` flows whose primary died, answered with resets. */
  policyPassResets = 0;
  /** Client segments no connection accepts, dropped because they came faster than `policy.straysPerSecond`. */
  straysOverBudget = 0;
  private readonly newFlows = new RateBudget();
  private readonly strayBudget = new RateBudget();
  /** Client TCP segments no connection accepts, by reason. */
  readonly strays: Record<StrayReason, number> = { 'bad-flags': 0, 'out-of-window': 0, 'ack-unsent': 0, 'no-flow': 0 };
  private readonly frame = new DecodedFrame();
  private readonly opts = new TcpOptions();
  /** Copies nobody releases explicitly (held ingress). */
  private readonly copier = new SlabCopier();
  /** Translated copies: they only have to last until the ports are flushed. */
  private readonly copies = new SlabPool(true, true);
  private hold: HeldIngress[] = [];
  private holdBytes = 0;
  private nowUs = 0;

  constructor(private readonly d: IngressDeps) {}

  fromClient(frame: Buffer, nowUs: number, vnet?: VirtioNetHeader): void {
    this.nowUs = nowUs;
    this.frames++;
    if (this.d.replicator.holdingIngress) {
      this.holdFrame(frame, vnet);
      return;
    }
    this.forward(frame, nowUs, vnet);
  }

  handleEvent(ev: StageEvent, nowUs: number): void {
    this.nowUs = nowUs;
    switch (ev.type) {
      case 'checkpoint-begin':
        break; // holding follows the replicator's state (holdingIngress)
      case 'checkpoint-done':
      case 'degraded':
      case 'failover':
      case 'backup-lost':
        this.flushHold();
        break;
      default:
        break;
    }
  }

  counters(): Record<string, number> {
    const st = this.strays;
    return {
      frames: this.frames, held: this.heldFrames, hold_dropped: this.holdDropped, translated: this.translated, bad_tcp_options: this.badTcpOptions, holding: this.hold.length,
      syn_over_budget: this.synOverBudget, strays_over_budget: this.straysOverBudget, degraded_not_to_backup: this.degradedNotToBackup, backup_acks_clamped: this.backupAcksClamped,
      policy_primary_only: this.policyPrimaryOnly, policy_pass_resets: this.policyPassResets,
      stray_bad_flags: st['bad-flags'], stray_out_of_window: st['out-of-window'], stray_ack_unsent: st['ack-unsent'], stray_no_flow: st['no-flow'],
    };
  }

  /** The memory of translated copies may be reused (the ports were flushed). */
  endBreath(): void {
    this.copies.endBreath();
  }

  /**
   * Who gets the backup's copy of client frames now. DEGRADED with
   * `resync: copy`: nobody. The backup is stale, failover to it is refused,
   * and the next checkpoint overwrites it whole, so its copy is only work,
   * and for connections born meanwhile (whose sequence space the bridge
   * does not follow) its answer would be a reset. With `resync: align` the
   * backup keeps serving, translated (the egress stage still learns each
   * side's SYN).
   */
  private standbyNow(): ReplicaSlot | null {
    const standby = this.d.replicas.standby;
    if (standby && this.d.replicator.state === 'DEGRADED' && this.d.config.resync === 'copy') {
      this.degradedNotToBackup++;
      return null;
    }
    return standby;
  }

  /** Sends a flow's client frames that waited for its backup delta (or for a failover). */
  flushFlow(flow: ShadowFlow): void {
    const waiting = flow.ingressHeld;
    flow.ingressHeld = NOTHING_HELD;
    for (const held of waiting) {
      const f = decodeFrame(held.frame, this.frame);
      if (flow.mode === 'carried') {
        const c = flow.carried!;
        this.sendTranslated(f, held.frame, c.slot, c.seqDelta, c.tsDelta, held.vnet);
        continue;
      }
      const standby = this.d.replicas.standby;
      if (standby && flow.tcp) this.sendTranslated(f, held.frame, standby.id, flow.tcp.seqDelta, flow.tcp.tsDelta, held.vnet, this.backupAckLimit(flow), flow.tcp.clientWindowShift);
    }
  }

  private holdFrame(frame: Buffer, vnet: VirtioNetHeader | undefined): void {
    const limit = this.d.config.ingressHold;
    if (this.hold.length >= limit.frames || this.holdBytes + frame.length > limit.bytes) {
      this.holdDropped++;
      return;
    }
    this.hold.push({ frame: this.copier.copy(frame), vnet });
    this.holdBytes += frame.length;
    this.heldFrames++;
  }

  private flushHold(): void {
    const held = this.hold;
    this.hold = [];
    this.holdBytes = 0;
    for (const h of held) this.forward(h.frame, this.nowUs, h.vnet);
  }

  private forward(frame: Buffer, nowUs: number, vnet: VirtioNetHeader | undefined): void {
    const d = this.d;
    const active = d.replicas.active.id;
    const standby = this.standbyNow();
    const f = decodeFrame(frame, this.frame);
    if (f.error) {
      d.counts.malformed(f.error, 'client');
      if (d.config.policy.malformedFromClient === 'drop') return;
      d.toReplica(active, frame, vnet);
      if (standby) d.toReplica(standby.id, frame, vnet);
      return;
    }
    if (f.l4 !== 'tcp' || f.fragment) {
      d.toReplica(active, frame, vnet);
      if (standby && !this.keptFromBackup(f)) d.toReplica(standby.id, frame, vnet);
      return;
    }
    const flags = f.tcp.flags;
    if (badTcpFlags(flags)) {
      const action = d.config.policy.badTcpFlagsFromClient;
      this.stray('bad-flags', action === 'drop' ? 'drop' : 'forward-both');
      if (action === 'drop') return;
      d.toReplica(active, frame, vnet);
      if (standby) d.toReplica(standby.id, frame, vnet);
      return;
    }
    const isSyn = (flags & TcpFlag.SYN) !== 0;
    const flows = d.flows;
    // A SYN that would open a flow spends a token first; the lookup without creating is cheap.
    if (isSyn && !(flags & TcpFlag.ACK) && !flows.ingressLookup.find(f, nowUs) && !this.admitNewFlow(nowUs)) return;
    let entry = flows.ingressLookup.find(f, nowUs, isSyn ? (key) => flows.newFlow(key, f, 'ingress') : undefined);
    if (entry && isSyn && !(flags & TcpFlag.ACK) && entry.state.mode !== 'compare') entry = flows.reopen(entry, f, nowUs);
    if (!entry) {
      // A flow no VM has spoken in: nothing to translate (the delta is zero).
      if (!this.admitStray('no-flow', nowUs)) return;
      this.stray('no-flow', 'forward-both');
      d.toReplica(active, frame, vnet);
      if (standby && !this.keptFromBackup(f)) d.toReplica(standby.id, frame, vnet);
      return;
    }
    const flow = flows.settle(entry.state);
    if (flow.resetAfterFailover) {
      if (!isSyn || (flags & TcpFlag.ACK)) {
        this.resetPassFlow(f, active);
        flows.resetDone(flow, true);
        return;
      }
      flows.resetDone(flow, false);
    }
    if (flow.mode === 'compare' && standby && !isSyn && d.replicator.comparing) {
      const reason = this.unaccepted(flow, f.tcp.seq, f.tcp.ack, (flags & TcpFlag.ACK) !== 0);
      if (reason) {
        const policy = d.config.policy.strayFromClient;
        // The primary may have sent more than the bridge has seen yet, so it might take an ACK of unsent bytes, and the junk with it.
        const action = policy === 'both' ? 'forward-both' : policy === 'drop' || reason === 'ack-unsent' ? 'drop' : 'forward-primary';
        if (action !== 'drop' && !this.admitStray(reason, nowUs)) return;
        this.stray(reason, action);
        if (action === 'drop') return;
        if (action === 'forward-primary') {
          d.toReplica(active, frame, vnet);
          return;
        }
      }
    }
    // A reset the flow accepts: the client's end of the connection is gone (see EgressStage.unmatchedTooLong).
    if (flags & TcpFlag.RST) flow.clientResetMs = Math.floor(nowUs / 1000);
    // Its window, for the timeout trigger (a full window stops both replicas: pipeline.tick).
    else if (flow.tcp && (flags & TcpFlag.ACK) && !isSyn) flow.tcp.noteClientAck(f.tcp.ack, f.tcp.window, nowUs, flow.stream?.started ? flow.stream.endOf(PRIMARY) : null);
    // How long the primary then stays quiet of its own accord (TcpConnectionState.primaryPauseMs).
    if (flow.tcp) {
      if (f.payloadLength > 0) flow.tcp.noteClientData();
      else if ((flags & TcpFlag.ACK) && !isSyn && !(flags & TcpFlag.RST)) flow.tcp.noteClientPureAck(f.tcp.ack, nowUs, flow.stream?.started ? flow.stream.endOf(PRIMARY) : null);
    }
    // The client acknowledged something: no longer a half-open flow that a SYN flood may push out.
    if (flow.tcp && !flow.tcp.client.ackSeen && (f.tcp.flags & TcpFlag.ACK)) flow.tcp.client.ackSeen = true;
    if (flow.mode === 'carried') {
      const c = flow.carried!;
      this.sendTranslated(f, frame, c.slot, c.seqDelta, c.tsDelta, vnet);
      return;
    }
    d.toReplica(active, frame, vnet);
    const tcp = flow.tcp;
    if (!flow.backupFed || !standby || !tcp) {
      if (standby && flow.policy === 'drop-backup-only') this.policyPrimaryOnly++;
      return;
    }
    if (isSyn && !(f.tcp.flags & TcpFlag.ACK)) {
      learnFromSyn(f, tcp.client, this.opts);
      // The shift the client's window is scaled by, unless the primary's SYN-ACK turns scaling off (egress).
      tcp.clientWindowShift = this.opts.windowScale >= 0 ? Math.min(this.opts.windowScale, 14) : 0;
    }
    if (refersToVmSpace(f) && (!tcp.backupDeltaKnown || flow.ingressHeld.length > 0)) {
      if (flow.ingressHeld.length >= MAX_INGRESS_HELD_PER_FLOW) {
        flow.ingressHeld.shift();
        this.holdDropped++;
      }
      if (flow.ingressHeld === NOTHING_HELD) flow.ingressHeld = [];
      flow.ingressHeld.push({ frame: this.copier.copy(frame), vnet });
      return;
    }
    this.sendTranslated(f, frame, standby.id, tcp.seqDelta, tcp.tsDelta, vnet, this.backupAckLimit(flow), tcp.clientWindowShift);
  }

  /** Whether the policy table keeps this flowless client frame from the backup (`drop-backup-only`). */
  private keptFromBackup(f: DecodedFrame): boolean {
    const table = this.d.flows.policy;
    if (!table.dropsBackup || table.match(f, 'ingress') !== 'drop-backup-only') return false;
    this.policyPrimaryOnly++;
    return true;
  }

  /**
   * A client segment on a `pass` flow whose primary died (EgressStage.carry):
   * the client gets a reset at its own ACK (what it expects next from us),
   * the survivor one at the client's sequence number (what it expects next
   * from the client: it was fed every client segment); the segment itself
   * goes nowhere.
   */
  private resetPassFlow(f: DecodedFrame, survivor: SlotId): void {
    this.policyPassResets++;
    if (f.tcp.flags & TcpFlag.RST) return;
    const toSurvivor = buildTcpReset(f, false, f.tcp.seq);
    if (toSurvivor) this.d.toReplica(survivor, toSurvivor);
    if (!(f.tcp.flags & TcpFlag.ACK)) return;
    const toClient = buildTcpReset(f, true, f.tcp.ack);
    if (toClient) this.d.toClient?.(toClient);
  }

  /**
   * Why the primary would not take this segment as part of the connection
   * (null: it would). Judged only once the primary has acknowledged
   * something and, for the ACK, once its stream has a known origin.
   */
  private unaccepted(flow: ShadowFlow, seq: number, ack: number, hasAck: boolean): StrayReason | null {
    const tcp = flow.tcp;
    if (!tcp) return null;
    const p = tcp.primary;
    if (p.ackSeen && Math.abs(seqDiff(seq, p.maxAck)) > STRAY_WINDOW) return 'out-of-window';
    const stream = flow.stream!;
    // An ACK past the furthest the primary has sent acknowledges bytes never sent. Not past the comparator's
    // contiguous end: a primary frame the ring dropped leaves that end behind what the client received
    // (released after it, by a checkpoint), and dropping the client's ACKs then stalled the connection for good.
    const sent = p.sndNxt !== null ? (p.sndNxt - p.seqBase) >>> 0 : stream.endOf(PRIMARY);
    if (hasAck && p.synSeen && stream.started && this.d.flows.followed(flow) && seqGt((ack - p.seqBase) >>> 0, sent)) return 'ack-unsent';
    return null;
  }

  /**
   * The new-connection budget (`policy.newFlowsPerSecond`): a token bucket
   * of one second's worth, refilled with frame time. A refusal is counted,
   * and logged at the first one of an episode (then at most every 10 s, with
   * the count since).
   */
  private admitNewFlow(nowUs: number): boolean {
    if (this.newFlows.admit(this.d.config.policy.newFlowsPerSecond, nowUs)) return true;
    this.synOverBudget++;
    this.d.counts.policy('client-new-flow-over-budget', 'drop');
    this.newFlows.logNow(nowUs, (dropped) => this.d.log?.('warn', 'new-flow-budget', {
      perSecond: this.d.config.policy.newFlowsPerSecond, dropped, note: 'SYNs beyond policy.newFlowsPerSecond are dropped; the clients send them again',
    }));
    return false;
  }

  /** Whether a stray segment may still be forwarded this second (`policy.straysPerSecond`); counted and dropped if not. */
  private admitStray(reason: StrayReason, nowUs: number): boolean {
    if (this.strayBudget.admit(this.d.config.policy.straysPerSecond, nowUs)) return true;
    this.straysOverBudget++;
    this.d.counts.policy(`client-${reason}`, 'drop-over-budget');
    this.strayBudget.logNow(nowUs, (dropped) => this.d.log?.('warn', 'stray-budget', {
      perSecond: this.d.config.policy.straysPerSecond, dropped, note: 'client segments no connection accepts, beyond policy.straysPerSecond, are dropped',
    }));
    return false;
  }

  private stray(reason: StrayReason, action: string): void {
    if (this.strays[reason]++ === 0) {
      this.d.log?.('warn', 'stray-client-segment', { reason, action, note: 'first of its kind; further ones are counted (policy actions client-' + reason + ')' });
    }
    this.d.counts.policy(`client-${reason}`, action);
  }

  /** The highest ACK the backup may get on this flow (resync align, while comparing), null: no limit. */
  private backupAckLimit(flow: ShadowFlow): number | null {
    if (this.d.config.resync !== 'align' || !this.d.replicator.comparing) return null;
    return flow.tcp?.backup.sndNxt ?? null;
  }

  /**
   * `ackLimit`: the backup's snd_nxt as far as the bridge has seen (resync
   * align only). After an aligning checkpoint releases the primary's held
   * output, the client acknowledges bytes a trailing backup has not sent
   * yet; its TCP drops such ACKs as acknowledging unsent data, its window
   * stops opening and it stalls, which made the next `timeout` checkpoint,
   * and the next (issue 9's timeout storms). Acknowledging what it did send
   * keeps it going until it catches up.
   */
  private sendTranslated(f: DecodedFrame, frame: Buffer, slot: SlotId, seqDelta: number, tsDelta: number, vnet: VirtioNetHeader | undefined, ackLimit: number | null = null, windowShift = -1): void {
    const hasAck = (f.tcp.flags & TcpFlag.ACK) !== 0;
    const translatedAck = (f.tcp.ack + seqDelta) >>> 0;
    const clamp = hasAck && ackLimit !== null && seqGt(translatedAck, ackLimit);
    if (((seqDelta === 0 && tsDelta === 0) || !hasAck) && !clamp) {
      this.d.toReplica(slot, frame, vnet);
      return;
    }
    const copy = this.copies.copy(frame);
    const slab = this.copies.lastSlab;
    f.rebind(copy);
    // A partial checksum (left for the device) does not cover the fields we change: leave it.
    const partial = vnet !== undefined && (vnet.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) !== 0;
    if (!translateForBackup(f, seqDelta, tsDelta, this.opts, partial)) this.badTcpOptions++;
    if (clamp) {
      rewriteTcp32(f, f.tcp.offset + 8, ackLimit!, partial);
      this.backupAcksClamped++;
      // The window grows by what the ACK lost, so its right edge stays the client's: a lower edge would
      // hold the backup short of the primary, and under a small window it then waits for its persist
      // timer (hundreds of ms) while the primary's bytes wait in the bridge (the soak's timeouts).
      if (windowShift >= 0) {
        const word = f.dv.getUint32(f.tcp.offset + 12);
        const units = Math.ceil(seqDiff(ackLimit!, translatedAck) / 2 ** windowShift);
        const window = Math.min(0xffff, (word & 0xffff) + units);
        rewriteTcp32(f, f.tcp.offset + 12, ((word & 0xffff0000) | window) >>> 0, partial);
      }
    }
    this.translated++;
    this.d.toReplica(slot, copy, vnet);
    this.copies.release(slab); // reusable after the next flush (`endBreath`)
  }
}
