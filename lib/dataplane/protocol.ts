/**
 * Messages between `shadowvm run`'s main thread (control socket, metrics,
 * signals) and its data-plane thread (ports, pipeline, agent link, timers).
 * Replies carry JSON text, parsed on the main thread: what crosses is the
 * same bytes a control client would read, Buffers included.
 */
import type { LogLevel } from '../control/logger';
import type { IoBackend } from '../cli/ports';
import type { PipelineConfig } from '../pipeline/config';
import type { RealtimeMode } from './scheduling';
import type { FailoverCause } from '../pipeline/events';
import type { BackupDownMessage, CheckpointDoneMessage, CheckpointFailedMessage, HelloMessage, PrimaryDownMessage } from '../replicate/agent-protocol';
import type { AgentRequestKind, CheckpointReason } from '../replicate/replicator';

/** Everything the data-plane thread needs to open its ports and run (structured-cloneable). */
export interface DataPlaneInit {
  name: string;
  config: PipelineConfig;
  /** backup null: none at start (the roles file said so): the agent is asked for one. */
  ports: { uplink: string; primary: string; backup: string | null };
  /** Where to keep the roles (cli/roles-file.ts), and the interfaces the config named. */
  roles?: { file: string; configured: { primary: string; backup: string } };
  /** Why the backup slot starts empty (BridgeOptions.noBackupAtStart). */
  noBackupAtStart?: string;
  io: IoBackend;
  vnetHdr: boolean;
  busyPollUs: number;
  /** Absent: the default for the ports' vnetHdr (see PortOptions.sendThread). */
  sendThread?: boolean;
  /** See PortOptions.sendInlineFrames. */
  sendInlineFrames?: number;
  /** See PortOptions.ringFrames. */
  ringFrames?: number;
  /** See PortOptions.largeRingFrames. */
  largeRingFrames?: number;
  /** See PortOptions.splitRings. */
  splitRings?: boolean;
  /** See PortOptions.splitRingsFanout. */
  splitRingsFanout?: boolean;
  /** See BridgeOptions.inlineSendsMaxFps. */
  inlineSendsMaxFps?: number;
  agentSocket?: string;
  carrierWatch: boolean;
  logLevel: LogLevel;
  /** The data-plane thread's scheduling (scheduling.ts). */
  realtime: RealtimeMode;
  realtimePriority: number;
  /** Node's platform threads, listed by the main thread before the data plane started: SCHED_RR with it (empty: none). */
  helperTids: number[];
  /**
   * `run --workers N` (N > 1): this worker takes shard `index` of `count`
   * (lib/dataplane/shard.ts) on every port, and talks to the agent through
   * the main thread's coordinator (no agentSocket of its own).
   */
  shard?: { count: number; index: number };
}

export type DataPlaneOp = 'snapshot' | 'checkpoint' | 'failover' | 'flows';

/** What the agent said, relayed by the coordinator to a worker (epochs are the worker's own). */
export type AgentWord =
  | { ev: 'connected'; hello: HelloMessage }
  | { ev: 'disconnected'; why: string }
  | { ev: 'checkpoint-done'; m: CheckpointDoneMessage }
  | { ev: 'checkpoint-failed'; m: CheckpointFailedMessage }
  | { ev: 'primary-down'; m: PrimaryDownMessage }
  | { ev: 'backup-down'; m: BackupDownMessage };

/** A role change one worker made, that the others follow (Bridge.followRoleChange). */
export type RoleChange = { type: 'failover'; cause: FailoverCause; detail: string; survivor: string } | { type: 'backup-lost'; cause: string };

/** Coordinator to worker. */
export type ToWorker =
  | { type: 'agent'; word: AgentWord }
  | { type: 'join'; kind: AgentRequestKind; reason: CheckpointReason; flow: string }
  | { type: 'follow'; generation: number; change: RoleChange };

/** Worker to coordinator: what the worker's bridge would have said to the agent, and its part in barriers. */
export type FromWorker =
  | { type: 'to-agent'; op: 'checkpoint'; epoch: number; reason: CheckpointReason; flow?: string }
  | { type: 'to-agent'; op: 'reprotect'; epoch: number; backup?: string }
  | { type: 'to-agent'; op: 'backup-attached'; epoch: number; port: string }
  | { type: 'joined'; kind: AgentRequestKind; ok: boolean }
  | { type: 'roles'; generation: number; change: RoleChange };

export type ToDataPlane =
  | { type: 'call'; id: number; op: DataPlaneOp; limit?: number; match?: string }
  | { type: 'stop' }
  | { type: 'coord'; m: ToWorker };

export type FromDataPlane =
  | { type: 'started' }
  | { type: 'start-failed'; message: string; userFacing: boolean }
  | { type: 'reply'; id: number; ok: true; json: string }
  | { type: 'reply'; id: number; ok: false; error: string }
  | { type: 'stopped' }
  | { type: 'coord'; m: FromWorker };
