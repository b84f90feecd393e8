/**
 * What a client received, from a headers-only capture (bench/lib/capture.ts):
 * the TCP segments one server sent to it, and the timing figures of the
 * failover bench computed from them.
 *
 * In:  a classic pcap file (lib/io/pcap-reader), the server's IPv4 address
 *      and port; a mark time (the death, or the same moment in a run with no
 *      death), a window around it, and the bridge's promotion time.
 * Out: per segment: wall time (µs), IP ID, sequence number, payload length,
 *      whether it carried new bytes; per run: mark → next data segment,
 *      mark → first data segment of the survivor, the largest gap between
 *      new-data segments in the window (the stall), the gap distribution.
 *
 * Which replica sent a segment: the bridge forwards the IPv4 header of
 * either replica's frames as it is (it translates TCP sequence and
 * timestamps only), and Linux numbers a TCP socket's IPv4 IDs from a random
 * start, one per segment sent. So the dead replica's segments continue one
 * IP ID sequence and the survivor's come from another: the first segment
 * after the death that does not continue the sequence is the survivor's.
 * Segments of the dead replica that the bridge still releases after the
 * death (output the backup had already confirmed) are counted, not taken for
 * the survivor's. The survivor's sequence starts anywhere, so it may happen
 * to continue the dead one's (about 1 run in 1000 with a 64-ID step limit);
 * the bridge discards the dead replica's unconfirmed output when it
 * promotes, so a segment later than the promotion (+1 ms) is never taken for
 * the dead replica's. When the IP IDs before the death do not form a
 * sequence, the promotion time alone splits.
 */
import { readPcapFile } from '../../lib/io/pcap-reader';
import { percentile } from './load-tools';

export interface Segment {
  /** Kernel receive time, wall clock, µs since the epoch. */
  tUs: number;
  ipId: number;
  seq: number;
  /** TCP payload bytes (from the IPv4 total length: the capture is snapped). */
  len: number;
  flags: number;
  dstPort: number;
  /** Carries bytes beyond every byte seen before it (not a retransmission or overlap). */
  newData: boolean;
}

const TCP_SYN = 0x02;

function ipv4Bytes(addr: string): number[] {
  return addr.split('.').map(Number);
}

/**
 * IPv4 TCP segments from `serverIpv4:serverPort` in the capture, for the
 * client port that received the most payload (one download per capture).
 */
export function readServerSegments(file: string, serverIpv4: string, serverPort: number): Segment[] {
  const src = ipv4Bytes(serverIpv4);
  const all: Segment[] = [];
  for (const r of readPcapFile(file)) {
    const b = r.frame;
    if (b.length < 14 + 20 + 20 || b.readUInt16BE(12) !== 0x0800) continue;
    const ip = 14;
    if (b[ip] >> 4 !== 4 || b[ip + 9] !== 6) continue;
    if (b[ip + 12] !== src[0] || b[ip + 13] !== src[1] || b[ip + 14] !== src[2] || b[ip + 15] !== src[3]) continue;
    const ihl = (b[ip] & 0x0f) * 4;
    const tcp = ip + ihl;
    if (b.length < tcp + 20 || b.readUInt16BE(tcp) !== serverPort) continue;
    const doff = (b[tcp + 12] >> 4) * 4;
    all.push({
      tUs: r.timeUs,
      ipId: b.readUInt16BE(ip + 4),
      seq: b.readUInt32BE(tcp + 4),
      len: Math.max(0, b.readUInt16BE(ip + 2) - ihl - doff),
      flags: b[tcp + 13],
      dstPort: b.readUInt16BE(tcp + 2),
      newData: false,
    });
  }
  const bytesByPort = new Map<number, number>();
  for (const s of all) bytesByPort.set(s.dstPort, (bytesByPort.get(s.dstPort) ?? 0) + s.len);
  let port = -1;
  let most = -1;
  for (const [p, n] of bytesByPort) if (n > most) { most = n; port = p; }
  const segs = all.filter((s) => s.dstPort === port).sort((a, b) => a.tUs - b.tUs);
  // New bytes: the segment ends beyond the highest end seen (RFC 1982 comparison).
  let highest: number | null = null;
  for (const s of segs) {
    if (s.flags & TCP_SYN) highest = (s.seq + 1) >>> 0;
    if (s.len === 0) continue;
    const end = (s.seq + s.len) >>> 0;
    if (highest === null || ((end - highest) | 0) > 0) {
      s.newData = true;
      highest = end;
    }
  }
  return segs;
}

export interface GapStats {
  /** Inter-arrival gaps of new-data segments with both ends in the window, ms. */
  count: number;
  p50Ms: number;
  p99Ms: number;
  p999Ms: number;
  maxMs: number;
}

export interface RunTiming {
  /** Segments of the download in the capture (any), and those carrying new bytes. */
  segments: number;
  newDataSegments: number;
  /** Mark → first data segment the client received at or after the mark (from either replica), ms. */
  nextDataMs: number;
  /** Mark → first data segment from the survivor, ms (NaN: no death, or none arrived). */
  firstSurvivorDataMs: number;
  /** Mark → first segment of any kind from the survivor, ms. */
  firstSurvivorSegmentMs: number;
  /** How the survivor's segments were told apart (null: no death in this run). */
  survivorBy: 'ip-id' | 'promotion-time' | null;
  /** The dead replica's segments (and their payload bytes) that reached the client after the mark. */
  deadSegmentsAfterMark: number;
  deadBytesAfterMark: number;
  /** Segments continuing the dead replica's IP ID sequence after the survivor's first one (expected 0). */
  deadSegmentsAfterSwitch: number;
  /** Segments after the switch that continue neither sequence (expected 0). */
  unexplainedAfterSwitch: number;
  /** First survivor segment − the bridge's promotion, ms (≥ 0 expected; NaN when unknown). */
  switchMinusPromotionMs: number;
  /** Largest gap between consecutive new-data segments, clipped to the window, ms, and where it began (ms after the mark). */
  stallMs: number;
  stallStartMs: number;
  gaps: GapStats;
}

/** Forward distance in a 16-bit IP ID space. */
function idForward(from: number, to: number): number {
  return (to - from) & 0xffff;
}

/** Largest IP ID step still taken as the same sender (the bridge may leave out a pure ACK or two). */
const ID_STEP_MAX = 64;
/** A segment this long after the promotion cannot be the dead replica's. */
const AFTER_PROMOTION_US = 1000;

export function analyzeRun(
  segs: readonly Segment[],
  markUs: number,
  window: { beforeUs: number; afterUs: number },
  death: { promotedWallUs: number } | null,
): RunTiming {
  const start = markUs - window.beforeUs;
  const end = markUs + window.afterUs;
  const ms = (us: number) => us / 1000;
  const nextData = segs.find((s) => s.tUs >= markUs && s.len > 0);

  // The stall: gaps between new-data segments, clipped to the window.
  const times = segs.filter((s) => s.newData).map((s) => s.tUs);
  let stall = 0;
  let stallStart = NaN;
  const gaps: number[] = [];
  for (let i = 1; i < times.length; i++) {
    const a = times[i - 1];
    const b = times[i];
    if (b <= start || a >= end) continue;
    const clipped = Math.min(b, end) - Math.max(a, start);
    if (clipped > stall) {
      stall = clipped;
      stallStart = a - markUs;
    }
    if (a >= start && b <= end) gaps.push(b - a);
  }

  const timing: RunTiming = {
    segments: segs.length,
    newDataSegments: times.length,
    nextDataMs: nextData ? ms(nextData.tUs - markUs) : NaN,
    firstSurvivorDataMs: NaN,
    firstSurvivorSegmentMs: NaN,
    survivorBy: null,
    deadSegmentsAfterMark: 0,
    deadBytesAfterMark: 0,
    deadSegmentsAfterSwitch: 0,
    unexplainedAfterSwitch: 0,
    switchMinusPromotionMs: NaN,
    stallMs: ms(stall),
    stallStartMs: ms(stallStart),
    gaps: {
      count: gaps.length,
      p50Ms: ms(percentile(gaps, 50)),
      p99Ms: ms(percentile(gaps, 99)),
      p999Ms: ms(percentile(gaps, 99.9)),
      maxMs: gaps.length ? ms(Math.max(...gaps)) : NaN,
    },
  };
  if (!death) return timing;

  const before = segs.filter((s) => s.tUs < markUs);
  const after = segs.filter((s) => s.tUs >= markUs);
  const recent = before.slice(-20);
  const idSequence = recent.length >= 5 && recent.every((s, i) => i === 0 || (idForward(recent[i - 1].ipId, s.ipId) >= 1 && idForward(recent[i - 1].ipId, s.ipId) <= ID_STEP_MAX));
  let switchAt = -1;
  if (idSequence) {
    timing.survivorBy = 'ip-id';
    let lastDead = before[before.length - 1].ipId;
    let lastSurvivor = -1;
    const deadUntilUs = Number.isFinite(death.promotedWallUs) ? death.promotedWallUs + AFTER_PROMOTION_US : Infinity;
    const continues = (from: number, id: number) => {
      const d = idForward(from, id);
      return d >= 1 && d <= ID_STEP_MAX;
    };
    for (let i = 0; i < after.length; i++) {
      const id = after[i].ipId;
      if (switchAt < 0) {
        if (continues(lastDead, id) && after[i].tUs <= deadUntilUs) {
          lastDead = id;
          timing.deadSegmentsAfterMark++;
          timing.deadBytesAfterMark += after[i].len;
        } else {
          switchAt = i;
          lastSurvivor = id;
        }
      } else if (continues(lastSurvivor, id)) {
        lastSurvivor = id;
      } else if (continues(lastDead, id) && after[i].tUs <= deadUntilUs) {
        // Neither sequence explains it as well: the dead replica's, after the survivor had begun.
        lastDead = id;
        timing.deadSegmentsAfterSwitch++;
      } else {
        timing.unexplainedAfterSwitch++;
      }
    }
  } else {
    timing.survivorBy = 'promotion-time';
    switchAt = after.findIndex((s) => s.tUs >= death.promotedWallUs);
    for (const s of switchAt < 0 ? after : after.slice(0, switchAt)) {
      timing.deadSegmentsAfterMark++;
      timing.deadBytesAfterMark += s.len;
    }
  }
  if (switchAt < 0) return timing;
  const first = after[switchAt];
  timing.firstSurvivorSegmentMs = ms(first.tUs - markUs);
  timing.switchMinusPromotionMs = Number.isFinite(death.promotedWallUs) ? ms(first.tUs - death.promotedWallUs) : NaN;
  const firstData = after.slice(switchAt).find((s) => s.len > 0);
  if (firstData) timing.firstSurvivorDataMs = ms(firstData.tUs - markUs);
  return timing;
}
