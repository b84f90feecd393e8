/**
 * Stage events: what happens to the whole pair (a checkpoint, a failover,
 * the backup's death, a new backup) reaches every stage of the data path
 * through one hook, `handleEvent`, in data-path order (see
 * `STAGE_EVENT_ORDER` in pipeline.ts). Each stage decides what the event
 * means for its own state, as QEMU's net filters do with their
 * `handle_event`: nobody reaches into another stage's tables.
 *
 * Every stage also reports its counters in one shape (`counters()`), which
 * status and /metrics read.
 */
import type { SlotId } from '../failover/roles';

/** Why the primary is taken for dead. */
export type FailoverCause = 'agent' | 'carrier' | 'silence' | 'manual';

/** One failover, as status, metrics and logs show it. */
export interface FailoverRecord {
  /** The replica set's generation after the promotion. */
  epoch: number;
  cause: FailoverCause;
  /** Free text: the agent's reason, the interface, the silence measured. */
  detail: string;
  /** When the cause was first seen, and when the backup was promoted (pipeline clock, µs). */
  detectedUs: number;
  promotedUs: number;
  dead: string;
  survivor: string;
  flowsCarried: number;
  flowsLost: number;
  /** The promoted replica's frames sent at once (its backlog beyond what the client had). */
  backlogFrames: number;
  /** The dead primary's frames that were held and are never sent. */
  discardedFrames: number;
}

export type StageEvent =
  /** A checkpoint was asked for: client ingress is held from now on. */
  | { type: 'checkpoint-begin'; epoch: number }
  /** The backup is a copy of the primary again (or, with `align`, settled): comparison restarts. */
  | { type: 'checkpoint-done'; epoch: number }
  /** Comparison stopped (checkpoint failed or timed out, agent gone): the primary's output flows unchecked. */
  | { type: 'degraded'; why: string }
  /** The backup in `survivor` was promoted (roles already changed); `record` is filled in by the stages. */
  | { type: 'failover'; survivor: SlotId; record: FailoverRecord }
  /** The backup in `slot` died (roles already changed). */
  | { type: 'backup-lost'; slot: SlotId; cause: string }
  /** A new backup runs in `slot` (roles already changed). */
  | { type: 'reprotect'; epoch: number; slot: SlotId };

export interface Stage {
  /** The stage's name in status and metrics. */
  readonly stageName: string;
  handleEvent(ev: StageEvent, nowUs: number): void;
  counters(): Record<string, number>;
}
