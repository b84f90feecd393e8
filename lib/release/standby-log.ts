/**
 * StandbyLog: copies of the standby replica's frames on one flow that the
 * client has not yet received in any form. While both replicas run they are
 * never sent; they exist for one moment: failover. Then the promoted
 * replica's backlog beyond the released point goes out at once, instead of
 * waiting for its TCP to retransmit (200 ms or more).
 *
 * In:  `add` for each standby frame that says something (data, SYN, FIN, a
 *      datagram) past what was released; `prune(releasedEnd)` as the primary's
 *      output is released (`pruneWhile` for datagrams, matched by content
 *      rather than position).
 * Out: `drain()` at failover: the frames still ahead of the released point,
 *      in the order the standby sent them.
 *
 * Bounded by the same checkpoint triggers as held output: a standby that
 * runs ahead makes comparison wait, and the unmatched-age and high-water
 * triggers ask for a checkpoint, which clears the log.
 */
import { seqLe } from '../packet/seq';
import { Slab, SlabPool } from '../packet/slab';
import type { VirtioNetHeader } from '../io/port';

export interface StandbyFrame {
  frame: Buffer;
  slab: Slab | null;
  /** Stream: relative position of its first unit; datagrams: its index from 1. */
  start: number;
  /** Stream: the position after it; datagrams: its index. */
  end: number;
  vnet: VirtioNetHeader | undefined;
}

/** The shared empty log (frozen: a push to it throws rather than corrupts). */
const NO_FRAMES = Object.freeze([]) as unknown as StandbyFrame[];

export class StandbyLog {
  /** Logged frames from `head` on; the shared empty array while there are none (most flows). */
  private frames: StandbyFrame[] = NO_FRAMES;
  private head = 0;
  bytes = 0;

  constructor(private readonly pool: SlabPool, private readonly isStream: boolean) {}

  get length(): number {
    return this.frames.length - this.head;
  }

  add(frame: Buffer, start: number, end: number, vnet: VirtioNetHeader | undefined): void {
    const copy = this.pool.copy(frame);
    if (this.frames === NO_FRAMES) this.frames = [];
    this.frames.push({ frame: copy, slab: this.pool.lastSlab, start, end, vnet });
    this.bytes += copy.length;
  }

  /** Drops what the client already has: frames ending at or before `releasedEnd`. */
  prune(releasedEnd: number): void {
    this.pruneWhile((end) => this.covered(end, releasedEnd));
  }

  /**
   * Drops frames from the oldest on while `delivered(end)` says the client
   * has their equal (datagrams matched out of order: a later one may be
   * delivered before an earlier one; it goes once those before it have).
   */
  pruneWhile(delivered: (end: number) => boolean): void {
    const frames = this.frames;
    while (this.head < frames.length && delivered(frames[this.head].end)) {
      const f = frames[this.head++];
      this.bytes -= f.frame.length;
      this.pool.release(f.slab);
    }
    if (this.head === frames.length) {
      this.frames = NO_FRAMES;
      this.head = 0;
    } else if (this.head > 64 && this.head * 2 > frames.length) {
      this.frames = frames.slice(this.head);
      this.head = 0;
    }
  }

  /** Everything still logged, oldest first; the log is empty afterwards. Slabs are released by `forget`. */
  drain(): StandbyFrame[] {
    const out = this.frames.slice(this.head);
    this.frames = NO_FRAMES;
    this.head = 0;
    this.bytes = 0;
    return out;
  }

  /** Releases the copies of drained frames (after the ports were flushed). */
  forget(frames: readonly StandbyFrame[]): void {
    for (const f of frames) this.pool.release(f.slab);
  }

  /** A checkpoint replaced the standby's state: what it said before no longer stands. */
  clear(): void {
    this.forget(this.drain());
  }

  private covered(end: number, releasedEnd: number): boolean {
    return this.isStream ? seqLe(end, releasedEnd) : end <= releasedEnd;
  }
}
