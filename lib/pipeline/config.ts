/** Settings of the data path, with the defaults a production bridge starts from. */
import { ReplicatorConfig, DEFAULT_REPLICATOR_CONFIG } from '../replicate/replicator';
import type { CheckpointBudgetConfig } from '../replicate/budget';

/** What happens to a class of frames the comparator does not handle as a flow. */
export type FrameAction = 'forward-primary' | 'compare' | 'drop';

export interface FramePolicy {
  /** ARP from the VMs. Clones answer alike; the primary's goes out at once. */
  arp: FrameAction;
  /** Ethertypes other than IPv4, IPv6 and ARP (LLDP, …). */
  otherEtherTypes: FrameAction;
  /** Frames from a VM that cannot be decoded. */
  malformedFromVm: 'drop' | 'forward-primary';
  /** Frames from the client side that cannot be decoded: the VMs judge them, as they would without us. */
  malformedFromClient: 'forward' | 'drop';
  /**
   * Client TCP segments that no live connection of the replicas would accept.
   * `primary-only` (default): a sequence number far outside the window goes
   * to the primary alone (both would only answer with a challenge ACK, but
   * at different moments of their streams they may answer differently), and
   * an ACK of bytes the primary never sent is dropped (a backup ahead of the
   * primary, or a primary ahead of what the bridge has seen, would take it
   * and any junk it carries). `both` sends them to both, as without the
   * bridge; `drop` sends them to nobody.
   */
  strayFromClient: 'primary-only' | 'both' | 'drop';
  /**
   * Client TCP segments whose flags no TCP accepts (SYN with FIN or RST; no
   * ACK, SYN or RST at all, as in NULL, FIN and Xmas scans): dropped, as
   * Linux's conntrack calls them INVALID. `forward` sends them to both.
   */
  badTcpFlagsFromClient: 'drop' | 'forward';
}

export interface QueueLimits {
  bytes: number;
  frames: number;
}

/** How the death of a replica is detected and what a promotion announces. */
export interface FailoverConfig {
  /** The primary silent this long while the backup answers the same flows: suspected dead (0: off). */
  silenceMs: number;
  /** Then an ICMP echo probe to the primary alone; no frame from it this long: dead (0: no probe). */
  probeTimeoutMs: number;
  /** Backup frames needed to call the primary silent. */
  minStandbyFrames: number;
  /** A port whose carrier goes down counts as dead once it has stayed down this long (flaps are ignored). */
  carrierHoldMs: number;
  /** After a promotion, send a gratuitous ARP and an unsolicited neighbour advertisement for the VM's addresses. */
  announce: boolean;
}

export interface PipelineConfig {
  maxFlows: number;
  /** A primary frame unmatched for longer than this asks for a checkpoint (reason `timeout`). */
  maxUnmatchedAgeMs: number;
  /** High-water marks for held output, per flow and in total (reason `queue`). */
  flowHighWater: QueueLimits;
  totalHighWater: QueueLimits;
  /** Client frames held while a checkpoint runs; beyond this the newest are dropped (TCP retransmits them). */
  ingressHold: QueueLimits;
  /** Idle time after which a flow is forgotten: closed TCP, open TCP, others. */
  closedTcpLingerMs: number;
  tcpIdleMs: number;
  datagramIdleMs: number;
  policy: FramePolicy;
  replicator: ReplicatorConfig;
  failover: FailoverConfig;
  /** Checkpoints the flows of one client source may cause per window; beyond it they go on unprotected. */
  checkpointBudget: CheckpointBudgetConfig;
  /**
   * What a finished checkpoint means for each flow's backup side. `copy`:
   * the backup is an exact copy of the primary (live agents): its sequence
   * space becomes the primary's. `align`: the backup's recorded output goes
   * on in its own space (replay of captures): comparison restarts from where
   * each side stands.
   */
  resync: 'copy' | 'align';
  /** Keep the last frames of each side per flow, to write one pcap per mismatch. */
  captureDivergence: boolean;
  /** How often each flow's releases are logged (`released` lines, read by `shadowvm report`); 0: never. */
  releaseLogMs: number;
}

export const DEFAULT_PIPELINE_CONFIG: PipelineConfig = {
  maxFlows: 65536,
  maxUnmatchedAgeMs: 100,
  flowHighWater: { bytes: 8 << 20, frames: 8192 },
  totalHighWater: { bytes: 128 << 20, frames: 131072 },
  ingressHold: { bytes: 32 << 20, frames: 32768 },
  closedTcpLingerMs: 10_000,
  tcpIdleMs: 2 * 3600_000,
  datagramIdleMs: 300_000,
  policy: { arp: 'forward-primary', otherEtherTypes: 'drop', malformedFromVm: 'drop', malformedFromClient: 'forward', strayFromClient: 'primary-only', badTcpFlagsFromClient: 'drop' },
  replicator: DEFAULT_REPLICATOR_CONFIG,
  failover: { silenceMs: 20, probeTimeoutMs: 10, minStandbyFrames: 2, carrierHoldMs: 7, announce: false },
  checkpointBudget: { perSource: 20, windowMs: 10_000 },
  resync: 'copy',
  captureDivergence: false,
  releaseLogMs: 1000,
};

export class ConfigError extends Error {
  constructor(readonly setting: string, detail: string) {
    super(`invalid setting ${setting}: ${detail}`);
    this.name = 'ConfigError';
  }
}

/** Merges a partial config over the defaults and checks every number. */
export function makePipelineConfig(partial: Partial<PipelineConfig> = {}): PipelineConfig {
  const c: PipelineConfig = {
    ...DEFAULT_PIPELINE_CONFIG,
    ...partial,
    policy: { ...DEFAULT_PIPELINE_CONFIG.policy, ...partial.policy },
    replicator: { ...DEFAULT_PIPELINE_CONFIG.replicator, ...partial.replicator },
    failover: { ...DEFAULT_PIPELINE_CONFIG.failover, ...partial.failover },
    checkpointBudget: { ...DEFAULT_PIPELINE_CONFIG.checkpointBudget, ...partial.checkpointBudget },
  };
  const positive: [string, number][] = [
    ['maxFlows', c.maxFlows],
    ['maxUnmatchedAgeMs', c.maxUnmatchedAgeMs],
    ['flowHighWater.bytes', c.flowHighWater.bytes],
    ['flowHighWater.frames', c.flowHighWater.frames],
    ['totalHighWater.bytes', c.totalHighWater.bytes],
    ['totalHighWater.frames', c.totalHighWater.frames],
    ['ingressHold.bytes', c.ingressHold.bytes],
    ['ingressHold.frames', c.ingressHold.frames],
    ['replicator.checkpointTimeoutMs', c.replicator.checkpointTimeoutMs],
  ];
  for (const [name, v] of positive) {
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) throw new ConfigError(name, `must be a positive number, got ${String(v)}`);
  }
  const nonNegative: [string, number][] = [
    ['failover.silenceMs', c.failover.silenceMs],
    ['failover.probeTimeoutMs', c.failover.probeTimeoutMs],
    ['failover.carrierHoldMs', c.failover.carrierHoldMs],
    ['failover.minStandbyFrames', c.failover.minStandbyFrames],
    ['replicator.reprotectTimeoutMs', c.replicator.reprotectTimeoutMs],
    ['checkpointBudget.perSource', c.checkpointBudget.perSource],
    ['checkpointBudget.windowMs', c.checkpointBudget.windowMs],
    ['releaseLogMs', c.releaseLogMs],
  ];
  for (const [name, v] of nonNegative) {
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw new ConfigError(name, `must be zero or a positive number, got ${String(v)}`);
  }
  if (typeof c.failover.announce !== 'boolean') throw new ConfigError('failover.announce', 'must be true or false');
  if (!(c.replicator.maxIntervalMs >= 0)) throw new ConfigError('replicator.maxIntervalMs', 'must be 0 (off) or positive');
  const actions = ['forward-primary', 'compare', 'drop'];
  if (!actions.includes(c.policy.arp)) throw new ConfigError('policy.arp', `must be one of ${actions.join(', ')}`);
  if (!actions.includes(c.policy.otherEtherTypes)) throw new ConfigError('policy.otherEtherTypes', `must be one of ${actions.join(', ')}`);
  const choice = (name: string, v: string, allowed: string[]) => {
    if (!allowed.includes(v)) throw new ConfigError(name, `must be one of ${allowed.join(', ')}`);
  };
  choice('policy.malformedFromVm', c.policy.malformedFromVm, ['drop', 'forward-primary']);
  choice('policy.malformedFromClient', c.policy.malformedFromClient, ['forward', 'drop']);
  choice('policy.strayFromClient', c.policy.strayFromClient, ['primary-only', 'both', 'drop']);
  choice('policy.badTcpFlagsFromClient', c.policy.badTcpFlagsFromClient, ['drop', 'forward']);
  if (!['copy', 'align'].includes(c.resync)) throw new ConfigError('resync', 'must be copy or align');
  return c;
}
