/**
 * SplitRingPort: one interface read through two AF_PACKET rings, so that a
 * port with virtio-net headers needs neither hundreds of MiB of kernel
 * memory nor few slots (`run --split-rings`).
 *
 *   interface ─┬─ BPF len ≤ SMALL_FRAME_MAX ─► small ring: 2 KiB slots, many (every MTU-sized frame)
 *              └─ BPF len > SMALL_FRAME_MAX ─► large ring: 68 KiB slots, few (GSO super-frames)
 *
 * With one ring, each slot must hold a 64 KiB super-frame: 512 slots cost 34
 * MiB a port and overflow under a few downloads of MTU-sized frames (stop 24:
 * 9,000–16,000 frames dropped a run). TPACKET_V3 would pack frames of every
 * size into one ring, but hands a frame over only when its block is retired
 * (at the earliest 1 ms later at idle), which a latency-bound bridge cannot
 * afford; these are two TPACKET_V2 rings, each frame in exactly one of them.
 *
 * Sends go through the small ring's socket (it has the virtio-net header).
 * The two rings are read as the kernel signals them: a super-frame and a
 * small frame that arrive within one wake-up may be handed over in the
 * other order. Within a flow that only happens between a response's small
 * and large segments; the comparator puts a stream back in order, and what
 * it releases a client's TCP reorders.
 */
import type { AfPacketPortOptions } from './afpacket-port';
import type { BatchReceiver, PacketPort, PortStats, VirtioNetHeader } from './port';

/** Frames up to this length (the kernel's skb length: whole frame, virtio-net header not counted) go to the small ring. */
export const SMALL_FRAME_MAX = 1920;
/** The small ring: 2 KiB slots (two a page), 8 MiB. */
export const SMALL_RING_FRAMES = 4096;
const SMALL_FRAME_SIZE = 2048;
/** The large ring: 68 KiB slots for GSO super-frames, about 8.7 MiB. */
export const LARGE_RING_FRAMES = 128;

const BPF_LD_W_LEN = 0x80, BPF_JMP_JGT_K = 0x25, BPF_RET_K = 0x06;

/** A classic BPF program accepting frames whose length is at most `max` (`above` false) or above it (`above` true). */
export function lengthFilter(max: number, above: boolean): Buffer {
  const insns: [number, number, number, number][] = [
    [BPF_LD_W_LEN, 0, 0, 0],
    // len > max: on to accept (above) or past it to drop (at most).
    [BPF_JMP_JGT_K, above ? 0 : 1, above ? 1 : 0, max],
    [BPF_RET_K, 0, 0, 0x40000],
    [BPF_RET_K, 0, 0, 0],
  ];
  const out = Buffer.alloc(insns.length * 8);
  insns.forEach(([code, jt, jf, k], n) => {
    out.writeUInt16LE(code, n * 8);
    out.writeUInt8(jt, n * 8 + 2);
    out.writeUInt8(jf, n * 8 + 3);
    out.writeUInt32LE(k >>> 0, n * 8 + 4);
  });
  return out;
}

/** The options of each ring, from the port's (which must have vnetHdr). */
export function splitRingOptions(options: AfPacketPortOptions): { small: AfPacketPortOptions; large: AfPacketPortOptions } {
  const { ringFrames: _ignored, frameSize: _alsoIgnored, ...rest } = options;
  return {
    small: { ...rest, frameSize: SMALL_FRAME_SIZE, ringFrames: SMALL_RING_FRAMES, filter: lengthFilter(SMALL_FRAME_MAX, false) },
    large: { ...rest, ringFrames: LARGE_RING_FRAMES, filter: lengthFilter(SMALL_FRAME_MAX, true), sendThread: false },
  };
}

export class SplitRingPort implements PacketPort {
  readonly name: string;
  readonly arrivalTimes = true;
  readonly ring: NonNullable<PacketPort['ring']>;

  constructor(private readonly small: PacketPort, private readonly large: PacketPort) {
    this.name = small.name;
    const s = small.ring!, l = large.ring!;
    const bytesOf = (r: NonNullable<PacketPort['ring']>) => Math.ceil(r.frames / Math.max(1, Math.floor(r.blockSize / r.frameSize))) * r.blockSize;
    this.ring = { frames: s.frames, frameSize: s.frameSize, blockSize: s.blockSize, bytes: bytesOf(s) + bytesOf(l), large: { frames: l.frames, frameSize: l.frameSize } };
  }

  onBatch(receiver: BatchReceiver): void {
    this.small.onBatch(receiver);
    this.large.onBatch(receiver);
  }

  send(frame: Buffer, vnet?: VirtioNetHeader): void {
    this.small.send(frame, vnet);
  }

  flush(): void {
    this.small.flush();
  }

  stats(settled?: boolean): PortStats {
    const s = this.small.stats(settled), l = this.large.stats(settled);
    const sum: Record<string, unknown> = { ...s };
    // Counters add up (rx of each ring, tx of the small one's socket); the longest-once figures take the larger.
    for (const [k, v] of Object.entries(l)) {
      if (typeof v !== 'number' || typeof sum[k] !== 'number') continue;
      sum[k] = /Max/.test(k) ? Math.max(sum[k] as number, v) : (sum[k] as number) + v;
    }
    return sum as unknown as PortStats;
  }

  setInlineSends(on: boolean): void {
    this.small.setInlineSends?.(on);
    this.large.setInlineSends?.(on);
  }

  async close(): Promise<void> {
    await Promise.all([this.small.close(), this.large.close()]);
  }
}
