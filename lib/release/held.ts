/**
 * Held primary output. Every frame the primary sends is held (copied out of
 * the I/O ring) until the comparison says the backup said the same; then it
 * is released to the client, per flow in the order the primary sent it.
 *
 * In:  `hold` for each primary frame; `releaseReady` after each comparison
 *      step; `releaseAll` after a checkpoint or in DEGRADED.
 * Out: frames to the `release` callback; the age of the oldest held frame
 *      and queue sizes for the checkpoint triggers.
 *
 * Bounded by the checkpoint triggers (queue high-water marks), not by
 * dropping: a held frame is either released or made obsolete by a
 * checkpoint that releases it.
 */
import { seqGt, seqLe } from '../packet/seq';
import { Slab, SlabPool } from '../packet/slab';
import type { VirtioNetHeader } from '../io/port';
import { FrameWait } from '../io/frame-wait';
import type { Stage, StageEvent } from '../pipeline/events';

export interface HeldFrame {
  frame: Buffer;
  /** Stream: first relative position after this frame. Datagrams: 1 + its index. */
  end: number;
  /** Carries an RST: released only once both replicas reset. */
  rst: boolean;
  /** Carries an ACK (client sequence space) that must not run ahead of the backup's. */
  hasAck: boolean;
  ack: number;
  /** Payload bytes (what `releasedBytes` counts). */
  payloadBytes: number;
  heldAtUs: number;
  released: boolean;
  queue: FlowHeldQueue;
  /** Where `frame` was copied to; released with it. */
  slab: Slab | null;
  /** The virtio-net header it came with (GSO, partial checksum): it leaves with it. */
  vnet: VirtioNetHeader | undefined;
  /** When its matched beginning went to the client ahead of it (EgressStage.releaseMatchedPrefix), µs; -1: never. Kept here, not per flow: flows outnumber held frames. */
  prefixAtUs: number;
}

/** What the release predicate needs from a flow's comparison. */
export interface ReleaseGate {
  /** TCP: position matched so far; datagrams: count matched. */
  readonly matchedEnd: number;
  readonly isStream: boolean;
  readonly rstAgreed: boolean;
  /** Highest ACK the backup sent on this flow; `null` if none yet. */
  readonly backupAck: number | null;
}

/** Releases since the last look, per flow (see `HeldQueues.takeReleaseProgress`). */
export interface ReleaseProgress {
  /**
   * Frames and payload bytes released since the last look, and the flow's
   * released payload bytes since it began; `unchecked*`: sent without
   * comparison (carried over to a promoted replica, or no backup).
   */
  flows: { flow: string; frames: number; bytes: number; totalBytes: number; uncheckedFrames: number; uncheckedBytes: number }[];
  /** Flows beyond the limit, summed. */
  others: { flows: number; frames: number; bytes: number; uncheckedFrames: number; uncheckedBytes: number };
}

/** The shared empty `frames` of every queue holding nothing (frozen: a push to it throws rather than corrupts). */
const NO_FRAMES = Object.freeze([]) as unknown as HeldFrame[];

export class FlowHeldQueue {
  /** Held frames from `head` on (released ones may sit among them); the shared empty array while there are none. */
  private frames: HeldFrame[] = NO_FRAMES;
  private head = 0;
  /** Frames and bytes held and not yet released (released ones may still sit in `frames`). */
  count = 0;
  bytes = 0;
  releasedFrames = 0;
  releasedPayloadBytes = 0;
  /**
   * The furthest end released to the client (stream position or datagram
   * count), null while nothing was: what the client has received.
   */
  releasedEnd: number | null = null;
  /** The highest ACK released to the client on this flow (client sequence space), null while none was. */
  releasedMaxAck: number | null = null;
  /** The flow this queue belongs to (set by its owner; the release stage does not look into it). */
  flow: unknown = null;
  /** Frames sent to the client without comparison (a flow carried over to a promoted replica, or one without a backup). */
  passedFrames = 0;
  passedPayloadBytes = 0;
  /** What the last `released` log line counted up to (see `HeldQueues.takeReleaseProgress`). */
  loggedFrames = 0;
  loggedPayloadBytes = 0;
  loggedPassedFrames = 0;
  loggedPassedBytes = 0;

  /** `label`: the flow's name, or what gives it when asked (a flow makes its name from its key only then). */
  constructor(readonly owner: HeldQueues, private readonly label: string | { readonly name: string }, private readonly isStream = true) {}

  get flowName(): string {
    const l = this.label;
    return typeof l === 'string' ? l : l.name;
  }

  get length(): number {
    return this.count;
  }

  hold(
    frame: Buffer, slab: Slab | null, end: number, rst: boolean, hasAck: boolean, ack: number, payloadBytes: number, nowUs: number,
    vnet?: VirtioNetHeader,
  ): HeldFrame {
    const h: HeldFrame = { frame, end, rst, hasAck, ack, payloadBytes, heldAtUs: nowUs, released: false, queue: this, slab, vnet, prefixAtUs: -1 };
    if (this.frames === NO_FRAMES) this.frames = [];
    this.frames.push(h);
    this.count++;
    this.bytes += frame.length;
    this.owner.noteHeld(h);
    return h;
  }

  /** Releases frames from the head while the gate allows. Returns how many it released (not those already gone by a checkpoint or failover). */
  releaseReady(gate: ReleaseGate): number {
    let n = 0;
    let first: HeldFrame | null = null;
    while (this.head < this.frames.length) {
      const h = this.frames[this.head];
      if (!h.released) {
        if (!releasable(h, gate)) break;
        this.owner.release(h);
        first ??= h;
        n++;
      }
      this.head++;
    }
    if (first) this.owner.noteHoldWait(first);
    this.compact();
    return n;
  }

  noteReleased(h: HeldFrame): void {
    this.count--;
    this.bytes -= h.frame.length;
    this.releasedFrames++;
    this.releasedPayloadBytes += h.payloadBytes;
    const e = this.releasedEnd;
    if (e === null || (this.isStream ? seqGt(h.end, e) : h.end > e)) this.releasedEnd = h.end;
    if (h.hasAck && (this.releasedMaxAck === null || seqGt(h.ack, this.releasedMaxAck))) this.releasedMaxAck = h.ack;
  }

  /**
   * The matched beginning of the head frame went to the client as a copy
   * (EgressStage.releaseMatchedPrefix), up to stream position `end`; the
   * frame itself stays held, and counts as released when it goes.
   */
  notePrefixReleased(end: number, ack: number | null): void {
    if (this.releasedEnd === null || seqGt(end, this.releasedEnd)) this.releasedEnd = end;
    if (ack !== null && (this.releasedMaxAck === null || seqGt(ack, this.releasedMaxAck))) this.releasedMaxAck = ack;
  }

  /** A frame of this flow went to the client unchecked, not through the queue (carried or solo flow). */
  notePassed(payloadBytes: number): void {
    this.passedFrames++;
    this.passedPayloadBytes += payloadBytes;
    this.owner.notePassed(this);
  }

  noteDiscarded(h: HeldFrame): void {
    this.count--;
    this.bytes -= h.frame.length;
  }

  /** Releases this flow's held frames as they are, in order (the flow goes on unprotected). */
  releaseAll(): number {
    let n = 0;
    for (let i = this.head; i < this.frames.length; i++) {
      const h = this.frames[i];
      if (!h.released) {
        this.owner.release(h);
        n++;
      }
    }
    this.frames = NO_FRAMES;
    this.head = 0;
    return n;
  }

  /** The 4-tuple carries a new connection: nothing of it has reached the client yet. */
  newConnection(): void {
    this.releasedEnd = null;
    this.releasedMaxAck = null;
  }

  /** Datagram counts restart after a checkpoint. */
  restartCount(): void {
    if (!this.isStream) this.releasedEnd = null;
  }

  private compact(): void {
    if (this.head === this.frames.length) {
      this.frames = NO_FRAMES;
      this.head = 0;
    } else if (this.head > 64 && this.head * 2 > this.frames.length) {
      this.frames = this.frames.slice(this.head);
      this.head = 0;
    }
  }
}

/** ACK gating: a frame never acknowledges client data the backup has not acknowledged. */
export function ackMayGo(h: HeldFrame, gate: ReleaseGate): boolean {
  return !h.hasAck || (gate.backupAck !== null && seqLe(h.ack, gate.backupAck));
}

function releasable(h: HeldFrame, gate: ReleaseGate): boolean {
  if (gate.isStream) {
    if (!seqLe(h.end, gate.matchedEnd)) return false;
    if (h.rst && !gate.rstAgreed) return false;
    return ackMayGo(h, gate);
  }
  return h.end <= gate.matchedEnd;
}

/**
 * All held frames of all flows, in arrival order: the oldest unreleased one
 * is the head (for the age trigger), totals for the queue triggers.
 */
export class HeldQueues implements Stage {
  readonly stageName = 'release';
  private all: HeldFrame[] = [];
  private head = 0;
  frames = 0;
  bytes = 0;
  releasedFrames = 0;
  releasedBytes = 0;
  releasedPayloadBytes = 0;
  discardedFrames = 0;
  /** Remember which flows released something, for `takeReleaseProgress` (the `released` log lines). */
  trackReleases = false;
  private readonly releasedSinceTaken = new Set<FlowHeldQueue>();

  /**
   * How long output was held before its release (for the backup's answer, or
   * a checkpoint): one observation per release step, its oldest frame's.
   */
  readonly holdWait = new FrameWait();

  constructor(
    private readonly sink: (frame: Buffer, vnet?: VirtioNetHeader) => void,
    private readonly pool: SlabPool | null = null,
    /** The pipeline's clock (what `heldAtUs` is on). */
    private readonly clockUs: () => number = () => 0,
  ) {}

  /** `h`, the oldest frame of a release step, has gone. */
  noteHoldWait(h: HeldFrame): void {
    this.holdWait.record(this.clockUs() - h.heldAtUs);
  }

  /**
   * checkpoint-done: the backup holds the state that produced the primary's
   * output, so all of it goes. degraded, backup-lost: comparison is off, what
   * was held goes now, in order. failover: the dead primary's unconfirmed
   * output never reaches a client (the record counts it).
   */
  handleEvent(ev: StageEvent): void {
    switch (ev.type) {
      case 'checkpoint-done':
      case 'degraded':
      case 'backup-lost':
        this.releaseAll();
        break;
      case 'failover':
        ev.record.discardedFrames += this.discardAll();
        break;
      default:
        break;
    }
  }

  counters(): Record<string, number> {
    return {
      released_frames: this.releasedFrames,
      released_bytes: this.releasedBytes,
      released_payload_bytes: this.releasedPayloadBytes,
      discarded_frames: this.discardedFrames,
      held_frames: this.frames,
      held_bytes: this.bytes,
    };
  }

  noteHeld(h: HeldFrame): void {
    this.all.push(h);
    this.frames++;
    this.bytes += h.frame.length;
  }

  release(h: HeldFrame): void {
    h.released = true;
    this.frames--;
    this.bytes -= h.frame.length;
    this.releasedFrames++;
    this.releasedBytes += h.frame.length;
    this.releasedPayloadBytes += h.payloadBytes;
    h.queue.noteReleased(h);
    if (this.trackReleases) this.releasedSinceTaken.add(h.queue);
    this.sink(h.frame, h.vnet);
    this.pool?.release(h.slab);
  }

  /**
   * What each flow released since the last call: the `maxFlows` flows that
   * released the most payload bytes one by one, the rest summed up (so a
   * log line per flow stays bounded however many flows there are).
   */
  takeReleaseProgress(maxFlows: number): ReleaseProgress {
    const flows: ReleaseProgress['flows'] = [];
    for (const q of this.releasedSinceTaken) {
      flows.push({
        flow: q.flowName, frames: q.releasedFrames - q.loggedFrames, bytes: q.releasedPayloadBytes - q.loggedPayloadBytes, totalBytes: q.releasedPayloadBytes,
        uncheckedFrames: q.passedFrames - q.loggedPassedFrames, uncheckedBytes: q.passedPayloadBytes - q.loggedPassedBytes,
      });
      q.loggedFrames = q.releasedFrames;
      q.loggedPayloadBytes = q.releasedPayloadBytes;
      q.loggedPassedFrames = q.passedFrames;
      q.loggedPassedBytes = q.passedPayloadBytes;
    }
    this.releasedSinceTaken.clear();
    const size = (f: ReleaseProgress['flows'][number]) => f.bytes + f.uncheckedBytes;
    flows.sort((a, b) => size(b) - size(a) || b.frames + b.uncheckedFrames - a.frames - a.uncheckedFrames);
    const rest = flows.splice(Math.max(0, maxFlows));
    const sum = (k: 'frames' | 'bytes' | 'uncheckedFrames' | 'uncheckedBytes') => rest.reduce((n, f) => n + f[k], 0);
    return {
      flows,
      others: { flows: rest.length, frames: sum('frames'), bytes: sum('bytes'), uncheckedFrames: sum('uncheckedFrames'), uncheckedBytes: sum('uncheckedBytes') },
    };
  }

  notePassed(q: FlowHeldQueue): void {
    if (this.trackReleases) this.releasedSinceTaken.add(q);
  }

  /** The oldest frame still held, or null. */
  oldest(): HeldFrame | null {
    while (this.head < this.all.length && this.all[this.head].released) this.head++;
    if (this.head > 0 && this.head === this.all.length) {
      // All released: let go of them now, not when 1,024 have piled up.
      this.all = [];
      this.head = 0;
    } else if (this.head > 1024 && this.head * 2 > this.all.length) {
      this.all = this.all.slice(this.head);
      this.head = 0;
    }
    return this.head < this.all.length ? this.all[this.head] : null;
  }

  /** Releases every held frame, oldest first (after a checkpoint, or when comparison is off). */
  releaseAll(): number {
    let n = 0;
    for (let i = this.head; i < this.all.length; i++) {
      const h = this.all[i];
      if (!h.released) {
        if (n === 0) this.noteHoldWait(h);
        this.release(h);
        n++;
      }
    }
    this.all = [];
    this.head = 0;
    return n;
  }

  /**
   * Forgets every held frame without sending it: the replica that produced
   * them is dead, and what it said that the backup had not confirmed must
   * never reach a client (failover).
   */
  discardAll(): number {
    let n = 0;
    for (let i = this.head; i < this.all.length; i++) {
      const h = this.all[i];
      if (h.released) continue;
      h.released = true;
      this.frames--;
      this.bytes -= h.frame.length;
      this.discardedFrames++;
      h.queue.noteDiscarded(h);
      this.pool?.release(h.slab);
      n++;
    }
    this.all = [];
    this.head = 0;
    return n;
  }
}
