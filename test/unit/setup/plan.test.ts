import {
  AddressState, HostSnapshot, LinkState, OffloadState, SetupConfigError, SetupOptions, Step, computeSetupPlan, computeTeardownPlan,
  formatCommand, parseEthtoolFeatures,
} from '../../../lib/setup';
import { disableIpv6Key } from '../../../lib/setup/host-state';
import { bridgePortMac } from '../../../lib/setup';
import { uplinkRestoreSteps } from '../../../lib/setup/plan';
import { HOSTNAME, NOBODY, afterSetup, beforeSetup, fixture, withLink } from './host-fixtures';
import { HostModel, ModelLink } from './host-model';

const BRIDGED: SetupOptions = { name: 'web1', bridge: 'br0', io: 'cap', tapOwner: 'nobody' };
const commands = (steps: readonly Step[]): string[] => steps.map((s) => formatCommand(s.argv));

/** The snapshot a host in the model's state would give (links, addresses, IPv6 and offloads). */
function afterSetupOn(model: HostModel): HostSnapshot {
  const base = beforeSetup({ tapOwner: undefined });
  const links = new Map<string, LinkState>();
  const addresses = new Map<string, AddressState[]>();
  const sysctls = new Map(base.sysctls);
  const offloads = new Map<string, OffloadState>();
  let index = 1;
  for (const [name, l] of model.links) {
    const flags = [...(l.up ? ['UP'] : []), ...(l.promisc ? ['PROMISC'] : []), ...(l.noArp ? ['NOARP'] : [])];
    links.set(name, {
      name, index: index++, flags, mtu: l.mtu, master: l.master, alias: l.alias, peer: l.peer, linkType: 'ether',
      kind: l.kind === 'nic' ? undefined : l.kind === 'tap' ? 'tun' : l.kind,
      ...(l.kind === 'tap' ? { tap: { multiQueue: false, vnetHdr: !!l.vnetHdr, user: l.owner } } : {}),
    } as LinkState);
    addresses.set(name, [...l.addresses].map((c) => {
      const [local, len] = c.split('/');
      return { family: local.includes(':') ? 'inet6' : 'inet', local, prefixlen: Number(len), scope: 'global' } as AddressState;
    }));
    sysctls.set(disableIpv6Key(name), l.ipv6Disabled ? '1' : '0');
    offloads.set(name, new Map(['tx', 'gro', 'lro', 'tso', 'gso'].map((f) => [({ tx: 'tx-checksumming', gro: 'generic-receive-offload', lro: 'large-receive-offload', tso: 'tcp-segmentation-offload', gso: 'generic-segmentation-offload' } as Record<string, string>)[f], { on: l.offloadsOn.has(f), fixed: false }])));
  }
  return { ...base, links, addresses, sysctls, offloads };
}

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
  test('creates the taps and a veth pair, each marked as ours, and leaves every interface where shadowvm needs it', () => {
    const host = beforeSetup();
    const plan = computeSetupPlan(BRIDGED, host);
    expect(plan.interfaces).toEqual({ uplink: 'svm-web1-u', primary: 'svm-web1-p', backup: 'svm-web1-b' });
    const model = new HostModel(host);
    model.apply(plan.steps);
    const [u, h, p, b] = ['svm-web1-u', 'svm-web1-h', 'svm-web1-p', 'svm-web1-b'].map((i) => model.snapshot(i) as ModelLink);
    for (const l of [u, h, p, b]) {
      expect(l).toBeDefined();
      expect(l.alias).toBe('shadowvm:web1');
      expect(l.up).toBe(true);
      expect(l.ipv6Disabled).toBe(true);
      expect(l.addresses.size).toBe(0);
    }
    // The uplink: promiscuous, silent, no GRO (--io cap captures there).
    expect(u).toEqual(expect.objectContaining({ kind: 'veth', peer: 'svm-web1-h', promisc: true, noArp: true }));
    expect(u.master).toBeUndefined();
    expect(u.offloadsOn.has('gro')).toBe(false);
    // No TSO or GSO on a capture port: libpcap sizes its ring slots for the MTU (with them, 64 KiB ones: ~128 frames in 8 MiB).
    expect(u.offloadsOn.has('tso')).toBe(false);
    expect(u.offloadsOn.has('gso')).toBe(false);
    // Its peer joins br0 with a stable MAC and sends complete checksums into the capture port.
    expect(h).toEqual(expect.objectContaining({ master: 'br0', promisc: false, noArp: false, mac: bridgePortMac(HOSTNAME, 'web1') }));
    expect(h.offloadsOn.has('tx')).toBe(false);
    // The taps: owned by the user asked for, with a vnet header, silent, not promiscuous, no GRO.
    for (const tap of [p, b]) {
      expect(tap).toEqual(expect.objectContaining({ kind: 'tap', owner: 'nobody', vnetHdr: true, promisc: false, noArp: true }));
      expect(tap.master).toBeUndefined();
      expect(tap.offloadsOn.has('gro')).toBe(false);
      expect(tap.offloadsOn.has('tso')).toBe(false);
      expect(tap.offloadsOn.has('gso')).toBe(false);
    }
  });

  test('touches nothing but the four interfaces it creates: the bridge and the host\'s NIC stay as they were', () => {
    const host = beforeSetup();
    const model = new HostModel(host);
    const before = ['br0', 'eth0', 'lo'].map((i) => model.snapshot(i));
    model.apply(computeSetupPlan(BRIDGED, host).steps);
    expect(['br0', 'eth0', 'lo'].map((i) => model.snapshot(i))).toEqual(before);
  });

  test('brings each interface up only once it is marked as ours and silent (no IPv6; no ARP except on the bridge port), and changes nothing after', () => {
    const host = beforeSetup();
    const model = new HostModel(host);
    model.apply(computeSetupPlan(BRIDGED, host).steps);
    expect(model.ups.map((e) => e.ifname).sort()).toEqual(['svm-web1-b', 'svm-web1-h', 'svm-web1-p', 'svm-web1-u']);
    for (const { ifname, state } of model.ups) {
      expect(state.alias).toBe('shadowvm:web1');
      expect(state.ipv6Disabled).toBe(true);
      if (ifname !== 'svm-web1-h') expect(state.noArp).toBe(true);
      expect(state).toEqual(model.snapshot(ifname)); // nothing changes after it is up
    }
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
      ['ethtool -K eth0 tso off', 'ethtool -K eth0 tso on'],
      ['ethtool -K eth0 gso off', 'ethtool -K eth0 gso on'],
      ['ip link set dev eth0 promisc on', 'ip link set dev eth0 promisc off'],
      ['ip link set dev eth0 up', 'ip link set dev eth0 down'],
    ]);
    expect(commands(plan.steps).join('\n')).not.toMatch(/link (add|del).*eth0|veth/);
  });

  test('saves steps that put the uplink back exactly as setup found it, and teardown runs them', () => {
    const links = withLink(beforeSetup(), 'eth0', { flags: ['BROADCAST', 'MULTICAST'] });
    const host = beforeSetup({ links, tapOwner: undefined });
    const plan = computeSetupPlan({ ...UPLINK, flushUplink: true }, host);
    const model = new HostModel(host);
    const before = model.snapshot('eth0') as ModelLink;
    expect(before.addresses.size).toBeGreaterThan(0);
    expect(before.offloadsOn.has('gro')).toBe(true);
    model.apply(plan.steps);
    const during = model.snapshot('eth0') as ModelLink;
    expect(during).toEqual(expect.objectContaining({ up: true, promisc: true, noArp: true, ipv6Disabled: true }));
    expect(during.addresses.size).toBe(0);
    expect(during.offloadsOn.has('gro')).toBe(false);
    expect(before.offloadsOn.has('tso') && !during.offloadsOn.has('tso')).toBe(true);

    const restore = uplinkRestoreSteps(plan, 'eth0');
    expect(restore.every((s) => s.ifname === 'eth0')).toBe(true);
    const teardown = computeTeardownPlan('web1', afterSetupOn(model), { uplink: 'eth0', restore });
    model.apply(teardown.steps);
    expect(model.snapshot('eth0')).toEqual(before);
    expect(model.snapshot('svm-web1-p')).toBeUndefined();
  });

  test('saves nothing for an uplink setup did not change, and teardown leaves a vanished uplink alone with a note', () => {
    const host = beforeSetup({ tapOwner: undefined });
    const model = new HostModel(host);
    model.apply(computeSetupPlan({ ...UPLINK, flushUplink: true }, host).steps);
    expect(uplinkRestoreSteps(computeSetupPlan({ ...UPLINK, flushUplink: true }, afterSetupOn(model)), 'eth0')).toEqual([]);
    const links = new Map(host.links);
    links.delete('eth0');
    const plan = computeTeardownPlan('web1', beforeSetup({ links }), { uplink: 'eth0', restore: [{ why: 'x', argv: ['ip', 'link', 'set', 'dev', 'eth0', 'promisc', 'off'] }] });
    expect(plan.steps).toEqual([]);
    expect(plan.notes).toEqual(['uplink eth0 no longer exists: nothing of it to restore']);
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
