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
export interface ReceivedFrame {
  /** The frame bytes, starting at the Ethernet destination address. */
  readonly frame: Buffer;
  /** Capture or arrival time, microseconds since the Unix epoch. */
  readonly timeUs: number;
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
  onBatch(receiver: BatchReceiver): void;
  send(frame: Buffer): void;
  flush(): void;
  stats(): PortStats;
  close(): Promise<void>;
}

export function emptyPortStats(): PortStats {
  return { rxFrames: 0, rxBytes: 0, txFrames: 0, txBytes: 0, rxDrops: 0, txErrors: 0 };
}
