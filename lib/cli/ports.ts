/** Opens the bridge's three ports with the chosen I/O back-end; all or none. */
import { PacketPort } from '../io/port';

export type IoBackend = 'afpacket' | 'cap';

export interface PortNames {
  uplink: string;
  primary: string;
  backup: string;
}

function openOne(io: IoBackend, ifname: string): PacketPort {
  // Required lazily: each back-end loads native code only when chosen.
  if (io === 'cap') {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const { CapPort } = require('../io/cap-port') as typeof import('../io/cap-port');
    return new CapPort(ifname);
  }
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const { AfPacketPort } = require('../io/afpacket-port') as typeof import('../io/afpacket-port');
  return new AfPacketPort(ifname);
}

export function openPorts(io: IoBackend, names: PortNames): { uplink: PacketPort; primary: PacketPort; backup: PacketPort } {
  const opened: PacketPort[] = [];
  try {
    const uplink = openOne(io, names.uplink);
    opened.push(uplink);
    const primary = openOne(io, names.primary);
    opened.push(primary);
    const backup = openOne(io, names.backup);
    opened.push(backup);
    return { uplink, primary, backup };
  } catch (e) {
    for (const p of opened) void p.close();
    throw e;
  }
}
