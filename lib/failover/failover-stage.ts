/**
 * FailoverStage: decides that the primary is dead from what the data path
 * sees (silence while the backup answers, an unanswered echo probe), keeps
 * the failover records, and announces the survivor's addresses when asked
 * to. Carrier loss and the agent's word arrive from the bridge; they end in
 * the same `failoverNow` of the pipeline.
 *
 * In:  every frame of the active replica (`noteActive`), every saying frame
 *      of the standby (`noteStandby`), probe replies, time (`tick`), events.
 * Out: probes to the active replica; a call to `declareDead`; gratuitous
 *      ARP / unsolicited NA at failover (config `failover.announce`);
 *      counters.
 */
import { DecodedFrame } from '../packet/frame';
import type { Stage, StageEvent, FailoverRecord } from '../pipeline/events';
import type { FailoverConfig } from '../pipeline/config';
import { ReplicaSet, SlotId } from './roles';
import { SilenceDetector } from './liveness';
import { buildAnnouncement, buildEchoProbe, buildShardedEchoProbe } from './frames';
import { shardOf } from '../dataplane/shard';

/** How often the VM frames kept as templates for probes and announcements are renewed. */
const TEMPLATE_REFRESH_US = 1_000_000;
export const MAX_FAILOVER_HISTORY = 100;

export interface FailoverStageDeps {
  config: FailoverConfig;
  replicas: ReplicaSet;
  toReplica(slot: SlotId, frame: Buffer): void;
  toClient(frame: Buffer): void;
  /** The silence detector's verdict: the active replica is dead. */
  declareDead(detail: string, sinceUs: number): void;
}

export class FailoverStage implements Stage {
  readonly stageName = 'failover';
  readonly silence: SilenceDetector;
  readonly history: FailoverRecord[] = [];
  failovers = 0;
  refused = 0;
  /** Failovers that waited for the answer to a checkpoint in flight. */
  deferred = 0;
  backupsLost = 0;
  probesSent = 0;
  /** `run --workers`: the data-plane worker this stage runs in; its probes' replies must come back to it. */
  shard: { count: number; index: number } | null = null;
  probeReplies = 0;
  announcements = 0;
  /** Recent standby frames (VM → client) per IP version: addresses and MACs for probes and announcements. */
  private readonly templates: { v4: Buffer | null; v6: Buffer | null; atUs: number } = { v4: null, v6: null, atUs: -Infinity };

  constructor(private readonly d: FailoverStageDeps) {
    this.silence = new SilenceDetector(d.config);
  }

  counters(): Record<string, number> {
    return {
      failovers: this.failovers,
      refused: this.refused,
      deferred: this.deferred,
      backups_lost: this.backupsLost,
      probes_sent: this.probesSent,
      probe_replies: this.probeReplies,
      silence_false_alarms: this.silence.falseAlarms,
      announcements: this.announcements,
    };
  }

  handleEvent(ev: StageEvent, nowUs: number): void {
    switch (ev.type) {
      case 'failover':
        this.failovers++;
        this.history.push(ev.record);
        if (this.history.length > MAX_FAILOVER_HISTORY) this.history.shift();
        this.silence.reset(nowUs);
        if (this.d.config.announce) this.announce();
        break;
      case 'backup-lost':
        this.backupsLost++;
        this.silence.reset(nowUs);
        break;
      case 'reprotect':
        this.silence.reset(nowUs);
        break;
      default:
        break;
    }
  }

  noteActive(nowUs: number): void {
    this.silence.noteActive(nowUs);
  }

  noteStandby(nowUs: number, f: DecodedFrame, frame: Buffer, segments = 1): void {
    this.silence.noteStandby(nowUs, segments);
    if (nowUs - this.templates.atUs > TEMPLATE_REFRESH_US && (f.l3 === 'ipv4' || f.l3 === 'ipv6')) {
      // Whole frames (decodable), once a second at most.
      if (f.l3 === 'ipv4') this.templates.v4 = Buffer.from(frame);
      else this.templates.v6 = Buffer.from(frame);
      this.templates.atUs = nowUs;
    }
  }

  probeAnswered(): void {
    this.probeReplies++;
  }

  /** While comparing with a backup: is the active replica silent? Probe it, or declare it dead. */
  tick(nowUs: number): void {
    const template = this.templates.v4 ?? this.templates.v6;
    const verdict = this.silence.tick(nowUs, template !== null);
    if (verdict === 'probe') {
      const seq = this.probesSent++;
      const probe = this.shard && this.shard.count > 1 ? buildShardedEchoProbe(template!, seq, this.shard, shardOf) : buildEchoProbe(template!, seq);
      if (probe) this.d.toReplica(this.d.replicas.active.id, probe);
      return;
    }
    if (verdict === 'dead') {
      const since = this.silence.silentSinceUs;
      const ms = ((nowUs - since) / 1000).toFixed(1);
      const probed = this.d.config.probeTimeoutMs > 0 && template !== null;
      this.d.declareDead(`${this.d.replicas.active.name} (primary) silent for ${ms} ms while the backup answered ahead of it${probed ? ', echo probe unanswered' : ''}`, since);
    }
  }

  /** Tells the client side where the VM's addresses are now (the survivor's MAC). */
  private announce(): void {
    for (const t of [this.templates.v4, this.templates.v6]) {
      const frame = t && buildAnnouncement(t);
      if (frame) {
        this.d.toClient(frame);
        this.announcements++;
      }
    }
  }
}
