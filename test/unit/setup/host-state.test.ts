import { hasNetAdmin, parseEthtoolFeatures, parseGetent, parseIpAddrs, parseIpLinks } from '../../../lib/setup';
import { fixture } from './host-fixtures';

describe('ip -j parsing', () => {
  test('reads kind, flags, alias, master, veth peer and tap details from ip -j -d link show', () => {
    const links = parseIpLinks(fixture('ip-link-after-setup.json'));
    expect(links.get('svm-web1-h')).toMatchObject({
      kind: 'veth', alias: 'shadowvm:web1', master: 'br0', peer: 'svm-web1-u', mtu: 1500,
    });
    expect(links.get('svm-web1-u')?.flags).toEqual(['BROADCAST', 'MULTICAST', 'NOARP', 'PROMISC', 'UP', 'LOWER_UP']);
    expect(links.get('svm-web1-p')).toMatchObject({
      kind: 'tun', tap: { user: 'nobody', group: undefined, multiQueue: false, vnetHdr: true },
    });
    expect(links.get('br0')).toMatchObject({ kind: 'bridge', vlanFiltering: false, alias: undefined });
    expect(links.get('eth0')).toMatchObject({ kind: undefined, linkType: 'ether', tap: undefined });
  });

  test('reads addresses per interface, with none for a bare interface', () => {
    const addresses = parseIpAddrs(fixture('ip-addr-after-setup.json'));
    expect(addresses.get('eth0')).toEqual([
      { family: 'inet', local: '192.0.2.2', prefixlen: 24, scope: 'global' },
      { family: 'inet6', local: 'fd00::2', prefixlen: 64, scope: 'global' },
      { family: 'inet6', local: 'fe80::fc:ff:fe00:1', prefixlen: 64, scope: 'link' },
    ]);
    expect(addresses.get('svm-web1-u')).toEqual([]);
  });
});

describe('ethtool -k parsing', () => {
  test('reads top-level features with their fixed marker and skips sub-features', () => {
    const veth = parseEthtoolFeatures(fixture('ethtool-k-veth-uplink.txt'));
    expect(veth.get('tx-checksumming')).toEqual({ on: true, fixed: false });
    expect(veth.get('large-receive-offload')).toEqual({ on: false, fixed: true });
    expect(veth.has('tx-checksum-ip-generic')).toBe(false);
    const port = parseEthtoolFeatures(fixture('ethtool-k-veth-bridge-port.txt'));
    expect(port.get('tx-checksumming')).toEqual({ on: false, fixed: false });
  });

  test('takes the actual state, not the requested one', () => {
    const features = parseEthtoolFeatures('Features for t:\ntx-checksumming: off [requested on]\n');
    expect(features.get('tx-checksumming')).toEqual({ on: false, fixed: false });
  });
});

describe('privilege and account helpers', () => {
  test('finds CAP_NET_ADMIN in the effective set', () => {
    expect(hasNetAdmin('Name:\tnode\nCapEff:\t000001fffeffffff\n')).toBe(true);
    expect(hasNetAdmin('CapEff:\t0000000000001000\n')).toBe(true);
    expect(hasNetAdmin('CapEff:\t0000000000000000\n')).toBe(false);
    expect(hasNetAdmin('CapEff:\t0000000000002000\n')).toBe(false);
  });

  test('parses getent lines', () => {
    expect(parseGetent('nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n')).toEqual({ name: 'nobody', id: 65534 });
    expect(parseGetent('nogroup:x:65534:\n')).toEqual({ name: 'nogroup', id: 65534 });
    expect(parseGetent('')).toBeUndefined();
  });
});
