/**
 * Host snapshots built from real `ip -j` / `ethtool -k` output recorded on a
 * Debian 12 host (kernel 6.18) right after `shadowvm setup --name web1
 * --bridge br0 --io cap --tap-owner nobody`, and the same host before it.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  AddressState, HostSnapshot, LinkState, OffloadState, TapOwner, parseEthtoolFeatures, parseIpAddrs, parseIpLinks,
} from '../../../lib/setup';

const dir = join(__dirname, 'fixtures');
export const fixture = (file: string): string => readFileSync(join(dir, file), 'utf8');

export const HOSTNAME = 'vm';
export const OURS = ['svm-web1-u', 'svm-web1-h', 'svm-web1-p', 'svm-web1-b'];

export const NOBODY: TapOwner = {
  user: 'nobody', resolvedUser: { name: 'nobody', id: 65534 },
};

export interface HostOverrides {
  links?: Map<string, LinkState>;
  addresses?: Map<string, readonly AddressState[]>;
  offloads?: Map<string, OffloadState>;
  sysctls?: Map<string, string>;
  ipv6?: boolean;
  bridgeMacFixed?: Map<string, boolean>;
  tapOwner?: TapOwner;
}

function ipv6Sysctls(disabled: readonly string[]): Map<string, string> {
  const sysctls = new Map<string, string>([
    ['net.ipv6.conf.default.disable_ipv6', '0'],
    ['net.bridge.bridge-nf-call-iptables', '0'],
    ['net.bridge.bridge-nf-call-ip6tables', '0'],
    ['net.bridge.bridge-nf-call-arptables', '0'],
  ]);
  for (const ifname of disabled) sysctls.set(`net.ipv6.conf.${ifname}.disable_ipv6`, '1');
  return sysctls;
}

/** The host after a complete setup of web1 (bridge br0, --io cap, taps owned by nobody). */
export function afterSetup(overrides: HostOverrides = {}): HostSnapshot {
  return {
    hostname: HOSTNAME,
    links: overrides.links ?? parseIpLinks(fixture('ip-link-after-setup.json')),
    addresses: overrides.addresses ?? parseIpAddrs(fixture('ip-addr-after-setup.json')),
    offloads: overrides.offloads ?? new Map([
      ['svm-web1-u', parseEthtoolFeatures(fixture('ethtool-k-veth-uplink.txt'))],
      ['svm-web1-h', parseEthtoolFeatures(fixture('ethtool-k-veth-bridge-port.txt'))],
      ['svm-web1-p', parseEthtoolFeatures(fixture('ethtool-k-tap.txt'))],
      ['svm-web1-b', parseEthtoolFeatures(fixture('ethtool-k-tap.txt'))],
    ]),
    sysctls: overrides.sysctls ?? ipv6Sysctls(OURS),
    ipv6: overrides.ipv6 ?? true,
    bridgeMacFixed: overrides.bridgeMacFixed ?? new Map([['br0', true]]),
    tapOwner: 'tapOwner' in overrides ? overrides.tapOwner : NOBODY,
  };
}

/** The same host before setup: lo, eth0 (the host's own interface, with addresses) and an empty br0. */
export function beforeSetup(overrides: HostOverrides = {}): HostSnapshot {
  const links = parseIpLinks(fixture('ip-link-after-setup.json'));
  const addresses = parseIpAddrs(fixture('ip-addr-after-setup.json'));
  for (const ifname of OURS) {
    links.delete(ifname);
    addresses.delete(ifname);
  }
  return afterSetup({
    links,
    addresses,
    offloads: new Map([['eth0', parseEthtoolFeatures(fixture('ethtool-k-nic.txt'))]]),
    sysctls: ipv6Sysctls([]),
    ...overrides,
  });
}

/** A copy of a link with some fields changed (drift, foreign look-alikes). */
export function withLink(host: Pick<HostSnapshot, 'links'>, ifname: string, change: Partial<LinkState>): Map<string, LinkState> {
  const links = new Map(host.links);
  const link = links.get(ifname);
  links.set(ifname, { ...(link ?? { name: ifname, index: 999, flags: [], mtu: 1500 }), ...change } as LinkState);
  return links;
}
