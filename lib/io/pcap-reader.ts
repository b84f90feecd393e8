/**
 * Capture reader: classic pcap (µs and ns, either byte order) and pcapng.
 *
 * In:  a capture file, or its bytes.
 * Out: PcapRecords: Ethernet frames as views into the file's buffer, stamped
 *      in microseconds since the epoch; or a PcapFormatError naming the file
 *      and byte offset. A capture that is cut short is an error, never a
 *      shorter result: a frame missing from a replay would pass for divergence.
 */
import { readFileSync } from 'node:fs';
import { PortUsageError } from './errors';
import { BatchReceiver, PacketPort, PortStats, emptyPortStats } from './port';
import { UserFacingError } from '../errors';

export interface PcapRecord {
  /** The captured bytes: a subarray of the file buffer, not a copy. */
  readonly frame: Buffer;
  readonly timeUs: number;
  /** Length on the wire; larger than `frame.length` when the capture was snapped. */
  readonly origLen: number;
}

export class PcapFormatError extends UserFacingError {
  constructor(readonly source: string, readonly offset: number, readonly detail: string) {
    super(`${source}: ${detail} (at byte offset ${offset})`);
    this.name = 'PcapFormatError';
  }
}

export class UnsupportedLinkTypeError extends PcapFormatError {
  constructor(source: string, offset: number, readonly linkType: number, readonly interfaceId?: number) {
    const where = interfaceId === undefined ? '' : ` on interface ${interfaceId}`;
    super(source, offset, `link type ${linkType}${where} is not Ethernet (1); only Ethernet frames can be replayed`);
    this.name = 'UnsupportedLinkTypeError';
  }
}

const LINKTYPE_ETHERNET = 1;

const PCAP_MAGIC_US = 0xa1b2c3d4;
const PCAP_MAGIC_NS = 0xa1b23c4d;
const PCAP_HEADER_LEN = 24;
const PCAP_RECORD_HEADER_LEN = 16;

// pcapng block types and options (draft-ietf-opsawg-pcapng §4, §11).
const BLOCK_SHB = 0x0a0d0d0a;
const BLOCK_IDB = 1;
const BLOCK_OPB = 2;
const BLOCK_SPB = 3;
const BLOCK_EPB = 6;
const BYTE_ORDER_MAGIC = 0x1a2b3c4d;
const BLOCK_OVERHEAD = 12;
const OPT_ENDOFOPT = 0;
const OPT_IF_TSRESOL = 9;
const OPT_IF_TSOFFSET = 14;
const DEFAULT_TSRESOL = 6;

export function readPcapFile(path: string): PcapRecord[] {
  return parsePcap(readFileSync(path), path);
}

export function parsePcap(buf: Buffer, sourceName: string): PcapRecord[] {
  if (buf.length < 4) {
    throw new PcapFormatError(sourceName, 0, `${buf.length} bytes is too short to be a capture`);
  }
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  // The SHB type is a palindrome, so it reads the same in either byte order.
  return dv.getUint32(0) === BLOCK_SHB ? parsePcapng(buf, dv, sourceName) : parseClassic(buf, dv, sourceName);
}

function parseClassic(buf: Buffer, dv: DataView, source: string): PcapRecord[] {
  const le = isPcapMagic(dv.getUint32(0, true));
  const magic = dv.getUint32(0, le);
  if (!isPcapMagic(magic)) {
    throw new PcapFormatError(source, 0, `magic 0x${magic.toString(16).padStart(8, '0')} is neither pcap nor pcapng`);
  }
  if (buf.length < PCAP_HEADER_LEN) {
    throw new PcapFormatError(source, buf.length, `file header is truncated: ${buf.length} of ${PCAP_HEADER_LEN} bytes present`);
  }
  // The upper bits of the link-type field carry FCS flags, not the type (pcap-linktype(7)).
  const linkType = dv.getUint32(20, le) & 0xffff;
  if (linkType !== LINKTYPE_ETHERNET) throw new UnsupportedLinkTypeError(source, 20, linkType);
  const fractionsPerUs = magic === PCAP_MAGIC_NS ? 1000 : 1;

  const records: PcapRecord[] = [];
  for (let off = PCAP_HEADER_LEN; off < buf.length; ) {
    if (off + PCAP_RECORD_HEADER_LEN > buf.length) {
      throw new PcapFormatError(source, off, `file ends inside a record header: ${buf.length - off} of ${PCAP_RECORD_HEADER_LEN} bytes present`);
    }
    const capLen = dv.getUint32(off + 8, le);
    const start = off + PCAP_RECORD_HEADER_LEN;
    if (start + capLen > buf.length) {
      throw new PcapFormatError(source, off, `file ends inside record ${records.length + 1}: ${buf.length - start} of ${capLen} captured bytes present`);
    }
    records.push({
      frame: buf.subarray(start, start + capLen),
      timeUs: dv.getUint32(off, le) * 1e6 + Math.floor(dv.getUint32(off + 4, le) / fractionsPerUs),
      origLen: dv.getUint32(off + 12, le),
    });
    off = start + capLen;
  }
  return records;
}

function isPcapMagic(magic: number): boolean {
  return magic === PCAP_MAGIC_US || magic === PCAP_MAGIC_NS;
}

interface PcapngInterface {
  readonly linkType: number;
  /** 0 means "no limit" (pcapng §4.2). */
  readonly snapLen: number;
  readonly ticksToUs: (high: number, low: number) => number;
}

function parsePcapng(buf: Buffer, dv: DataView, source: string): PcapRecord[] {
  const parser = new PcapngParser(buf, dv, source);
  while (parser.offset < buf.length) parser.offset += parser.readBlock();
  return parser.records;
}

class PcapngParser {
  readonly records: PcapRecord[] = [];
  /** Start of the block being read: every error points here. */
  offset = 0;
  private le = true;
  private interfaces: PcapngInterface[] = [];
  // A Simple Packet Block has no timestamp; repeating the last one keeps replay time monotonic.
  private lastTimeUs = 0;

  constructor(private readonly buf: Buffer, private readonly dv: DataView, private readonly source: string) {}

  /** Reads the block at `offset` and returns its length. */
  readBlock(): number {
    const { buf, dv, offset: off } = this;
    if (buf.length - off < BLOCK_OVERHEAD) this.fail(`file ends inside a block header: ${buf.length - off} of ${BLOCK_OVERHEAD} bytes present`);
    const type = dv.getUint32(off, this.le);
    if (type === BLOCK_SHB) this.startSection();
    const le = this.le;
    const blockLen = dv.getUint32(off + 4, le);
    if (blockLen < BLOCK_OVERHEAD || blockLen % 4 !== 0) this.fail(`${blockName(type)} has length ${blockLen}; a block is a multiple of 4 bytes and at least ${BLOCK_OVERHEAD}`);
    if (off + blockLen > buf.length) this.fail(`file ends inside ${blockName(type)}: ${buf.length - off} of ${blockLen} bytes present`);
    const trailingLen = dv.getUint32(off + blockLen - 4, le);
    if (trailingLen !== blockLen) this.fail(`${blockName(type)} has trailing length ${trailingLen}, leading length ${blockLen}`);

    const body = off + 8;
    const bodyLen = blockLen - BLOCK_OVERHEAD;
    switch (type) {
      case BLOCK_SHB:
        this.need(type, bodyLen, 16);
        break;
      case BLOCK_IDB:
        this.need(type, bodyLen, 8);
        this.interfaces.push(this.readInterface(body, body + bodyLen));
        break;
      case BLOCK_EPB:
      case BLOCK_OPB: {
        this.need(type, bodyLen, 20);
        // The obsolete Packet Block packs a 16-bit interface id and drop count where EPB has a 32-bit id.
        const iface = this.ethernetInterface(type === BLOCK_EPB ? dv.getUint32(body, le) : dv.getUint16(body, le));
        const capLen = dv.getUint32(body + 12, le);
        if (capLen > bodyLen - 20) this.fail(`packet claims ${capLen} captured bytes, its block holds ${bodyLen - 20}`);
        this.lastTimeUs = iface.ticksToUs(dv.getUint32(body + 4, le), dv.getUint32(body + 8, le));
        this.records.push({ frame: buf.subarray(body + 20, body + 20 + capLen), timeUs: this.lastTimeUs, origLen: dv.getUint32(body + 16, le) });
        break;
      }
      case BLOCK_SPB: {
        this.need(type, bodyLen, 4);
        const iface = this.ethernetInterface(0);
        const origLen = dv.getUint32(body, le);
        // An SPB does not store its captured length: it is the wire length cut by snaplen (pcapng §4.4).
        const capLen = Math.min(origLen, iface.snapLen || origLen, bodyLen - 4);
        this.records.push({ frame: buf.subarray(body + 4, body + 4 + capLen), timeUs: this.lastTimeUs, origLen });
        break;
      }
      default:
        // Statistics, name resolution, decryption secrets, custom blocks: nothing to replay.
        break;
    }
    return blockLen;
  }

  /** Each section declares its own byte order and interfaces (pcapng §4.1). */
  private startSection(): void {
    const order = this.dv.getUint32(this.offset + 8, true);
    if (order !== BYTE_ORDER_MAGIC && this.dv.getUint32(this.offset + 8, false) !== BYTE_ORDER_MAGIC) {
      this.fail(`section header has byte-order magic 0x${order.toString(16)}, expected 0x1a2b3c4d in either byte order`);
    }
    this.le = order === BYTE_ORDER_MAGIC;
    this.interfaces = [];
  }

  private ethernetInterface(id: number): PcapngInterface {
    const iface = this.interfaces[id] ?? this.fail(`packet refers to interface ${id}, but this section describes ${this.interfaces.length}`);
    if (iface.linkType !== LINKTYPE_ETHERNET) throw new UnsupportedLinkTypeError(this.source, this.offset, iface.linkType, id);
    return iface;
  }

  private readInterface(body: number, bodyEnd: number): PcapngInterface {
    const { dv, le } = this;
    let tsresol = DEFAULT_TSRESOL;
    let offsetSec = 0n;
    for (let opt = body + 8; opt + 4 <= bodyEnd; ) {
      const code = dv.getUint16(opt, le);
      const len = dv.getUint16(opt + 2, le);
      if (code === OPT_ENDOFOPT) break;
      if (opt + 4 + len > bodyEnd) this.fail(`interface option ${code} of ${len} bytes runs past the end of its block`);
      if (code === OPT_IF_TSRESOL && len >= 1) tsresol = dv.getUint8(opt + 4);
      if (code === OPT_IF_TSOFFSET && len >= 8) offsetSec = dv.getBigInt64(opt + 4, le);
      opt += 4 + ((len + 3) & ~3);
    }
    return { linkType: dv.getUint16(body, le), snapLen: dv.getUint32(body + 4, le), ticksToUs: ticksToUs(tsresol, offsetSec) };
  }

  private need(type: number, bodyLen: number, bytes: number): void {
    if (bodyLen < bytes) this.fail(`${blockName(type)} body is ${bodyLen} bytes, needs at least ${bytes}`);
  }

  private fail(detail: string): never {
    throw new PcapFormatError(this.source, this.offset, detail);
  }
}

function blockName(type: number): string {
  return `block type 0x${type.toString(16)}`;
}

/** if_tsresol (pcapng §4.2): high bit clear means 10^-n s per tick, set means 2^-n. */
function ticksToUs(tsresol: number, offsetSec: bigint): (high: number, low: number) => number {
  const offsetUs = Number(offsetSec) * 1e6;
  // The default resolution needs no BigInt: a µs count since the epoch fits a double exactly.
  if (tsresol === DEFAULT_TSRESOL) return (high, low) => high * 2 ** 32 + low + offsetUs;
  const ticksPerSecond = tsresol & 0x80 ? 1n << BigInt(tsresol & 0x7f) : 10n ** BigInt(tsresol);
  return (high, low) => Number(((BigInt(high) << 32n) | BigInt(low)) * 1_000_000n / ticksPerSecond) + offsetUs;
}

/**
 * A capture file as a read-only port. `replay()` is the only source of breaths:
 * it hands the capture to the receiver, `batchSize` frames per batch.
 */
export class PcapFilePort implements PacketPort {
  readonly name: string;
  private readonly captured: PcapRecord[];
  private receiver: BatchReceiver | undefined;
  private readonly counters = emptyPortStats();
  private closed = false;

  constructor(readonly path: string, name = `pcap:${path}`) {
    this.name = name;
    this.captured = readPcapFile(path);
  }

  records(): readonly PcapRecord[] {
    return this.captured;
  }

  onBatch(receiver: BatchReceiver): void {
    this.receiver = receiver;
  }

  /** Delivers every record, in file order; returns how many were delivered. */
  replay(batchSize = Infinity): number {
    if (this.closed) throw new PortUsageError(this.name, 'replay after close');
    if (!(batchSize >= 1)) throw new PortUsageError(this.name, `replay batch size must be at least 1, got ${batchSize}`);
    const receiver = this.receiver ?? this.noReceiver();
    for (let i = 0; i < this.captured.length; i += batchSize) {
      const batch = this.captured.slice(i, i + batchSize);
      for (const record of batch) {
        this.counters.rxFrames++;
        this.counters.rxBytes += record.frame.length;
      }
      receiver(batch);
    }
    return this.captured.length;
  }

  send(_frame: Buffer): never {
    throw new PortUsageError(this.name, 'a capture file is read-only; use PcapWriterPort to record sent frames');
  }

  flush(): void {}

  stats(): PortStats {
    return { ...this.counters };
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  private noReceiver(): never {
    throw new PortUsageError(this.name, 'replay with no receiver; call onBatch first');
  }
}
