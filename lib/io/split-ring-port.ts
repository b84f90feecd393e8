/**
 * SplitRingPort: one interface read through two AF_PACKET rings, so that a
 * port with virtio-net headers needs neither hundreds of MiB of kernel
 * memory nor few slots (`run --split-rings`).
 *
 *   interface ─┬─ BPF len ≤ SMALL_FRAME_MAX ─► small ring: 2 KiB slots, many (every MTU-sized frame)
 *              └─ BPF len > SMALL_FRAME_MAX ─► large ring: 68 KiB slots, few (GSO super-frames)
 *
 * A worker's port (`run --workers N`) puts its shard filter before each
 * ring's length test (andFilters): N pairs on one interface, each ring
 * taking its worker's frames of its length class. Each pair has its own
 * fanout group (the kernel makes its id unique: PACKET_FANOUT_FLAG_UNIQUEID).
 *
 * With one ring, each slot must hold a 64 KiB super-frame: 512 slots cost 34
 * MiB a port and overflow under a few downloads of MTU-sized frames (stop 24:
 * 9,000–16,000 frames dropped a run). TPACKET_V3 would pack frames of every
 * size into one ring, but hands a frame over only when its block is retired
 * (at the earliest 1 ms later at idle), which a latency-bound bridge cannot
 * afford; these are two TPACKET_V2 rings, each frame in exactly one of them.
 *
 * Sends go through the small ring's socket (it has the virtio-net header).
 * On AF_PACKET the large ring follows the small one (AfPacketPort.follow):
 * whichever wakes, both are drained in one breath and handed over as one
 * batch in the order the frames arrived (kernel timestamps), as one ring
 * would. (Read as each signalled, a response's small header segment and
 * its super-frames reached the bridge in either order: stop 24 measured 12-
 * 17% fewer 100 KiB requests a second and timeout checkpoints.) Other
 * ports are composed as they are, each batch as it comes.
 */
import { AfPacketPort, AfPacketPortOptions } from './afpacket-port';
import { BatchReceiver, PacketPort, PortStats, ringBytes, VirtioNetHeader } from './port';
import { andFilters, BpfProgram } from '../dataplane/shard';

/**
 * Frames up to this length (the kernel's skb length: whole frame, virtio-net
 * header not counted) go to the small ring, on an interface whose MTU is at
 * most SMALL_FRAME_MAX - 22; above, the bound is the MTU's largest frame
 * (splitBound).
 */
export const SMALL_FRAME_MAX = 1920;
/** The small ring: 8 MiB of slots, 4,096 of 2 KiB (two a page) at an MTU of up to 1,898. */
export const SMALL_RING_FRAMES = 4096;
const SMALL_RING_BYTES = 8 << 20;
const SMALL_FRAME_SIZE = 2048;
/** The large ring: 68 KiB slots for GSO super-frames, about 8.7 MiB. */
export const LARGE_RING_FRAMES = 128;
/** The most an MTU-sized frame carries beyond the MTU: an Ethernet header and two VLAN tags. */
const FRAME_OVER_MTU = 14 + 8;

/** The small ring's bound for an interface of this MTU: every frame the MTU allows (not a GSO super-frame) fits it. */
export function splitBound(mtu: number): number {
  return Math.max(SMALL_FRAME_MAX, mtu + FRAME_OVER_MTU);
}

const BPF_LD_W_LEN = 0x80, BPF_JMP_JGT_K = 0x25, BPF_RET_K = 0x06;

/** A classic BPF program accepting frames whose length is at most `max` (`above` false) or above it (`above` true). */
export function lengthFilter(max: number, above: boolean): Buffer {
  return new BpfProgram()
    .op(BPF_LD_W_LEN)
    // len > max: on to accept (above), or to drop (at most).
    .op(BPF_JMP_JGT_K, max, above ? 0 : 'drop', above ? 'drop' : 0)
    .op(BPF_RET_K, 0x40000)
    .label('drop').op(BPF_RET_K, 0)
    .assemble();
}

/**
 * The options of each ring, from the port's (which must have vnetHdr; its
 * ringFrames and frameSize are the one-ring sizes and do not apply), and the
 * bound between them. `smallFrames`: slots of the small ring if asked (`run
 * --ring-frames`), else 8 MiB worth (SMALL_RING_FRAMES at a standard MTU);
 * `largeFrames`: slots of the large ring if asked (`run --large-ring-frames`),
 * else LARGE_RING_FRAMES.
 * `mtu`: the interface's; a jumbo MTU makes the small ring's slots hold its
 * frames, so only GSO super-frames go to the large ring's few slots. The
 * port's own `filter` (a worker's shard) applies to both rings: each takes
 * the frames that filter accepts and that are of its length class.
 */
export function splitRingOptions(options: AfPacketPortOptions, smallFrames?: number, mtu = 1500, largeFrames?: number): { small: AfPacketPortOptions; large: AfPacketPortOptions; bound: number } {
  const { ringFrames: _ignored, frameSize: _alsoIgnored, filter, ...rest } = options;
  const bound = splitBound(mtu);
  const ringFilter = (large: boolean) => (filter ? andFilters(filter, lengthFilter(bound, large)) : lengthFilter(bound, large));
  // Room for the slot's header, the address, the reserve and the virtio-net header (about 94 bytes) and more.
  const frameSize = bound === SMALL_FRAME_MAX ? SMALL_FRAME_SIZE : Math.ceil((bound + 128) / 1024) * 1024;
  return {
    small: { ...rest, frameSize, ringFrames: smallFrames || Math.floor(SMALL_RING_BYTES / frameSize), filter: ringFilter(false) },
    large: { ...rest, ringFrames: largeFrames || LARGE_RING_FRAMES, filter: ringFilter(true), sendThread: false },
    bound,
  };
}

/**
 * The fanout bound of a pair (AfPacketPort.follow): a fanout program sees a
 * received frame from its network header, 14 bytes past the Ethernet header
 * the rings' own filters count, so it is 14 below the rings' bound and both
 * agree on every frame.
 */
export function fanoutBound(bound: number): number {
  return bound - 14;
}

export class SplitRingPort implements PacketPort {
  readonly name: string;
  readonly arrivalTimes = true;
  readonly ring: NonNullable<PacketPort['ring']>;

  /**
   * `bound`: the rings' length bound (splitRingOptions); `fanout` false: do
   * not try a fanout group (each frame offered to both sockets; lab-bench's A/B).
   */
  constructor(private readonly small: PacketPort, private readonly large: PacketPort, fanout = true, bound = SMALL_FRAME_MAX) {
    this.name = small.name;
    const s = small.ring!, l = large.ring!;
    this.merged = small instanceof AfPacketPort && large instanceof AfPacketPort;
    const joined = this.merged ? (large as AfPacketPort).follow(small as AfPacketPort, fanout ? fanoutBound(bound) : undefined) : false;
    this.fanout = joined === true;
    this.fanoutRefused = typeof joined === 'string' ? joined : null;
    this.ring = { frames: s.frames, frameSize: s.frameSize, blockSize: s.blockSize, bytes: ringBytes(s) + ringBytes(l), large: { frames: l.frames, frameSize: l.frameSize, fanout: this.fanout } };
  }

  /** Whether the two rings are read as one, in arrival order (both AF_PACKET). */
  readonly merged: boolean;
  /** Whether the two sockets share a fanout group (each frame offered to one of them, not both). */
  readonly fanout: boolean;
  /** Why not, when it was tried (a kernel before 6.2, an error); null otherwise. */
  readonly fanoutRefused: string | null;

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
    // How many of the frames came through the large ring (GSO super-frames).
    sum.rxLargeFrames = l.rxFrames;
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
