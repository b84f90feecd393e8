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
}

function openOne(io: IoBackend, ifname: string, options: PortOptions): PacketPort {
  // Required lazily: each back-end loads native code only when chosen.
  if (io === 'cap') {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const { CapPort } = require('../io/cap-port') as typeof import('../io/cap-port');
    return new CapPort(ifname);
  }
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const { AfPacketPort } = require('../io/afpacket-port') as typeof import('../io/afpacket-port');
  return new AfPacketPort(ifname, { vnetHdr: options.vnetHdr ?? true });
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
