/** Settings of the data path, with the defaults a production bridge starts from. */
import { DEFAULT_GIVE_BACK, GiveBackConfig } from '../control/give-back';
import { ReplicatorConfig, DEFAULT_REPLICATOR_CONFIG } from '../replicate/replicator';
import type { CheckpointBudgetConfig } from '../replicate/budget';
import { UserFacingError } from '../errors';
import { DEFAULT_DATAGRAM_WINDOW, MAX_DATAGRAM_WINDOW } from '../compare/datagram';
import {
  FLOW_POLICY_ACTIONS, FLOW_POLICY_PROTOCOLS, FlowPolicyRule, flowPolicyRuleProblem, parseCidr, parsePortRange,
} from './flow-policy';

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
  /**
   * New client connections (SYNs that open a flow) admitted per second, a
   * token bucket holding one second's worth; 0: no limit. Beyond it, a SYN
   * is dropped before it costs anything (the client sends it again in a
   * second, as when a server's SYN backlog is full) and counted. A SYN flood
   * then makes the bridge and both replicas do a bounded amount of work, and
   * the connections already open keep their share of the machine.
   */
  newFlowsPerSecond: number;
  /**
   * Client TCP segments no connection accepts (no flow and no SYN, or out
   * of a compared connection's window) forwarded per second, a token
   * bucket holding one second's worth; 0: no limit. Beyond it they are
   * dropped and counted: each would cost the bridge and the replicas
   * several frames (both replicas answer, the answers are read), so a
   * client sending garbage cannot take the machine from the connections
   * that are open.
   */
  straysPerSecond: number;
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
  /** Backup frames needed to call the primary silent (a GSO super-frame counts as its segments). */
  minStandbyFrames: number;
  /** With fewer backup frames than that (a lone SYN-ACK or small answer), the silence that calls the primary silent instead (0: never). */
  fewFramesSilenceMs: number;
  /** A port whose carrier goes down counts as dead once it has stayed down this long (flaps are ignored). */
  carrierHoldMs: number;
  /** After a promotion, send a gratuitous ARP and an unsolicited neighbour advertisement for the VM's addresses. */
  announce: boolean;
  /**
   * A failover the bridge decides itself (carrier, silence, manual) while a
   * checkpoint is in flight waits up to this long for the agent's answer,
   * which says which state the backup holds (0: promote at once).
   */
  checkpointWaitMs: number;
}

/** How the replicas' output is compared. */
export interface CompareConfig {
  /**
   * Datagram flows: how far (in positions) a datagram may stand from its
   * equal on the other side and still match it; 1: strict order. A datagram
   * with no equal within it is a mismatch (`datagram-window`).
   */
  datagramWindow: number;
}

/** Differences between the replicas' output that are noise, not disagreement (each off by default). */
export interface NormalizeConfig {
  /**
   * In HTTP/1.x responses, `Date:` header values that differ but are both
   * IMF-fixdates within `httpDateToleranceMs` of each other count as equal
   * (the primary's goes out). Two servers stamp a response a moment apart.
   */
  httpDate: boolean;
  httpDateToleranceMs: number;
}

export interface PipelineConfig {
  maxFlows: number;
  /**
   * How many flows `flows` and the reports list at most: the newest. A flow
   * still in the table is reported from its own counters, made only when
   * asked; one that left it (closed and expired, or evicted) keeps a report
   * while it is among the newest this many.
   */
  flowReports: number;
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
  /** A half-open connection (a client SYN, nothing after it) is forgotten after this long without a frame. */
  halfOpenIdleMs: number;
  datagramIdleMs: number;
  /** A full collection once the flow table has shrunk well below its peak, to give the memory back (control/give-back.ts). */
  memoryGiveBack: GiveBackConfig;
  policy: FramePolicy;
  replicator: ReplicatorConfig;
  failover: FailoverConfig;
  /** Checkpoints the flows of one client source may cause per window; beyond it they go on unprotected. */
  checkpointBudget: CheckpointBudgetConfig;
  compare: CompareConfig;
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
  normalize: NormalizeConfig;
  /**
   * Per-flow policy, first match wins, decided once when a flow is born
   * (flow-policy.ts). `compare` (also when nothing matches); `pass`: the
   * backup still gets the client's frames, its output is discarded and the
   * primary's goes out unchecked; `drop-backup-only`: the backup never sees
   * the flow. Both are unprotected flows, counted.
   */
  flowPolicy: FlowPolicyRule[];
}

/** Rules in `flowPolicy`: each new flow is matched against them in order. */
export const MAX_FLOW_POLICY_RULES = 1024;

export const DEFAULT_PIPELINE_CONFIG: PipelineConfig = {
  maxFlows: 65536,
  flowReports: 4096,
  maxUnmatchedAgeMs: 100,
  flowHighWater: { bytes: 8 << 20, frames: 8192 },
  totalHighWater: { bytes: 128 << 20, frames: 131072 },
  ingressHold: { bytes: 32 << 20, frames: 32768 },
  closedTcpLingerMs: 10_000,
  tcpIdleMs: 2 * 3600_000,
  halfOpenIdleMs: 75_000,
  datagramIdleMs: 300_000,
  memoryGiveBack: DEFAULT_GIVE_BACK,
  policy: { arp: 'forward-primary', otherEtherTypes: 'drop', malformedFromVm: 'drop', malformedFromClient: 'forward', strayFromClient: 'primary-only', badTcpFlagsFromClient: 'drop', newFlowsPerSecond: 2000, straysPerSecond: 2000 },
  replicator: DEFAULT_REPLICATOR_CONFIG,
  failover: { silenceMs: 20, probeTimeoutMs: 10, minStandbyFrames: 2, fewFramesSilenceMs: 100, carrierHoldMs: 7, announce: false, checkpointWaitMs: 2000 },
  checkpointBudget: { perSource: 20, windowMs: 10_000 },
  compare: { datagramWindow: DEFAULT_DATAGRAM_WINDOW },
  resync: 'copy',
  captureDivergence: false,
  releaseLogMs: 1000,
  normalize: { httpDate: false, httpDateToleranceMs: 2000 },
  flowPolicy: [],
};

/** A setting with a bad value, or a key no setting has. `setting` is its path (`policy.arp`). */
export class ConfigError extends UserFacingError {
  constructor(readonly setting: string, readonly detail: string, readonly file?: string) {
    super(`${file ? `${file}: ` : ''}invalid setting ${setting}: ${detail}`);
  }
}

/**
 * What a setting may hold. A `section` lists its keys; any other key in it
 * is an error (a misspelt key silently ignored would leave a default in place
 * that the administrator believes changed).
 */
export type SettingRule =
  | { kind: 'number'; min: number; minExclusive?: boolean; max?: number; integer?: boolean; note?: string }
  | { kind: 'choice'; values: readonly string[] }
  | { kind: 'boolean' }
  | { kind: 'string'; check: (v: string) => string | undefined; describe: string }
  /** Any JSON value `check` accepts (a port: a number or a "lo-hi" string). */
  | { kind: 'value'; check: (v: unknown) => string | undefined; describe: string }
  | { kind: 'section'; keys: Record<string, SettingRule> }
  /**
   * A list of sections, each with `keys`; `check` judges an entry as a
   * whole once its keys are good. Errors name the entry: `flowPolicy[2].cidr`.
   */
  | { kind: 'list'; keys: Record<string, SettingRule>; maxItems: number; check?: (item: never) => { key: string; detail: string } | null };

const positiveInt: SettingRule = { kind: 'number', min: 0, minExclusive: true, integer: true };
const positiveMs: SettingRule = { kind: 'number', min: 0, minExclusive: true };
const nonNegativeMs: SettingRule = { kind: 'number', min: 0 };
const queueLimits: SettingRule = { kind: 'section', keys: { bytes: positiveInt, frames: positiveInt } };
const frameActions = ['forward-primary', 'compare', 'drop'] as const;
const problemOf = <T>(parsed: T | string) => (typeof parsed === 'string' ? parsed : undefined);

/** Every setting of a `PipelineConfig`, with what it may hold. */
export const PIPELINE_SETTING_RULES: Record<keyof PipelineConfig, SettingRule> = {
  maxFlows: positiveInt,
  flowReports: { kind: 'number', min: 0, integer: true },
  maxUnmatchedAgeMs: positiveMs,
  flowHighWater: queueLimits,
  totalHighWater: queueLimits,
  ingressHold: queueLimits,
  closedTcpLingerMs: positiveMs,
  tcpIdleMs: positiveMs,
  halfOpenIdleMs: positiveMs,
  datagramIdleMs: positiveMs,
  memoryGiveBack: {
    kind: 'section',
    keys: {
      minFlows: { kind: 'number', min: 0, integer: true, note: '0: never' },
      idleMs: nonNegativeMs,
      forceAfterMs: nonNegativeMs,
      minIntervalMs: nonNegativeMs,
    } satisfies Record<keyof GiveBackConfig, SettingRule>,
  },
  policy: {
    kind: 'section',
    keys: {
      arp: { kind: 'choice', values: frameActions },
      otherEtherTypes: { kind: 'choice', values: frameActions },
      malformedFromVm: { kind: 'choice', values: ['drop', 'forward-primary'] },
      malformedFromClient: { kind: 'choice', values: ['forward', 'drop'] },
      strayFromClient: { kind: 'choice', values: ['primary-only', 'both', 'drop'] },
      badTcpFlagsFromClient: { kind: 'choice', values: ['drop', 'forward'] },
      newFlowsPerSecond: { kind: 'number', min: 0, integer: true, note: '0: no limit' },
      straysPerSecond: { kind: 'number', min: 0, integer: true, note: '0: no limit' },
    } satisfies Record<keyof FramePolicy, SettingRule>,
  },
  replicator: {
    kind: 'section',
    keys: {
      checkpointTimeoutMs: positiveMs,
      maxIntervalMs: { kind: 'number', min: 0, note: '0: off' },
      retryInitialMs: positiveMs,
      retryMaxMs: positiveMs,
      reprotectTimeoutMs: nonNegativeMs,
    } satisfies Record<keyof ReplicatorConfig, SettingRule>,
  },
  failover: {
    kind: 'section',
    keys: {
      silenceMs: { kind: 'number', min: 0, note: '0: off' },
      probeTimeoutMs: { kind: 'number', min: 0, note: '0: no probe' },
      minStandbyFrames: { kind: 'number', min: 0, integer: true },
      fewFramesSilenceMs: { ...nonNegativeMs, note: '0: never' },
      carrierHoldMs: nonNegativeMs,
      announce: { kind: 'boolean' },
      checkpointWaitMs: { ...nonNegativeMs, note: '0: promote at once' },
    } satisfies Record<keyof FailoverConfig, SettingRule>,
  },
  checkpointBudget: {
    kind: 'section',
    keys: {
      perSource: { kind: 'number', min: 0, integer: true, note: '0: no budget' },
      windowMs: nonNegativeMs,
    } satisfies Record<keyof CheckpointBudgetConfig, SettingRule>,
  },
  compare: {
    kind: 'section',
    keys: {
      datagramWindow: { kind: 'number', min: 1, max: MAX_DATAGRAM_WINDOW, integer: true, note: '1: strict order' },
    } satisfies Record<keyof CompareConfig, SettingRule>,
  },
  resync: { kind: 'choice', values: ['copy', 'align'] },
  captureDivergence: { kind: 'boolean' },
  releaseLogMs: { kind: 'number', min: 0, note: '0: no release log lines' },
  normalize: {
    kind: 'section',
    keys: {
      httpDate: { kind: 'boolean' },
      httpDateToleranceMs: { kind: 'number', min: 0, max: 60_000 },
    } satisfies Record<keyof NormalizeConfig, SettingRule>,
  },
  flowPolicy: {
    kind: 'list',
    maxItems: MAX_FLOW_POLICY_RULES,
    keys: {
      protocol: { kind: 'choice', values: FLOW_POLICY_PROTOCOLS },
      port: { kind: 'value', describe: 'a VM-side port (443) or an inclusive range ("8000-8099")', check: (v) => problemOf(parsePortRange(v)) },
      cidr: { kind: 'string', describe: 'a client address block ("10.0.0.0/8", "2001:db8::/32") or one address', check: (v) => problemOf(parseCidr(v)) },
      action: { kind: 'choice', values: FLOW_POLICY_ACTIONS },
    } satisfies Record<keyof FlowPolicyRule, SettingRule>,
    check: flowPolicyRuleProblem,
  },
};

function describeRule(rule: SettingRule): string {
  switch (rule.kind) {
    case 'number': {
      const what = rule.integer ? 'an integer' : 'a number';
      const low = rule.minExclusive ? `> ${rule.min}` : `>= ${rule.min}`;
      const high = rule.max !== undefined ? ` and <= ${rule.max}` : '';
      return `must be ${what} ${low}${high}${rule.note ? ` (${rule.note})` : ''}`;
    }
    case 'choice': return `must be one of ${rule.values.map((v) => JSON.stringify(v)).join(', ')}`;
    case 'boolean': return 'must be true or false';
    case 'string':
    case 'value': return `must be ${rule.describe}`;
    case 'section': return `must be an object with keys ${Object.keys(rule.keys).join(', ')}`;
    case 'list': return `must be a list (at most ${rule.maxItems}) of objects with keys ${Object.keys(rule.keys).join(', ')}`;
  }
}

function shown(v: unknown): string {
  return v === undefined ? 'nothing' : JSON.stringify(v);
}

/**
 * Checks `value` against `rules` (a section's keys): every key must be known
 * and every value allowed. Keys missing from `value` are fine (defaults).
 * Throws ConfigError naming the path of the first bad key.
 */
export function checkSettings(value: unknown, rules: Record<string, SettingRule>, prefix = ''): void {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new ConfigError(prefix || '(top level)', `${describeRule({ kind: 'section', keys: rules })}, got ${shown(value)}`);
  }
  for (const [key, v] of Object.entries(value)) {
    const path = prefix ? `${prefix}.${key}` : key;
    const rule = Object.prototype.hasOwnProperty.call(rules, key) ? rules[key] : undefined;
    if (!rule) throw new ConfigError(path, `unknown key; allowed keys${prefix ? ` in ${prefix}` : ''}: ${Object.keys(rules).join(', ')}`);
    checkSetting(path, v, rule);
  }
}

function checkSetting(path: string, v: unknown, rule: SettingRule): void {
  const bad = () => new ConfigError(path, `${describeRule(rule)}, got ${shown(v)}`);
  switch (rule.kind) {
    case 'section':
      checkSettings(v, rule.keys, path);
      return;
    case 'number':
      if (typeof v !== 'number' || !Number.isFinite(v)) throw bad();
      if (rule.integer && !Number.isInteger(v)) throw bad();
      if (rule.minExclusive ? v <= rule.min : v < rule.min) throw bad();
      if (rule.max !== undefined && v > rule.max) throw bad();
      return;
    case 'choice':
      if (typeof v !== 'string' || !rule.values.includes(v)) throw bad();
      return;
    case 'boolean':
      if (typeof v !== 'boolean') throw bad();
      return;
    case 'string': {
      if (typeof v !== 'string') throw bad();
      const why = rule.check(v);
      if (why) throw new ConfigError(path, `${describeRule(rule)}: ${why}, got ${shown(v)}`);
      return;
    }
    case 'value': {
      const why = rule.check(v);
      if (why) throw new ConfigError(path, `${describeRule(rule)}: ${why}, got ${shown(v)}`);
      return;
    }
    case 'list': {
      if (!Array.isArray(v) || v.length > rule.maxItems) throw bad();
      v.forEach((item, i) => {
        checkSettings(item, rule.keys, `${path}[${i}]`);
        const problem = rule.check?.(item as never);
        if (problem) throw new ConfigError(`${path}[${i}].${problem.key}`, problem.detail);
      });
    }
  }
}

/** A key spread in with the value `undefined` (`{ ...options.config }`) means "not set", at any depth. */
function withoutUndefined(v: unknown): unknown {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return v;
  return Object.fromEntries(Object.entries(v).filter(([, x]) => x !== undefined).map(([k, x]) => [k, withoutUndefined(x)]));
}

/**
 * Merges a partial config over the defaults. Every key must be a known
 * setting and every value allowed: ConfigError names the first that is not.
 */
export function makePipelineConfig(partial: Partial<PipelineConfig> = {}): PipelineConfig {
  const given = withoutUndefined(partial) as Partial<PipelineConfig>;
  checkSettings(given, PIPELINE_SETTING_RULES);
  const c: PipelineConfig = {
    ...DEFAULT_PIPELINE_CONFIG,
    ...given,
    flowHighWater: { ...DEFAULT_PIPELINE_CONFIG.flowHighWater, ...given.flowHighWater },
    totalHighWater: { ...DEFAULT_PIPELINE_CONFIG.totalHighWater, ...given.totalHighWater },
    ingressHold: { ...DEFAULT_PIPELINE_CONFIG.ingressHold, ...given.ingressHold },
    memoryGiveBack: { ...DEFAULT_PIPELINE_CONFIG.memoryGiveBack, ...given.memoryGiveBack },
    policy: { ...DEFAULT_PIPELINE_CONFIG.policy, ...given.policy },
    replicator: { ...DEFAULT_PIPELINE_CONFIG.replicator, ...given.replicator },
    failover: { ...DEFAULT_PIPELINE_CONFIG.failover, ...given.failover },
    checkpointBudget: { ...DEFAULT_PIPELINE_CONFIG.checkpointBudget, ...given.checkpointBudget },
    compare: { ...DEFAULT_PIPELINE_CONFIG.compare, ...given.compare },
    normalize: { ...DEFAULT_PIPELINE_CONFIG.normalize, ...given.normalize },
  };
  if (c.replicator.retryMaxMs < c.replicator.retryInitialMs) {
    throw new ConfigError('replicator.retryMaxMs', `must be >= replicator.retryInitialMs (${c.replicator.retryInitialMs}), got ${c.replicator.retryMaxMs}`);
  }
  return c;
}
