/**
 * TCP options (RFC 9293 §3.1, RFC 7323 WS/TS, RFC 2018 SACK), read on demand.
 * Every step of the walk advances at least one byte and stays inside the
 * header, so a hostile option list ends.
 */
import { DecodedFrame } from './frame';

export const TcpOptionKind = { EOL: 0, NOP: 1, MSS: 2, WindowScale: 3, SackPermitted: 4, Sack: 5, Timestamps: 8 } as const;

export class TcpOptions {
  mss = -1;
  windowScale = -1;
  sackPermitted = false;
  /** Offset in the frame of the TSval field (TSecr follows at +4), -1 when absent. */
  tsOffset = -1;
  /** Offset in the frame of the first SACK block, -1 when absent. */
  sackOffset = -1;
  sackBlocks = 0;

  reset(): void {
    this.mss = -1;
    this.windowScale = -1;
    this.sackPermitted = false;
    this.tsOffset = -1;
    this.sackOffset = -1;
    this.sackBlocks = 0;
  }
}

/** Length each known option must have (SACK: 2 + 8n). */
const FIXED_LENGTH: Record<number, number> = { 2: 4, 3: 3, 4: 2, 8: 10 };

/** Parses the options of a decoded TCP frame into `out`. False (and nothing trusted) on a malformed list. */
export function readTcpOptions(f: DecodedFrame, out: TcpOptions): boolean {
  out.reset();
  const dv = f.dv;
  let i = f.tcp.offset + 20;
  const end = f.payloadOffset;
  while (i < end) {
    const kind = dv.getUint8(i);
    if (kind === TcpOptionKind.EOL) return true;
    if (kind === TcpOptionKind.NOP) { i++; continue; }
    if (i + 1 >= end) return false;
    const len = dv.getUint8(i + 1);
    if (len < 2 || i + len > end) return false;
    const fixed = FIXED_LENGTH[kind];
    if (fixed !== undefined && len !== fixed) return false;
    switch (kind) {
      case TcpOptionKind.MSS: out.mss = dv.getUint16(i + 2); break;
      case TcpOptionKind.WindowScale: out.windowScale = dv.getUint8(i + 2); break;
      case TcpOptionKind.SackPermitted: out.sackPermitted = true; break;
      case TcpOptionKind.Timestamps: out.tsOffset = i + 2; break;
      case TcpOptionKind.Sack:
        if ((len - 2) % 8 !== 0 || len === 2) return false;
        out.sackOffset = i + 2;
        out.sackBlocks = (len - 2) / 8;
        break;
      default: break;
    }
    i += len;
  }
  return true;
}
