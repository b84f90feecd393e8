/**
 * PacketPort: the one interface between the data path and anything that
 * moves frames (a live interface, a pcap file, memory).
 *
 * In:  frames from the medium, delivered in batches ("breaths") to the
 *      receiver set with `onBatch`.
 * Out: frames handed to `send`, pushed to the medium on `flush` (or sooner
 *      when the port's own queue is full).
 *
 * A frame handed to a receiver is only valid during the callback: a stage
 * that keeps it must copy it.
 */
/**
 * struct virtio_net_hdr (without num_buffers), for ports opened with
 * PACKET_VNET_HDR: what the sender left for the NIC to do (segment a GSO
 * super-frame, finish a partial checksum). Offsets count from the Ethernet
 * header.
 */
export interface VirtioNetHeader {
  readonly flags: number;
  readonly gsoType: number;
  readonly hdrLen: number;
  readonly gsoSize: number;
  readonly csumStart: number;
  readonly csumOffset: number;
}

/** flags: the checksum field holds only the pseudo-header sum; the rest is left to the device. */
export const VIRTIO_NET_HDR_F_NEEDS_CSUM = 1;

export interface ReceivedFrame {
  /** The frame bytes, starting at the Ethernet destination address. */
  readonly frame: Buffer;
  /** Capture or arrival time, microseconds since the Unix epoch. */
  readonly timeUs: number;
  /** The virtio-net header it came with, on ports that exchange them. */
  readonly vnet?: VirtioNetHeader;
}

export type BatchReceiver = (frames: readonly ReceivedFrame[]) => void;

export interface PortStats {
  rxFrames: number;
  rxBytes: number;
  txFrames: number;
  txBytes: number;
  /** Frames the medium or the kernel dropped before we saw them. */
  rxDrops: number;
  /** Frames we could not send (medium refused, queue full). */
  txErrors: number;
}

export interface PacketPort {
  readonly name: string;
  /** True when `timeUs` is the kernel's wall-clock arrival time (AF_PACKET): the bridge then measures how long frames waited for it. */
  readonly arrivalTimes?: boolean;
  /** A receive ring in kernel memory mapped into this process (AF_PACKET): its slots and their size. */
  readonly ring?: {
    readonly frames: number;
    readonly frameSize: number;
    readonly blockSize: number;
    /** Kernel memory of every ring the port reads, when not just `frames` slots in blocks of `blockSize`. */
    readonly bytes?: number;
    /** A second ring for GSO super-frames (SplitRingPort): its slots, their size, and whether the two rings' sockets share a fanout group. */
    readonly large?: { readonly frames: number; readonly frameSize: number; readonly fanout?: boolean };
  };
  onBatch(receiver: BatchReceiver): void;
  /** Queues a frame (by reference: it must not change before `flush`), with its virtio-net header if any. */
  send(frame: Buffer, vnet?: VirtioNetHeader): void;
  flush(): void;
  /**
   * The counters. `settled` (default true): first wait until every frame
   * handed to a send thread has been sent, so the tx counts are exact; false:
   * what is counted now, without waiting (the data plane's own snapshots,
   * which must not wait behind a send backlog).
   */
  stats(settled?: boolean): PortStats;
  close(): Promise<void>;
  /**
   * Ports that can send a small flush on the caller's thread (AF_PACKET with
   * a send thread and sendInlineFrames): whether they may for now. The
   * bridge's rate gate turns it off while traffic is heavy.
   */
  setInlineSends?(on: boolean): void;
}

/** A ring's kernel memory: its own figure if it has one, else whole blocks, each holding as many slots as fit. */
export function ringBytes(r: NonNullable<PacketPort['ring']>): number {
  return r.bytes ?? Math.ceil(r.frames / Math.max(1, Math.floor(r.blockSize / r.frameSize))) * r.blockSize;
}

export function emptyPortStats(): PortStats {
  return { rxFrames: 0, rxBytes: 0, txFrames: 0, txBytes: 0, rxDrops: 0, txErrors: 0 };
}
