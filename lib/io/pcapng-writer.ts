/**
 * A small pcapng writer (one section, named Ethernet interfaces, Enhanced
 * Packet Blocks, microsecond timestamps) for captures that show several
 * sides at once: Wireshark shows the interface name of every frame.
 */
import { writeFileSync } from 'node:fs';

export interface NamedFrame {
  /** Index into the interface names given to `writePcapngFile`. */
  iface: number;
  frame: Buffer;
  timeUs: number;
}

function pad4(n: number): number {
  return (n + 3) & ~3;
}

function block(type: number, body: Buffer): Buffer {
  const total = 12 + body.length;
  const out = Buffer.alloc(total);
  out.writeUInt32LE(type, 0);
  out.writeUInt32LE(total, 4);
  body.copy(out, 8);
  out.writeUInt32LE(total, total - 4);
  return out;
}

function option(code: number, value: Buffer): Buffer {
  const out = Buffer.alloc(4 + pad4(value.length));
  out.writeUInt16LE(code, 0);
  out.writeUInt16LE(value.length, 2);
  value.copy(out, 4);
  return out;
}

const OPT_END = Buffer.alloc(4);

export function writePcapngFile(path: string, interfaceNames: string[], frames: NamedFrame[]): void {
  const parts: Buffer[] = [];
  const shb = Buffer.alloc(16);
  shb.writeUInt32LE(0x1a2b3c4d, 0); // byte-order magic
  shb.writeUInt16LE(1, 4);
  shb.writeUInt16LE(0, 6);
  shb.writeBigInt64LE(-1n, 8); // section length not given
  parts.push(block(0x0a0d0d0a, shb));
  for (const name of interfaceNames) {
    const head = Buffer.alloc(8);
    head.writeUInt16LE(1, 0); // LINKTYPE_ETHERNET
    head.writeUInt32LE(262144, 4);
    parts.push(block(0x00000001, Buffer.concat([head, option(2, Buffer.from(name, 'utf8')), OPT_END])));
  }
  for (const f of frames) {
    const head = Buffer.alloc(20);
    const ts = BigInt(Math.floor(f.timeUs));
    head.writeUInt32LE(f.iface, 0);
    head.writeUInt32LE(Number(ts >> 32n), 4);
    head.writeUInt32LE(Number(ts & 0xffffffffn), 8);
    head.writeUInt32LE(f.frame.length, 12);
    head.writeUInt32LE(f.frame.length, 16);
    const data = Buffer.alloc(pad4(f.frame.length));
    f.frame.copy(data);
    parts.push(block(0x00000006, Buffer.concat([head, data])));
  }
  writeFileSync(path, Buffer.concat(parts));
}
