/** Opens the bridge's three ports with the chosen I/O back-end; all or none. */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import type { LogFn } from '../control/logger';
import { PacketPort } from '../io/port';
import { AbsentPort } from '../io/absent-port';
import type { AfPacketPortOptions } from '../io/afpacket-port';
import { SplitRingPort, splitRingOptions } from '../io/split-ring-port';
import { parseEthtoolFeatures } from '../setup/host-state';
import { shardFilter } from '../dataplane/shard';
import { UserFacingError } from '../errors';

export type IoBackend = 'afpacket' | 'cap';

export interface PortNames {
  uplink: string;
  primary: string;
  backup: string;
}

export interface PortOptions {
  /** AF_PACKET only: exchange virtio-net headers, so offloads (GSO, partial checksums) can stay on. */
  vnetHdr?: boolean;
  /** AF_PACKET only: after each breath, poll the rings this long before sleeping (µs; blocks the event loop). */
  busyPollUs?: number;
  /** AF_PACKET only: a wake-up takes every port's waiting frames before libuv polls again (default true; see AfPacketPortOptions). */
  sweepOnWake?: boolean;
  /**
   * AF_PACKET only: send from a thread of its own (see AfPacketPortOptions.sendThread). Default: on
   * without virtio-net headers, off with them. Measured on the netns lab (2 cores, 3 rounds): without
   * offloads, wrk 100 KiB +13% and the longest frame wait in the soak about 40% lower; with offloads a
   * frame is up to 64 KiB, the copy costs more than the send it moves, and wrk lost 4–11%.
   */
  sendThread?: boolean;
  /** AF_PACKET with sendThread: see AfPacketPortOptions.sendInlineFrames (default 8, as run's; run also gates it by rate, BridgeOptions.inlineSendsMaxFps). */
  sendInlineFrames?: number;
  /**
   * AF_PACKET only: receive ring slots per port (with splitRings: of its
   * small ring). Absent or 0: VNET_RING_FRAMES with virtio-net headers (slots
   * of 68 KiB: 34 MiB per port), SMALL_RING_FRAMES with split rings, else 8
   * MiB worth of 2 KiB slots. Rings are kernel memory, resident from the start.
   */
  ringFrames?: number;
  /** AF_PACKET with splitRings: slots of the large ring (68 KiB each, for GSO super-frames). Absent or 0: LARGE_RING_FRAMES. */
  largeRingFrames?: number;
  /**
   * AF_PACKET with virtio-net headers: read each port through two rings, 2 KiB
   * slots for MTU-sized frames and a few 68 KiB slots for GSO super-frames
   * (SplitRingPort), instead of one ring of 68 KiB slots. Default false here;
   * `shadowvm run` turns it on (--split-rings).
   */
  splitRings?: boolean;
  /** With splitRings: let the two sockets share a fanout group where the kernel can (default true; run --no-split-rings-fanout, lab-bench's afpacket-nofanout: false). */
  splitRingsFanout?: boolean;
  /** Where warnings about a port's set-up go (cap: a ring that offloads make small). */
  log?: LogFn;
  /**
   * Take only the frames of worker `index` of `count` (`run --workers N`:
   * every worker opens its own ports on the same interfaces): the socket
   * filter shardFilter(count, index), and on split rings that filter before
   * each ring's length test. Absent or count 1: every frame. AF_PACKET only:
   * a cap port refuses a count above 1 (PortShardError).
   */
  shard?: PortShard;
}

export interface PortShard {
  count: number;
  index: number;
}

/** A port that cannot take a shard of the frames was asked to (a worker of several would take every frame). */
export class PortShardError extends UserFacingError {
  constructor(readonly ifname: string, readonly io: IoBackend, readonly shard: PortShard) {
    super(`${io} port ${ifname}: cannot take worker ${shard.index}'s shard of ${shard.count} (libpcap ports have no shard filter: every worker would take every frame); use --io afpacket with more than one worker`);
  }
}

/** Whether these options ask for a shard of the frames (a count above 1). */
function sharded(options: PortOptions): options is PortOptions & { shard: PortShard } {
  return (options.shard?.count ?? 1) > 1;
}

/** The offloads that make libpcap size every ring slot for its 64 KiB snapshot rather than for the MTU. */
export const CAP_RING_OFFLOADS = ['tcp-segmentation-offload', 'generic-segmentation-offload', 'generic-receive-offload', 'large-receive-offload'] as const;

/**
 * Which of CAP_RING_OFFLOADS are on for `ifname` (`ethtool -k`); null when
 * that cannot be read (no ethtool, no such interface).
 *
 * Why it matters: `cap` asks libpcap for a 64 KiB snapshot. libpcap sizes its
 * ring slots for the MTU only when none of these offloads is on; otherwise a
 * slot is 64 KiB and cap's 8 MiB ring holds about 128 frames (measured: a 16
 * MiB mapping with them on, 10 MiB of MTU slots, about 6,000, with them off).
 * Under wrk at 100 KiB, 128 frames overflow; a lost backup frame is a `timeout`
 * checkpoint (lab-bench: 8 to 20 a run).
 */
export function capRingOffloads(ifname: string): string[] | null {
  let out: string;
  try {
    out = execFileSync('ethtool', ['-k', ifname], { encoding: 'utf8', timeout: 2000, stdio: ['ignore', 'pipe', 'ignore'] });
  } catch {
    return null;
  }
  const features = parseEthtoolFeatures(out);
  return CAP_RING_OFFLOADS.filter((f) => features.get(f)?.on);
}

const ETHTOOL_NAMES: Record<string, string> = {
  'tcp-segmentation-offload': 'tso', 'generic-segmentation-offload': 'gso', 'generic-receive-offload': 'gro', 'large-receive-offload': 'lro',
};

/** The fields of the `cap-ring-small` warning for `ifname`, or null if its offloads leave the ring its full size. */
export function capRingWarning(ifname: string): Record<string, unknown> | null {
  const on = capRingOffloads(ifname);
  if (!on || on.length === 0) return null;
  return {
    port: ifname, offloadsOn: on,
    note: 'libpcap makes every ring slot 64 KiB while these are on: the ring holds about 128 frames, and a frame lost under load costs a timeout checkpoint',
    fix: `ethtool -K ${ifname} ${on.map((f) => `${ETHTOOL_NAMES[f]} off`).join(' ')} (before the bridge starts), or --io afpacket`,
  };
}

/** Ring slots per port with virtio-net headers: 512 × 64 KiB = 32 MiB of kernel memory per port. */
export const VNET_RING_FRAMES = 512;

export function openOne(io: IoBackend, ifname: string, options: PortOptions): PacketPort {
  // Required lazily: each back-end loads native code only when chosen.
  if (io === 'cap') {
    if (sharded(options)) throw new PortShardError(ifname, io, options.shard);
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const { CapPort } = require('../io/cap-port') as typeof import('../io/cap-port');
    const port = new CapPort(ifname);
    const warning = options.log ? capRingWarning(ifname) : null;
    if (warning) options.log!('warn', 'cap-ring-small', warning);
    return port;
  }
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const { AfPacketPort } = require('../io/afpacket-port') as typeof import('../io/afpacket-port');
  const o = afPacketOptions(options);
  if (!splitsRings(options)) return new AfPacketPort(ifname, o);
  const { small, large, bound } = splitRingOptions(o, options.ringFrames, mtuOf(ifname), options.largeRingFrames);
  const first = new AfPacketPort(ifname, small);
  try {
    return splitPort(ifname, first, new AfPacketPort(ifname, large), bound, options);
  } catch (e) {
    void first.close();
    throw e;
  }
}

/** The interface's MTU (sysfs); 1500 if it cannot be read (the port's open then says what is wrong with the interface). */
function mtuOf(ifname: string): number {
  try {
    const mtu = Number(readFileSync(`/sys/class/net/${ifname}/mtu`, 'utf8').trim());
    return Number.isInteger(mtu) && mtu > 0 ? mtu : 1500;
  } catch {
    return 1500;
  }
}

/** The two rings as one port; says so when they could not share a fanout group (each frame then offered to both sockets). */
function splitPort(ifname: string, small: PacketPort, large: PacketPort, bound: number, options: PortOptions): SplitRingPort {
  const port = new SplitRingPort(small, large, options.splitRingsFanout ?? true, bound);
  if (port.fanoutRefused) options.log?.('info', 'split-rings-no-fanout', { port: ifname, reason: port.fanoutRefused, note: 'each frame is offered to both rings\' sockets and sorted by their filters' });
  return port;
}

function splitsRings(options: PortOptions): boolean {
  return (options.splitRings ?? false) && (options.vnetHdr ?? true);
}

/** Whether ports opened with these options send through a send thread (AF_PACKET only; on by default without virtio-net headers). */
export function usesSendThread(io: IoBackend, options: Pick<PortOptions, 'vnetHdr' | 'sendThread'>): boolean {
  return io === 'afpacket' && (options.sendThread ?? !(options.vnetHdr ?? true));
}

function afPacketOptions(options: PortOptions): AfPacketPortOptions {
  const vnetHdr = options.vnetHdr ?? true;
  // With virtio-net headers a slot must hold a 64 KiB GSO super-frame: without
  // more slots than the 8 MiB default gives (about 150), bursts overflow the ring.
  return {
    vnetHdr, busyPollUs: options.busyPollUs ?? 0, sweepOnWake: options.sweepOnWake ?? true, sendThread: usesSendThread('afpacket', options),
    ...(options.sendInlineFrames !== undefined ? { sendInlineFrames: options.sendInlineFrames } : {}),
    ...(options.ringFrames ? { ringFrames: options.ringFrames } : vnetHdr ? { ringFrames: VNET_RING_FRAMES } : {}),
    // One ring: this filter; split rings: this filter, then each ring's length test (splitRingOptions).
    ...(sharded(options) ? { filter: shardFilter(options.shard.count, options.shard.index) } : {}),
  };
}

/**
 * A port opened while the data plane runs (the new backup's, at a
 * checkpoint): the AF_PACKET ring's setup waits on libuv's thread pool, not
 * on the calling thread (`AfPacketPort.open`). The bridge's `openPort`.
 * Same options as openOne, shard included: a worker's new backup port takes
 * that worker's frames only.
 */
export async function openOneLater(io: IoBackend, ifname: string, options: PortOptions): Promise<PacketPort> {
  if (io === 'cap') return openOne(io, ifname, options);
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const { AfPacketPort } = require('../io/afpacket-port') as typeof import('../io/afpacket-port');
  const o = afPacketOptions(options);
  if (!splitsRings(options)) return AfPacketPort.open(ifname, o);
  const { small, large, bound } = splitRingOptions(o, options.ringFrames, mtuOf(ifname), options.largeRingFrames);
  const first = await AfPacketPort.open(ifname, small);
  try {
    return splitPort(ifname, first, await AfPacketPort.open(ifname, large), bound, options);
  } catch (e) {
    void first.close();
    throw e;
  }
}

/** The backup slot's port name when there is no backup interface at start (AbsentPort; not a possible interface name). */
export const NO_BACKUP_PORT = '(none)';

/** `names.backup` null: no backup interface (an AbsentPort named NO_BACKUP_PORT holds the slot). */
export function openPorts(io: IoBackend, names: Omit<PortNames, 'backup'> & { backup: string | null }, options: PortOptions = {}): { uplink: PacketPort; primary: PacketPort; backup: PacketPort } {
  const opened: PacketPort[] = [];
  try {
    const uplink = openOne(io, names.uplink, options);
    opened.push(uplink);
    const primary = openOne(io, names.primary, options);
    opened.push(primary);
    const backup = names.backup === null ? new AbsentPort(NO_BACKUP_PORT) : openOne(io, names.backup, options);
    opened.push(backup);
    return { uplink, primary, backup };
  } catch (e) {
    for (const p of opened) void p.close();
    throw e;
  }
}
