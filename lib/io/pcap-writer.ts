/**
 * Capture writer: classic microsecond pcap, little-endian, Ethernet.
 *
 * In:  frames with their time in microseconds since the epoch.
 * Out: a pcap file any libpcap tool reads. Records collect in a chunk that is
 *      written with one writeSync when it fills (or on flush/close), so
 *      recording a busy port costs one syscall per chunk, not per frame.
 */
import { closeSync, openSync, writeSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { PortUsageError } from './errors';
import { BatchReceiver, PacketPort, PortStats, emptyPortStats } from './port';
import { UserFacingError } from '../errors';

const PCAP_MAGIC_US = 0xa1b2c3d4;
const PCAP_HEADER_LEN = 24;
const PCAP_RECORD_HEADER_LEN = 16;
const LINKTYPE_ETHERNET = 1;
/** libpcap's MAXIMUM_SNAPLEN: readers treat larger records as corrupt. */
export const PCAP_SNAPLEN = 262144;
const CHUNK_BYTES = 1 << 20;

export class PcapWriteError extends UserFacingError {
  constructor(readonly path: string, readonly detail: string) {
    super(`${path}: ${detail}`);
    this.name = 'PcapWriteError';
  }
}

export class PcapWriter {
  private fd: number | undefined;
  private readonly chunk = Buffer.allocUnsafe(CHUNK_BYTES);
  private readonly dv = new DataView(this.chunk.buffer, this.chunk.byteOffset, this.chunk.byteLength);
  private used = 0;

  constructor(readonly path: string) {
    try {
      this.fd = openSync(path, 'w');
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      const why = code === 'ENOENT' ? `cannot create it: the folder ${dirname(resolve(path))} does not exist`
        : code === 'EACCES' || code === 'EPERM' ? `cannot create it: permission denied (${code})`
          : code === 'EISDIR' ? 'cannot create it: it is a folder'
            : `cannot create it: ${code ?? (e as Error).message}`;
      throw new PcapWriteError(path, why);
    }
    const dv = this.dv;
    dv.setUint32(0, PCAP_MAGIC_US, true);
    dv.setUint16(4, 2, true);
    dv.setUint16(6, 4, true);
    dv.setInt32(8, 0, true); // thiszone: timestamps are UTC
    dv.setUint32(12, 0, true); // sigfigs: always 0 in practice
    dv.setUint32(16, PCAP_SNAPLEN, true);
    dv.setUint32(20, LINKTYPE_ETHERNET, true);
    this.used = PCAP_HEADER_LEN;
    // Written now so the file is a valid, empty capture from the start.
    this.flush();
  }

  write(frame: Buffer, timeUs: number): void {
    if (this.fd === undefined) throw new PcapWriteError(this.path, 'write after close');
    const us = Math.floor(timeUs);
    const sec = Math.floor(us / 1e6);
    if (!(sec >= 0 && sec <= 0xffffffff)) {
      throw new PcapWriteError(this.path, `time ${timeUs} µs does not fit pcap's unsigned 32-bit seconds`);
    }
    // Capture semantics: keep the first snaplen bytes, record the full length.
    const capLen = Math.min(frame.length, PCAP_SNAPLEN);
    if (this.used + PCAP_RECORD_HEADER_LEN + capLen > CHUNK_BYTES) this.flush();
    const dv = this.dv;
    const at = this.used;
    dv.setUint32(at, sec, true);
    dv.setUint32(at + 4, us - sec * 1e6, true);
    dv.setUint32(at + 8, capLen, true);
    dv.setUint32(at + 12, frame.length, true);
    frame.copy(this.chunk, at + PCAP_RECORD_HEADER_LEN, 0, capLen);
    this.used = at + PCAP_RECORD_HEADER_LEN + capLen;
  }

  /** Writes buffered records to the file; `close()` does this too. */
  flush(): void {
    if (this.fd === undefined) return;
    for (let done = 0; done < this.used; ) done += writeSync(this.fd, this.chunk, done, this.used - done);
    this.used = 0;
  }

  close(): void {
    if (this.fd === undefined) return;
    try {
      this.flush();
    } finally {
      closeSync(this.fd);
      this.fd = undefined;
    }
  }
}

export function writePcapFile(path: string, records: Iterable<{ readonly frame: Buffer; readonly timeUs: number }>): void {
  const writer = new PcapWriter(path);
  try {
    for (const { frame, timeUs } of records) writer.write(frame, timeUs);
  } finally {
    writer.close();
  }
}

/**
 * A port that records what the data path sends to a pcap file, stamped by
 * `clockUs`. Nothing arrives on it, so its receiver is never called.
 */
export class PcapWriterPort implements PacketPort {
  readonly name: string;
  private readonly writer: PcapWriter;
  private readonly counters = emptyPortStats();
  private closed = false;

  constructor(path: string, private readonly clockUs: () => number = () => Date.now() * 1000, name = `pcap:${path}`) {
    this.name = name;
    this.writer = new PcapWriter(path);
  }

  onBatch(_receiver: BatchReceiver): void {}

  send(frame: Buffer): void {
    if (this.closed) throw new PortUsageError(this.name, 'send after close');
    try {
      this.writer.write(frame, this.clockUs());
    } catch (err) {
      this.counters.txErrors++;
      throw err;
    }
    this.counters.txFrames++;
    this.counters.txBytes += frame.length;
  }

  /** Puts this breath's frames on disk, so a reader following the file sees them. */
  flush(): void {
    this.writer.flush();
  }

  stats(): PortStats {
    return { ...this.counters };
  }

  async close(): Promise<void> {
    this.closed = true;
    this.writer.close();
  }
}
