/**
 * A small model of what setup's commands do to a host, so that plan tests
 * check effects (where each interface ends up, and in which order things
 * happen) rather than the exact list of commands. It knows only the commands
 * setup and teardown use, and refuses a command on an interface that does
 * not exist (as the kernel would).
 */
import { HostSnapshot, Step } from '../../../lib/setup';
import { disableIpv6Key } from '../../../lib/setup/host-state';

const FEATURES: Record<string, string> = {
  tx: 'tx-checksumming', gro: 'generic-receive-offload', lro: 'large-receive-offload', tso: 'tcp-segmentation-offload', gso: 'generic-segmentation-offload',
};

export interface ModelLink {
  kind: 'nic' | 'veth' | 'tap' | 'bridge';
  peer?: string;
  owner?: string;
  vnetHdr?: boolean;
  alias?: string;
  up: boolean;
  promisc: boolean;
  noArp: boolean;
  ipv6Disabled: boolean;
  mtu: number;
  master?: string;
  mac?: string;
  /** ethtool names (tx, gro, lro, tso, gso) that are on. */
  offloadsOn: Set<string>;
  addresses: Set<string>;
}

export interface UpEvent {
  ifname: string;
  /** The interface as it was when it went up. */
  state: ModelLink;
}

export class HostModel {
  readonly links = new Map<string, ModelLink>();
  readonly ups: UpEvent[] = [];

  constructor(host: HostSnapshot) {
    for (const l of host.links.values()) {
      const offloads = host.offloads.get(l.name);
      const on = new Set(Object.entries(FEATURES).filter(([, f]) => offloads?.get(f)?.on).map(([short]) => short));
      this.links.set(l.name, {
        kind: l.tap ? 'tap' : l.kind === 'veth' ? 'veth' : l.kind === 'bridge' ? 'bridge' : 'nic',
        peer: l.peer, alias: l.alias, master: l.master, mtu: l.mtu,
        up: l.flags.includes('UP'), promisc: l.flags.includes('PROMISC'), noArp: l.flags.includes('NOARP'),
        ipv6Disabled: host.sysctls.get(disableIpv6Key(l.name)) === '1',
        offloadsOn: on,
        addresses: new Set((host.addresses.get(l.name) ?? []).filter((a) => a.family === 'inet' || a.scope !== 'link').map((a) => `${a.local}/${a.prefixlen}`)),
      });
    }
  }

  snapshot(ifname: string): ModelLink | undefined {
    const l = this.links.get(ifname);
    return l && { ...l, offloadsOn: new Set(l.offloadsOn), addresses: new Set(l.addresses) };
  }

  private link(ifname: string): ModelLink {
    const l = this.links.get(ifname);
    if (!l) throw new Error(`no such interface ${ifname}`);
    return l;
  }

  private create(ifname: string, link: Omit<ModelLink, 'up' | 'promisc' | 'noArp' | 'ipv6Disabled' | 'mtu' | 'offloadsOn' | 'addresses'>, ipv6Default: boolean): void {
    if (this.links.has(ifname)) throw new Error(`${ifname} exists`);
    // New veths and taps: down, MTU 1500, GRO off; tx checksumming, TSO and GSO on (as the kernel makes a veth).
    this.links.set(ifname, { ...link, up: false, promisc: false, noArp: false, ipv6Disabled: ipv6Default, mtu: 1500, offloadsOn: new Set(['tx', 'tso', 'gso']), addresses: new Set() });
  }

  apply(steps: readonly Step[], ipv6DefaultDisabled = false): void {
    for (const step of steps) this.run(step.argv, ipv6DefaultDisabled);
  }

  run(argv: readonly string[], ipv6DefaultDisabled = false): void {
    const a = [...argv];
    const cmd = a.join(' ');
    if (a[0] === 'ip' && a[1] === 'link' && a[2] === 'add') {
      const [name, , , , , peer] = a.slice(3); // NAME type veth peer name PEER [address MAC]
      const mac = a[a.indexOf('address') + 1];
      this.create(name, { kind: 'veth', peer }, ipv6DefaultDisabled);
      this.create(peer, { kind: 'veth', peer: name, mac: a.includes('address') ? mac : undefined }, ipv6DefaultDisabled);
    } else if (a[0] === 'ip' && a[1] === 'tuntap' && a[2] === 'add') {
      const name = a[4];
      this.create(name, { kind: 'tap', owner: a.includes('user') ? a[a.indexOf('user') + 1] : undefined, vnetHdr: a.includes('vnet_hdr') }, ipv6DefaultDisabled);
    } else if (a[0] === 'ip' && a[1] === 'link' && a[2] === 'del') {
      const l = this.link(a[4]);
      this.links.delete(a[4]);
      if (l.kind === 'veth' && l.peer) this.links.delete(l.peer);
    } else if (a[0] === 'ip' && a[1] === 'link' && a[2] === 'set' && a[3] === 'dev') {
      const l = this.link(a[4]);
      const [what, value] = a.slice(5);
      if (what === 'alias') l.alias = value;
      else if (what === 'arp') l.noArp = value === 'off';
      else if (what === 'promisc') l.promisc = value === 'on';
      else if (what === 'mtu') l.mtu = Number(value);
      else if (what === 'master') l.master = this.link(value) && value;
      else if (what === 'nomaster') l.master = undefined;
      else if (what === 'up') { l.up = true; this.ups.push({ ifname: a[4], state: this.snapshot(a[4]) as ModelLink }); }
      else if (what === 'down') l.up = false;
      else throw new Error(`the model does not know: ${cmd}`);
    } else if (a[0] === 'ip' && a[1] === 'addr' && (a[2] === 'add' || a[2] === 'del') && a[4] === 'dev') {
      const l = this.link(a[5]);
      if (a[2] === 'add') {
        if (l.addresses.has(a[3])) throw new Error(`${cmd}: exists`);
        // The kernel refuses IPv6 addresses while disable_ipv6 is 1 (EACCES).
        if (a[3].includes(':') && l.ipv6Disabled) throw new Error(`${cmd}: IPv6 is disabled on ${a[5]}`);
        l.addresses.add(a[3]);
      } else if (!l.addresses.delete(a[3])) throw new Error(`${cmd}: no such address`);
    } else if (a[0] === 'sysctl' && a[1] === '-qw') {
      const m = /^net\.ipv6\.conf\.(.+)\.disable_ipv6=([01])$/.exec(a[2]);
      if (!m) throw new Error(`the model does not know: ${cmd}`);
      this.link(m[1]).ipv6Disabled = m[2] === '1';
    } else if (a[0] === 'ethtool' && a[1] === '-K') {
      const l = this.link(a[2]);
      if (a[4] === 'on') l.offloadsOn.add(a[3]); else l.offloadsOn.delete(a[3]);
    } else {
      throw new Error(`the model does not know: ${cmd}`);
    }
  }
}
