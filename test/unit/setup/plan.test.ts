import {
  SetupConfigError, SetupOptions, Step, computeSetupPlan, computeTeardownPlan, formatCommand, parseEthtoolFeatures,
} from '../../../lib/setup';
import { NOBODY, afterSetup, beforeSetup, fixture, withLink } from './host-fixtures';

const BRIDGED: SetupOptions = { name: 'web1', bridge: 'br0', io: 'cap', tapOwner: 'nobody' };
const commands = (steps: readonly Step[]): string[] => steps.map((s) => formatCommand(s.argv));

function configError(fn: () => unknown): SetupConfigError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(SetupConfigError);
    return err as SetupConfigError;
  }
  throw new Error('expected a SetupConfigError');
}

describe('setup plan on a host without the pair', () => {
  test('creates taps and a veth pair, silences them, joins the bridge and brings them up last', () => {
    const plan = computeSetupPlan(BRIDGED, beforeSetup());
    expect(plan.interfaces).toEqual({ uplink: 'svm-web1-u', primary: 'svm-web1-p', backup: 'svm-web1-b' });
    expect(commands(plan.steps)).toEqual([
      'ip link add svm-web1-u type veth peer name svm-web1-h address fe:61:b3:4b:8a:54',
      'ip tuntap add dev svm-web1-p mode tap user nobody vnet_hdr',
      'ip tuntap add dev svm-web1-b mode tap user nobody vnet_hdr',
      'ip link set dev svm-web1-u alias shadowvm:web1',
      'ip link set dev svm-web1-h alias shadowvm:web1',
      'ip link set dev svm-web1-p alias shadowvm:web1',
      'ip link set dev svm-web1-b alias shadowvm:web1',
      'sysctl -qw net.ipv6.conf.svm-web1-u.disable_ipv6=1',
      'ip link set dev svm-web1-u arp off',
      'ethtool -K svm-web1-u gro off',
      'ip link set dev svm-web1-u promisc on',
      'sysctl -qw net.ipv6.conf.svm-web1-h.disable_ipv6=1',
      'ethtool -K svm-web1-h tx off',
      'sysctl -qw net.ipv6.conf.svm-web1-p.disable_ipv6=1',
      'ip link set dev svm-web1-p arp off',
      'ethtool -K svm-web1-p gro off',
      'sysctl -qw net.ipv6.conf.svm-web1-b.disable_ipv6=1',
      'ip link set dev svm-web1-b arp off',
      'ethtool -K svm-web1-b gro off',
      'ip link set dev svm-web1-h master br0',
      'ip link set dev svm-web1-u up',
      'ip link set dev svm-web1-h up',
      'ip link set dev svm-web1-p up',
      'ip link set dev svm-web1-b up',
    ]);
  });

  test('undoes only creations: every later step touches an interface that creation-undo removes', () => {
    const plan = computeSetupPlan(BRIDGED, beforeSetup());
    const undos = plan.steps.filter((s) => s.undo).map((s) => formatCommand(s.undo as string[]));
    expect(undos).toEqual(['ip link del dev svm-web1-u', 'ip link del dev svm-web1-p', 'ip link del dev svm-web1-b']);
  });

  test('leaves offloads alone with the AF_PACKET vnet-header I/O', () => {
    const plan = computeSetupPlan({ ...BRIDGED, io: 'afpacket' }, beforeSetup());
    expect(commands(plan.steps).filter((c) => c.startsWith('ethtool'))).toEqual([]);
    expect(plan.notes.join('\n')).not.toMatch(/vnet_hdr=off/);
  });

  test('with --io cap tells how to start QEMU so the guest computes its own checksums', () => {
    const plan = computeSetupPlan(BRIDGED, beforeSetup());
    expect(plan.notes.some((n) => n.includes('-netdev tap,ifname=svm-web1-p,script=no,downscript=no,vnet_hdr=off'))).toBe(true);
  });

  test('gives the taps the MTU asked for and keeps the bridge port at the bridge\'s MTU', () => {
    const plan = computeSetupPlan({ ...BRIDGED, mtu: 1400 }, beforeSetup());
    expect(commands(plan.steps).filter((c) => c.includes(' mtu '))).toEqual([
      'ip link set dev svm-web1-u mtu 1400',
      'ip link set dev svm-web1-p mtu 1400',
      'ip link set dev svm-web1-b mtu 1400',
    ]);
  });

  test('warns when the MTU asked for is above the bridge\'s', () => {
    const plan = computeSetupPlan({ ...BRIDGED, mtu: 9000 }, beforeSetup());
    expect(plan.notes.some((n) => n.includes('above br0\'s MTU 1500'))).toBe(true);
  });

  test('explains, without changing it, that br_netfilter passes bridged frames through iptables', () => {
    const host = beforeSetup();
    const sysctls = new Map(host.sysctls).set('net.bridge.bridge-nf-call-iptables', '1');
    const plan = computeSetupPlan(BRIDGED, beforeSetup({ sysctls }));
    expect(plan.notes.some((n) => n.startsWith('net.bridge.bridge-nf-call-iptables=1'))).toBe(true);
    expect(commands(plan.steps).join('\n')).not.toMatch(/bridge-nf/);
  });

  test('warns that an empty bridge without a fixed MAC takes the new port\'s MAC', () => {
    const plan = computeSetupPlan(BRIDGED, beforeSetup({ bridgeMacFixed: new Map([['br0', false]]) }));
    expect(plan.notes.some((n) => n.includes('will take svm-web1-h\'s (fe:61:b3:4b:8a:54)'))).toBe(true);
  });

  test('creates taps without owner or vnet header when not asked for', () => {
    const plan = computeSetupPlan({ name: 'web1', bridge: 'br0', io: 'afpacket', vnetHdr: false }, beforeSetup({ tapOwner: undefined }));
    expect(commands(plan.steps)).toContain('ip tuntap add dev svm-web1-p mode tap');
  });

  test('skips the IPv6 sysctls on a kernel without IPv6', () => {
    const plan = computeSetupPlan(BRIDGED, beforeSetup({ ipv6: false }));
    expect(commands(plan.steps).filter((c) => c.startsWith('sysctl'))).toEqual([]);
  });
});

describe('setup plan on a host where the pair is set up', () => {
  test('plans nothing', () => {
    const plan = computeSetupPlan(BRIDGED, afterSetup());
    expect(plan.steps).toEqual([]);
    expect(plan.interfaces.uplink).toBe('svm-web1-u');
  });

  test('plans only what drifted, each with its undo', () => {
    const host = afterSetup();
    const links = withLink(host, 'svm-web1-u', { flags: ['BROADCAST', 'MULTICAST', 'NOARP'] });
    const addresses = new Map(host.addresses).set('svm-web1-p', [{ family: 'inet', local: '10.9.9.9', prefixlen: 24, scope: 'global' }]);
    const offloads = new Map(host.offloads).set('svm-web1-h', parseEthtoolFeatures(fixture('ethtool-k-veth-uplink.txt')));
    const plan = computeSetupPlan(BRIDGED, afterSetup({ links, addresses, offloads }));
    expect(plan.steps.map((s) => [formatCommand(s.argv), formatCommand(s.undo ?? [])])).toEqual([
      ['ip link set dev svm-web1-u promisc on', 'ip link set dev svm-web1-u promisc off'],
      ['ethtool -K svm-web1-h tx off', 'ethtool -K svm-web1-h tx on'],
      ['ip addr del 10.9.9.9/24 dev svm-web1-p', 'ip addr add 10.9.9.9/24 dev svm-web1-p'],
      ['ip link set dev svm-web1-u up', 'ip link set dev svm-web1-u down'],
    ]);
  });

  test('puts the bridge port back into the bridge when it left', () => {
    const host = afterSetup();
    const plan = computeSetupPlan(BRIDGED, afterSetup({ links: withLink(host, 'svm-web1-h', { master: undefined }) }));
    expect(plan.steps.map((s) => [formatCommand(s.argv), formatCommand(s.undo ?? [])])).toEqual([
      ['ip link set dev svm-web1-h master br0', 'ip link set dev svm-web1-h nomaster'],
    ]);
  });

  test('refuses taps of ours created without an owner when an owner is asked for', () => {
    const host = afterSetup();
    const unowned = { tap: { multiQueue: false, vnetHdr: true } };
    const links = withLink({ links: withLink(host, 'svm-web1-p', unowned) }, 'svm-web1-b', unowned);
    expect(configError(() => computeSetupPlan(BRIDGED, afterSetup({ links }))).message).toBe(
      'svm-web1-p carries shadowvm\'s alias but has no owner (only CAP_NET_ADMIN may open it), not nobody: '
      + 'run `shadowvm teardown --name web1`, then set up again',
    );
  });

  test('re-enables nothing when switching from --io cap to afpacket (offloads off are still correct)', () => {
    expect(computeSetupPlan({ ...BRIDGED, io: 'afpacket' }, afterSetup()).steps).toEqual([]);
  });

  test('refuses a tap of ours owned by someone else: a persistent tap cannot be re-owned', () => {
    const err = configError(() => computeSetupPlan({ ...BRIDGED, tapOwner: 'qemu' }, afterSetup({
      tapOwner: { user: 'qemu', resolvedUser: { name: 'qemu', id: 64055 } },
    })));
    expect(err.problem).toBe('foreign-state');
    expect(err.message).toContain('svm-web1-p carries shadowvm\'s alias but is owned by nobody, not qemu');
  });
});

describe('setup plan with an existing uplink', () => {
  const UPLINK: SetupOptions = { name: 'web1', uplink: 'eth0', io: 'cap' };

  test('configures the uplink in place and never creates or deletes it', () => {
    const host = beforeSetup({ tapOwner: undefined });
    const links = withLink(host, 'eth0', { flags: ['BROADCAST', 'MULTICAST'] });
    const plan = computeSetupPlan({ ...UPLINK, flushUplink: true }, beforeSetup({ links, tapOwner: undefined }));
    expect(plan.interfaces).toEqual({ uplink: 'eth0', primary: 'svm-web1-p', backup: 'svm-web1-b' });
    const eth0 = plan.steps.filter((s) => s.argv.some((a) => a === 'eth0' || a.includes('.eth0.')));
    expect(eth0.map((s) => [formatCommand(s.argv), formatCommand(s.undo ?? [])])).toEqual([
      ['ip addr del 192.0.2.2/24 dev eth0', 'ip addr add 192.0.2.2/24 dev eth0'],
      ['ip addr del fd00::2/64 dev eth0', 'ip addr add fd00::2/64 dev eth0'],
      ['sysctl -qw net.ipv6.conf.eth0.disable_ipv6=1', 'sysctl -qw net.ipv6.conf.eth0.disable_ipv6=0'],
      ['ip link set dev eth0 arp off', 'ip link set dev eth0 arp on'],
      ['ethtool -K eth0 gro off', 'ethtool -K eth0 gro on'],
      ['ip link set dev eth0 promisc on', 'ip link set dev eth0 promisc off'],
      ['ip link set dev eth0 up', 'ip link set dev eth0 down'],
    ]);
    expect(commands(plan.steps).join('\n')).not.toMatch(/link (add|del).*eth0|veth/);
  });

  test('refuses an uplink that carries the host\'s addresses unless told to flush them', () => {
    const err = configError(() => computeSetupPlan(UPLINK, beforeSetup()));
    expect(err.problem).toBe('unusable-uplink');
    expect(err.message).toBe(
      'uplink eth0 carries addresses (192.0.2.2/24, fd00::2/64): shadowvm\'s uplink must not be a host interface; '
      + 'move them elsewhere or pass --flush-uplink to remove them',
    );
  });

  test('refuses an uplink that does not exist', () => {
    const err = configError(() => computeSetupPlan({ ...UPLINK, uplink: 'eth9' }, beforeSetup()));
    expect(err.problem).toBe('unknown-uplink');
    expect(err.message).toBe('uplink eth9 does not exist (not in `ip link show`)');
  });

  test('refuses a bridge given as uplink and points to --bridge', () => {
    const err = configError(() => computeSetupPlan({ ...UPLINK, uplink: 'br0' }, beforeSetup()));
    expect(err.message).toContain('pass --bridge br0');
  });

  test('refuses an uplink that is already a bridge port', () => {
    const host = beforeSetup();
    const err = configError(() => computeSetupPlan({ ...UPLINK, flushUplink: true }, beforeSetup({ links: withLink(host, 'eth0', { master: 'br0' }) })));
    expect(err.message).toContain('uplink eth0 is enslaved to br0');
  });
});

describe('setup plan errors', () => {
  test.each([
    ['', 'invalid-name'],
    ['web12345', undefined],
    ['web123456', 'invalid-name'],
    ['Web1', 'invalid-name'],
    ['web-1', 'invalid-name'],
    ['web.1', 'invalid-name'],
  ])('pair name "%s"', (name, problem) => {
    if (problem === undefined) {
      expect(computeSetupPlan({ ...BRIDGED, name }, beforeSetup()).interfaces.primary).toBe(`svm-${name}-p`);
    } else {
      expect(configError(() => computeSetupPlan({ ...BRIDGED, name }, beforeSetup())).problem).toBe(problem);
    }
  });

  test('names the length limit in one line', () => {
    expect(configError(() => computeSetupPlan({ ...BRIDGED, name: 'web123456' }, beforeSetup())).message).toBe(
      'pair name "web123456" must be 1–8 characters of a-z, 0-9 and _ (starting with a letter or digit) '
      + 'so that svm-web123456-p fits Linux\'s 15-character interface names',
    );
  });

  test('refuses a bridge that does not exist', () => {
    const err = configError(() => computeSetupPlan({ ...BRIDGED, bridge: 'br9' }, beforeSetup()));
    expect(err.problem).toBe('unknown-bridge');
    expect(err.message).toBe('bridge br9 does not exist (not in `ip link show`)');
  });

  test('refuses a bridge that is not a Linux bridge', () => {
    const err = configError(() => computeSetupPlan({ ...BRIDGED, bridge: 'eth0' }, beforeSetup()));
    expect(err.problem).toBe('not-a-bridge');
    expect(err.message).toBe('eth0 is not a Linux bridge (it is a plain interface)');
  });

  test('needs exactly one of uplink and bridge', () => {
    expect(configError(() => computeSetupPlan({ name: 'web1', io: 'cap' }, beforeSetup())).problem).toBe('invalid-option');
    expect(configError(() => computeSetupPlan({ ...BRIDGED, uplink: 'eth0' }, beforeSetup())).problem).toBe('invalid-option');
  });

  test('refuses an unknown tap owner', () => {
    const err = configError(() => computeSetupPlan({ ...BRIDGED, tapOwner: 'nosuch' }, beforeSetup({ tapOwner: { user: 'nosuch' } })));
    expect(err.message).toBe('tap owner user "nosuch" does not exist');
  });

  test.each(['svm-web1-p', 'svm-web1-u', 'svm-web1-h'])('refuses when %s exists without our alias', (ifname) => {
    const host = beforeSetup();
    const links = withLink(host, ifname, { kind: 'dummy', alias: undefined });
    const err = configError(() => computeSetupPlan(BRIDGED, beforeSetup({ links })));
    expect(err.problem).toBe('name-conflict');
    expect(err.message).toMatch(new RegExp(`^interface ${ifname} already exists and is not shadowvm's \\(alias none, expected "shadowvm:web1"\\)`));
  });

  test('refuses a look-alike whose alias names another pair', () => {
    const host = afterSetup();
    const links = withLink(host, 'svm-web1-b', { alias: 'shadowvm:web10' });
    expect(configError(() => computeSetupPlan(BRIDGED, afterSetup({ links }))).problem).toBe('name-conflict');
  });

  test('refuses a tap of ours that someone turned into multi-queue', () => {
    const host = afterSetup();
    const tap = host.links.get('svm-web1-p')?.tap;
    const links = withLink(host, 'svm-web1-p', { tap: { ...tap, multiQueue: true, vnetHdr: true } });
    expect(configError(() => computeSetupPlan(BRIDGED, afterSetup({ links }))).problem).toBe('foreign-state');
  });

  test('reads its owner check from the snapshot', () => {
    expect(computeSetupPlan(BRIDGED, afterSetup({ tapOwner: { ...NOBODY, user: '65534' } })).steps).toEqual([]);
  });
});

describe('teardown plan', () => {
  test('removes the taps and the veth pair once (deleting one end deletes its peer)', () => {
    const plan = computeTeardownPlan('web1', afterSetup());
    expect(commands(plan.steps)).toEqual([
      'ip link del dev svm-web1-p',
      'ip link del dev svm-web1-b',
      'ip link del dev svm-web1-u',
    ]);
    expect(plan.notes).toEqual([]);
  });

  test('plans nothing when nothing is left', () => {
    expect(computeTeardownPlan('web1', beforeSetup()).steps).toEqual([]);
  });

  test('never deletes a look-alike without our alias, and says so', () => {
    const host = afterSetup();
    const links = withLink(host, 'svm-web1-b', { alias: undefined });
    const plan = computeTeardownPlan('web1', afterSetup({ links }));
    expect(commands(plan.steps)).toEqual(['ip link del dev svm-web1-p', 'ip link del dev svm-web1-u']);
    expect(plan.notes).toEqual(['svm-web1-b is not shadowvm\'s (alias none): left alone']);
  });

  test('never takes a foreign veth peer along with our end', () => {
    const host = afterSetup();
    const links = withLink(host, 'svm-web1-u', { alias: 'mine' });
    const plan = computeTeardownPlan('web1', afterSetup({ links }));
    expect(commands(plan.steps)).toEqual(['ip link del dev svm-web1-p', 'ip link del dev svm-web1-b']);
    expect(plan.notes).toEqual([
      'svm-web1-u is not shadowvm\'s (alias "mine"): left alone',
      'svm-web1-h is shadowvm\'s but its veth peer svm-web1-u is not (alias "mine"): both left alone',
    ]);
  });
});
