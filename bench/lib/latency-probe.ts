/**
 * A probe on a running in-process Bridge, for the idle ping phase only: it
 * explains where the added round trip goes without touching lib/.
 *
 * In:  the Bridge; while installed, its pipeline's `fromVm` and `tick`
 *      methods and the Bridge's `breath` are wrapped on the
 *      instances (the Bridge calls them through the instance, so the wrappers
 *      see every frame).
 * Out: per frame, how long after the kernel's receive timestamp the frame
 *      reached JavaScript (the ports' ReceivedFrame.timeUs, which an
 *      AF_PACKET ring fills from the kernel's wall clock; a cap port stamps
 *      frames in JavaScript, so there it says nothing); per echo reply, how
 *      much later the backup's copy arrived than the primary's (the
 *      primary's is held until the backup's arrives); the cost of the
 *      bridge's periodic tick. (No event-loop delay monitor: its 1 ms timer
 *      would keep the loop awake and change what is measured.)
 *
 * Overhead: one closure call and one clock read per frame (well under 1 µs,
 * against round trips of hundreds of µs). Removed by `stop()`.
 */
import type { Bridge } from '../../lib/bridge';
import type { ReceivedFrame } from '../../lib/io/port';
import { percentile } from './load-tools';

export interface LatencyProbeReport {
  frames: number;
  /** Kernel receive timestamp → frame handed to the pipeline, µs (AF_PACKET only). */
  kernelToJsUs: { p50: number; p99: number; max: number } | null;
  /** Echo replies: backup arrival − primary arrival, µs (positive: the backup was later). */
  backupLagUs: { p50: number; p99: number; replies: number };
  /** The bridge's periodic timer (Bridge TICK_MS): calls and cost of pipeline.tick. */
  tick: { calls: number; meanUs: number; maxUs: number };
}

const nowUs = () => (performance.timeOrigin + performance.now()) * 1000;

/** ICMP echo reply (type 0) over IPv4 without VLAN: its sequence number, else -1. */
function echoReplySeq(frame: Buffer): number {
  if (frame.length < 42 || frame[12] !== 0x08 || frame[13] !== 0x00 || frame[23] !== 1) return -1;
  const l4 = 14 + (frame[14] & 0x0f) * 4;
  if (frame[l4] !== 0) return -1;
  return frame.readUInt16BE(l4 + 6);
}

export class LatencyProbe {
  private readonly delays: number[] = [];
  private readonly replyAt: [Map<number, number>, Map<number, number>] = [new Map(), new Map()];
  private tickCalls = 0;
  private tickUs = 0;
  private tickMaxUs = 0;
  private frames = 0;
  private readonly restore: () => void;

  constructor(bridge: Bridge, private readonly kernelTimestamps: boolean) {
    const pipeline = bridge.pipeline;
    // Every argument is passed on as it came (frame, time, and whatever the Bridge adds, e.g. a vnet header).
    type Method = (...args: unknown[]) => void;
    const p = pipeline as unknown as { fromVm: Method; tick: (nowUs: number) => void };
    const b = bridge as unknown as { breath: (frames: readonly ReceivedFrame[], ...rest: unknown[]) => void };
    const own = { fromVm: p.fromVm, tick: p.tick, breath: b.breath };
    // The pipeline gets the breath's time (the bridge's monotonic clock); the kernel's receive time is on the port's frame.
    b.breath = (frames, ...rest) => {
      this.note(frames);
      own.breath.call(bridge, frames, ...rest);
    };
    p.fromVm = (...args: unknown[]) => {
      const seq = echoReplySeq(args[1] as Buffer);
      if (seq >= 0) this.replyAt[args[0] as 0 | 1].set(seq, args[2] as number);
      own.fromVm.apply(pipeline, args);
    };
    p.tick = (t) => {
      const t0 = performance.now();
      own.tick.call(pipeline, t);
      const us = (performance.now() - t0) * 1000;
      this.tickCalls++;
      this.tickUs += us;
      if (us > this.tickMaxUs) this.tickMaxUs = us;
    };
    // Instance properties shadowed the prototype's methods; deleting them restores the originals.
    this.restore = () => {
      delete (p as Partial<typeof p>).fromVm;
      delete (p as Partial<typeof p>).tick;
      delete (b as Partial<typeof b>).breath;
    };
  }

  private note(frames: readonly ReceivedFrame[]): void {
    this.frames += frames.length;
    if (!this.kernelTimestamps) return;
    const now = nowUs();
    for (const f of frames) this.delays.push(now - f.timeUs);
  }

  stop(): LatencyProbeReport {
    this.restore();
    const lags: number[] = [];
    for (const [seq, primaryUs] of this.replyAt[0]) {
      const backupUs = this.replyAt[1].get(seq);
      if (backupUs !== undefined) lags.push(backupUs - primaryUs);
    }
    return {
      frames: this.frames,
      kernelToJsUs: this.kernelTimestamps && this.delays.length
        ? { p50: percentile(this.delays, 50), p99: percentile(this.delays, 99), max: Math.max(...this.delays) }
        : null,
      backupLagUs: { p50: percentile(lags, 50), p99: percentile(lags, 99), replies: lags.length },
      tick: { calls: this.tickCalls, meanUs: this.tickCalls ? this.tickUs / this.tickCalls : NaN, maxUs: this.tickMaxUs },
    };
  }
}
