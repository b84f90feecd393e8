/** Opens the bridge's three ports with the chosen I/O back-end; all or none. */
import { PacketPort } from '../io/port';

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
}

/** Ring slots per port with virtio-net headers: 512 × 64 KiB = 32 MiB of kernel memory per port. */
export const VNET_RING_FRAMES = 512;

export function openOne(io: IoBackend, ifname: string, options: PortOptions): PacketPort {
  // Required lazily: each back-end loads native code only when chosen.
  if (io === 'cap') {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const { CapPort } = require('../io/cap-port') as typeof import('../io/cap-port');
    return new CapPort(ifname);
  }
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const { AfPacketPort } = require('../io/afpacket-port') as typeof import('../io/afpacket-port');
  const vnetHdr = options.vnetHdr ?? true;
  // With virtio-net headers a slot must hold a 64 KiB GSO super-frame: without
  // more slots than the 8 MiB default gives (about 150), bursts overflow the ring.
  return new AfPacketPort(ifname, { vnetHdr, busyPollUs: options.busyPollUs ?? 0, sweepOnWake: options.sweepOnWake ?? true, sendThread: options.sendThread ?? !vnetHdr, ...(vnetHdr ? { ringFrames: VNET_RING_FRAMES } : {}) });
}

export function openPorts(io: IoBackend, names: PortNames, options: PortOptions = {}): { uplink: PacketPort; primary: PacketPort; backup: PacketPort } {
  const opened: PacketPort[] = [];
  try {
    const uplink = openOne(io, names.uplink, options);
    opened.push(uplink);
    const primary = openOne(io, names.primary, options);
    opened.push(primary);
    const backup = openOne(io, names.backup, options);
    opened.push(backup);
    return { uplink, primary, backup };
  } catch (e) {
    for (const p of opened) void p.close();
    throw e;
  }
}
