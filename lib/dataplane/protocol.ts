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
}

export type DataPlaneOp = 'snapshot' | 'checkpoint' | 'failover' | 'flows';

export type ToDataPlane =
  | { type: 'call'; id: number; op: DataPlaneOp; limit?: number; match?: string }
  | { type: 'stop' };

export type FromDataPlane =
  | { type: 'started' }
  | { type: 'start-failed'; message: string; userFacing: boolean }
  | { type: 'reply'; id: number; ok: true; json: string }
  | { type: 'reply'; id: number; ok: false; error: string }
  | { type: 'stopped' };
