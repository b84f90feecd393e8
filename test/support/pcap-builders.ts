/**
 * Builders for capture files and frames in tests: every header field is named
 * here once, so tests say what they build instead of spelling bytes.
 */

export type ByteOrder = 'le' | 'be';

/** An Ethernet frame whose bytes identify it: `seed` fills the addresses and payload. */
export function ethernetFrame(seed: number, payloadLen = 46, etherType = 0x88b5 /* local experimental */): Buffer {
  const frame = Buffer.alloc(14 + payloadLen);
  frame.fill(0x02, 0, 1).fill(seed & 0xff, 1, 6); // locally administered unicast
  frame.fill(0x02, 6, 7).fill((seed + 1) & 0xff, 7, 12);
  frame.writeUInt16BE(etherType, 12);
  for (let i = 0; i < payloadLen; i++) frame[14 + i] = (seed * 31 + i) & 0xff;
  return frame;
}

/** Writes integers in one byte order; `bytes()` is what was written. */
class FieldWriter {
  private readonly parts: Buffer[] = [];
  constructor(private readonly order: ByteOrder) {}
  u8(v: number): this { return this.push(1, (b) => b.writeUInt8(v)); }
  u16(v: number): this { return this.push(2, (b) => (this.order === 'le' ? b.writeUInt16LE(v) : b.writeUInt16BE(v))); }
  u32(v: number): this { return this.push(4, (b) => (this.order === 'le' ? b.writeUInt32LE(v) : b.writeUInt32BE(v))); }
  i64(v: bigint): this { return this.push(8, (b) => (this.order === 'le' ? b.writeBigInt64LE(v) : b.writeBigInt64BE(v))); }
  raw(bytes: Buffer): this { this.parts.push(bytes); return this; }
  pad4(): this { const len = this.bytes().length; return this.raw(Buffer.alloc((4 - (len % 4)) % 4)); }
  bytes(): Buffer { return Buffer.concat(this.parts); }
  private push(size: number, write: (b: Buffer) => void): this {
    const b = Buffer.alloc(size);
    write(b);
    this.parts.push(b);
    return this;
  }
}

export interface ClassicRecord {
  frame: Buffer;
  sec: number;
  /** Microseconds or nanoseconds, per the file's resolution. */
  fraction: number;
  origLen?: number;
}

export interface ClassicOptions {
  order?: ByteOrder;
  resolution?: 'us' | 'ns';
  linkType?: number;
}

export function classicPcap(records: readonly ClassicRecord[], opts: ClassicOptions = {}): Buffer {
  const w = new FieldWriter(opts.order ?? 'le')
    .u32(opts.resolution === 'ns' ? 0xa1b23c4d : 0xa1b2c3d4)
    .u16(2).u16(4).u32(0).u32(0).u32(262144)
    .u32(opts.linkType ?? 1);
  for (const r of records) {
    w.u32(r.sec).u32(r.fraction).u32(r.frame.length).u32(r.origLen ?? r.frame.length).raw(r.frame);
  }
  return w.bytes();
}

export interface InterfaceOptions {
  linkType?: number;
  snapLen?: number;
  /** if_tsresol byte: 6 = µs, 9 = ns, 0x80|n = 2^-n s. Omitted: the option is absent (µs). */
  tsresol?: number;
  tsoffsetSec?: bigint;
}

/** pcapng, block by block; `section()` starts a section in the given byte order. */
export class PcapngBuilder {
  private readonly blocks: Buffer[] = [];
  private order: ByteOrder = 'le';

  section(order: ByteOrder = 'le'): this {
    this.order = order;
    // Section length -1: unknown, as writers that stream do.
    return this.block(0x0a0d0d0a, this.fields().u32(0x1a2b3c4d).u16(1).u16(0).i64(-1n).bytes());
  }

  iface(opts: InterfaceOptions = {}): this {
    const w = this.fields().u16(opts.linkType ?? 1).u16(0).u32(opts.snapLen ?? 262144);
    if (opts.tsresol !== undefined) w.u16(9).u16(1).u8(opts.tsresol).pad4();
    if (opts.tsoffsetSec !== undefined) w.u16(14).u16(8).i64(opts.tsoffsetSec);
    if (opts.tsresol !== undefined || opts.tsoffsetSec !== undefined) w.u16(0).u16(0);
    return this.block(1, w.bytes());
  }

  /** An Enhanced Packet Block; `ticks` is in the interface's resolution. */
  epb(interfaceId: number, ticks: bigint, frame: Buffer, origLen = frame.length): this {
    const w = this.fields().u32(interfaceId).u32(Number(ticks >> 32n)).u32(Number(ticks & 0xffffffffn))
      .u32(frame.length).u32(origLen).raw(frame).pad4();
    return this.block(6, w.bytes());
  }

  /** A Simple Packet Block: no interface id, no timestamp, no captured length. */
  spb(frame: Buffer, origLen = frame.length): this {
    return this.block(3, this.fields().u32(origLen).raw(frame).pad4().bytes());
  }

  /** Any block; `lengthField` overrides both length fields to build corrupt files. */
  block(type: number, body: Buffer, lengthField?: number): this {
    const total = 12 + body.length;
    const len = lengthField ?? total;
    this.blocks.push(this.fields().u32(type).u32(len).raw(body).u32(len).bytes());
    return this;
  }

  build(): Buffer {
    return Buffer.concat(this.blocks);
  }

  private fields(): FieldWriter {
    return new FieldWriter(this.order);
  }
}
