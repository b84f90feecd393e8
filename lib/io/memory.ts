/**
 * An in-memory port for unit tests.
 *
 * In:  `inject()` delivers one batch to the receiver, as a NIC's breath would.
 * Out: `send()` copies the frame into `pending` (the caller may reuse its
 *      buffer, as it may with a real ring); `flush()` moves `pending` to `sent`,
 *      so a test can tell "sent" from "sent and flushed".
 */
import { PortUsageError } from './errors';
import { BatchReceiver, PacketPort, PortStats, ReceivedFrame, emptyPortStats } from './port';

export class MemoryPort implements PacketPort {
  /** Frames sent and flushed, oldest first. */
  readonly sent: Buffer[] = [];
  /** Frames sent since the last flush. */
  readonly pending: Buffer[] = [];
  private receiver: BatchReceiver | undefined;
  private readonly counters = emptyPortStats();
  private closed = false;

  constructor(readonly name = 'memory', private readonly clockUs: () => number = () => Date.now() * 1000) {}

  onBatch(receiver: BatchReceiver): void {
    this.receiver = receiver;
  }

  /** Delivers `frames` as one batch; bare Buffers are stamped with the port's clock. */
  inject(frames: readonly Buffer[] | readonly ReceivedFrame[]): void {
    if (this.closed) throw new PortUsageError(this.name, 'inject after close');
    // Dropping injected frames would make a test pass for the wrong reason.
    if (!this.receiver) throw new PortUsageError(this.name, 'inject with no receiver; call onBatch first');
    const batch = frames.map((f: Buffer | ReceivedFrame) => (Buffer.isBuffer(f) ? { frame: f, timeUs: this.clockUs() } : f));
    for (const { frame } of batch) {
      this.counters.rxFrames++;
      this.counters.rxBytes += frame.length;
    }
    this.receiver(batch);
  }

  send(frame: Buffer): void {
    if (this.closed) throw new PortUsageError(this.name, 'send after close');
    this.pending.push(Buffer.from(frame));
  }

  flush(): void {
    for (const frame of this.pending) {
      this.sent.push(frame);
      this.counters.txFrames++;
      this.counters.txBytes += frame.length;
    }
    this.pending.length = 0;
  }

  stats(): PortStats {
    return { ...this.counters };
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}
