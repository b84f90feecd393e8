/**
 * CapPort: a PacketPort on a live interface through libpcap (npm `cap`).
 *
 * In:  every frame the interface receives, delivered as a one-frame batch
 *      (`cap` emits packets one at a time, synchronously, from its poll
 *      callback). The frame is a view of the handle's single receive buffer:
 *      valid only during the callback.
 * Out: frames queued by `send`, written with pcap_sendpacket on `flush`, or
 *      as soon as `maxQueuedFrames` are queued. `send` keeps a reference, not a
 *      copy: a frame must not be changed or reused before the next `flush`.
 *
 * One pcap handle does both capture and send: a packet socket never receives
 * its own transmissions, so frames we send are not delivered back to us. (A
 * second handle used for sending would see them and loop them endlessly.)
 * `cap` always opens in promiscuous and immediate mode, and has no
 * pcap_stats: `rxDrops` counts only frames truncated by the receive buffer.
 */
import { Cap } from 'cap';
import { performance } from 'node:perf_hooks';
import { BatchReceiver, PacketPort, PortStats, ReceivedFrame, emptyPortStats } from './port';
import { UserFacingError } from '../errors';

export interface CapPortOptions {
  /** pcap-filter expression; default '' (every frame). */
  filter?: string;
  /** libpcap's kernel ring, bytes. Default 8 MiB. */
  bufferBytes?: number;
  /** Frames queued by `send` before a flush is forced. Default 256. */
  maxQueuedFrames?: number;
}

export class CapPortError extends UserFacingError {
  constructor(readonly device: string, message: string) {
    super(`cap port ${device}: ${message}`);
    this.name = 'CapPortError';
  }
}

/** cap's snaplen is fixed at 65535; one spare byte shows truncation plainly. */
const RECEIVE_BUFFER_BYTES = 65536;

/**
 * Closed handles, kept reachable for the life of the process. cap 0.2.1's
 * native destructor (run when V8 collects a closed `Cap`) calls
 * node::EmitAsyncDestroy from inside the GC and crashes the process with
 * SIGSEGV (seen both mid-run and at exit, Node 20). A closed handle is small;
 * never letting one be collected is the only fix short of patching cap.
 */
const retiredCaps: Cap[] = [];

export class CapPort implements PacketPort {
  readonly name: string;
  private readonly cap = new Cap();
  private readonly receiveBuffer = Buffer.alloc(RECEIVE_BUFFER_BYTES);
  private readonly sendQueue: Buffer[] = [];
  private readonly maxQueuedFrames: number;
  private readonly counters: PortStats = emptyPortStats();
  private receiver: BatchReceiver | undefined;
  private closed = false;
  /** The most recent send failure, for diagnostics (`txErrors` counts them). */
  lastSendError: Error | undefined;

  constructor(device: string, options: CapPortOptions = {}) {
    this.name = device;
    this.maxQueuedFrames = options.maxQueuedFrames ?? 256;
    let linkType: string;
    try {
      linkType = this.cap.open(device, options.filter ?? '', options.bufferBytes ?? 8 * 1024 * 1024, this.receiveBuffer);
    } catch (err) {
      retiredCaps.push(this.cap);
      throw new CapPortError(device, `cannot open: ${(err as Error).message}`);
    }
    if (linkType !== 'ETHERNET') {
      this.cap.close();
      retiredCaps.push(this.cap);
      throw new CapPortError(device, `link type ${linkType}, expected ETHERNET`);
    }
    this.cap.on('packet', (nbytes, truncated) => this.receive(nbytes, truncated));
  }

  private receive(nbytes: number, truncated: boolean): void {
    if (truncated) {
      this.counters.rxDrops++;
      return;
    }
    this.counters.rxFrames++;
    this.counters.rxBytes += nbytes;
    if (!this.receiver) return;
    const received: ReceivedFrame = {
      frame: this.receiveBuffer.subarray(0, nbytes),
      timeUs: Math.round((performance.timeOrigin + performance.now()) * 1000),
    };
    this.receiver([received]);
  }

  onBatch(receiver: BatchReceiver): void {
    this.receiver = receiver;
  }

  send(frame: Buffer): void {
    if (this.closed) {
      this.counters.txErrors++;
      return;
    }
    this.sendQueue.push(frame);
    if (this.sendQueue.length >= this.maxQueuedFrames) this.flush();
  }

  flush(): void {
    for (const frame of this.sendQueue) {
      try {
        this.cap.send(frame, frame.length);
        this.counters.txFrames++;
        this.counters.txBytes += frame.length;
      } catch (err) {
        this.counters.txErrors++;
        this.lastSendError = new CapPortError(this.name, `send of ${frame.length} bytes failed: ${(err as Error).message}`);
      }
    }
    this.sendQueue.length = 0;
  }

  stats(): PortStats {
    return { ...this.counters };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.flush();
    this.closed = true;
    this.receiver = undefined;
    this.cap.close();
    this.cap.removeAllListeners();
    retiredCaps.push(this.cap);
  }
}
