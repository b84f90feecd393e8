/**
 * `shadowvm setup` / `teardown` on the real host: a scratch Linux bridge,
 * real taps and veth pairs, checked with `ip -j`, `ethtool -k` and sysctl.
 * Needs root. Every name is unique to this run, and afterAll removes all of
 * it even when a test failed.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import { run, runQuietly } from '../../lib/lab/exec';
import {
  SetupConfigError, SetupOptions, SetupPermissionError, SetupStepError, applySetup, applyTeardown, bridgePortMac,
  planSetup, planTeardown, setupStatus,
} from '../../lib/setup';

const id = process.pid.toString(36);
const bridge = `svmtb${id}`;
/** A second bridge, removed by a test halfway through a setup. */
const vanishingBridge = `svmtc${id}`;
/** A test-owned veth pair standing in for a user's NIC. */
const userNic = `svmtu${id}`;
const userNicPeer = `svmtv${id}`;
/** Another stand-in NIC, for a setup that fails after changing it. */
const userNic2 = `svmtx${id}`;
const userNic2Peer = `svmty${id}`;
/** Peer of a user's veth that happens to carry one of our names. */
const lookalikePeer = `svmtw${id}`;
const pairs = {
  main: `a${id}`, dry: `b${id}`, clash: `c${id}`, midway: `d${id}`, eperm: `e${id}`, nic: `f${id}`, nobridge: `g${id}`, nicMidway: `h${id}`,
};
const ifnamesOf = (name: string): string[] => ['p', 'b', 'u', 'h'].map((suffix) => `svm-${name}-${suffix}`);

interface IpLink {
  ifname: string;
  flags: string[];
  mtu: number;
  address: string;
  master?: string;
  ifalias?: string;
  linkinfo?: { info_kind?: string; info_data?: { user?: string } };
}

function link(ifname: string): IpLink | undefined {
  try {
    return (JSON.parse(run('ip', ['-j', '-d', 'link', 'show', 'dev', ifname])) as IpLink[])[0];
  } catch {
    return undefined;
  }
}

function addresses(ifname: string): unknown[] {
  return (JSON.parse(run('ip', ['-j', 'addr', 'show', 'dev', ifname])) as Array<{ addr_info: unknown[] }>)[0].addr_info;
}

function sysctl(key: string): string {
  return fs.readFileSync(`/proc/sys/${key.split('.').join('/')}`, 'utf8').trim();
}

function feature(ifname: string, name: string): string {
  const m = new RegExp(`^${name}: (on|off)`, 'm').exec(run('ethtool', ['-k', ifname]));
  if (!m) throw new Error(`ethtool -k ${ifname} shows no ${name}`);
  return m[1];
}

function existing(names: readonly string[]): string[] {
  return names.filter((ifname) => link(ifname) !== undefined);
}

function bridgeFacts(name: string): unknown {
  const l = link(name);
  const ports = (JSON.parse(run('ip', ['-j', 'link', 'show', 'master', name])) as IpLink[]).map((p) => p.ifname);
  return { exists: l !== undefined, mtu: l?.mtu, address: l?.address, flags: l?.flags, alias: l?.ifalias, ports };
}

function collect(): { lines: string[]; log: (line: string) => void } {
  const lines: string[] = [];
  return { lines, log: (line) => lines.push(line) };
}

function thrown(fn: () => unknown): Error {
  try {
    fn();
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected an error');
}

describe('shadowvm setup and teardown on the host', () => {
  let bridgeBefore: unknown;
  const main: SetupOptions = { name: pairs.main, bridge, io: 'cap', tapOwner: 'nobody' };

  beforeAll(() => {
    if (process.getuid?.() !== 0) {
      throw new Error('the setup integration tests need root (they create taps, veth pairs and a bridge): run jest as root');
    }
    // A fixed MAC: an empty bridge with a random one would take its first port's MAC.
    run('ip', ['link', 'add', 'name', bridge, 'address', '02:5e:7a:00:00:01', 'type', 'bridge']);
    run('ip', ['link', 'add', 'name', vanishingBridge, 'address', '02:5e:7a:00:00:02', 'type', 'bridge']);
    run('ip', ['link', 'add', userNic, 'type', 'veth', 'peer', 'name', userNicPeer]);
    run('ip', ['link', 'add', userNic2, 'type', 'veth', 'peer', 'name', userNic2Peer]);
    bridgeBefore = bridgeFacts(bridge);
  });

  afterAll(() => {
    for (const name of Object.values(pairs)) {
      try { applyTeardown(name, () => undefined); } catch { /* removed below */ }
    }
    // Whatever is left (the clash test's look-alike, anything a failed teardown kept): removed by name.
    for (const ifname of [...Object.values(pairs).flatMap(ifnamesOf), bridge, vanishingBridge, userNic, userNic2, lookalikePeer]) {
      if (link(ifname)) runQuietly('ip', ['link', 'del', 'dev', ifname]);
    }
  });

  test('creates taps and a veth pair whose host end joins the bridge: up, silent, tx offload off with --io cap', () => {
    const { lines, log } = collect();
    const result = applySetup(main, log);
    const [p, b, u, h] = ifnamesOf(pairs.main);
    expect(result.interfaces).toEqual({ uplink: u, primary: p, backup: b });
    expect(result.changed).toBe(true);
    expect(lines[lines.length - 1]).toMatch(new RegExp(`^${pairs.main}: set up `));

    for (const ifname of [p, b, u, h]) {
      const l = link(ifname) as IpLink;
      expect(l).toBeDefined();
      expect(l.ifalias).toBe(`shadowvm:${pairs.main}`);
      expect(l.flags).toContain('UP');
      expect(addresses(ifname)).toEqual([]);
      expect(sysctl(`net.ipv6.conf.${ifname}.disable_ipv6`)).toBe('1');
    }
    for (const ifname of [p, b]) {
      expect(link(ifname)?.linkinfo).toMatchObject({ info_kind: 'tun', info_data: { type: 'tap', user: 'nobody', multi_queue: false } });
      expect(link(ifname)?.flags).toContain('NOARP');
      expect(feature(ifname, 'generic-receive-offload')).toBe('off');
    }
    expect(link(h)?.master).toBe(bridge);
    expect(link(h)?.address).toBe(bridgePortMac(os.hostname(), pairs.main));
    expect(link(u)?.flags).toEqual(expect.arrayContaining(['PROMISC', 'NOARP']));
    expect(feature(h, 'tx-checksumming')).toBe('off');
    expect(feature(u, 'generic-receive-offload')).toBe('off');
    expect(setupStatus(pairs.main, main)).toMatchObject({ state: 'complete', drift: [], pair: result.interfaces });
  });

  test('plans nothing the second time and says it is already set up', () => {
    expect(planSetup(main).steps).toEqual([]);
    const { lines, log } = collect();
    const result = applySetup(main, log);
    expect(result.changed).toBe(false);
    expect(lines.filter((l) => !l.startsWith('note:'))).toEqual([
      `${pairs.main}: already set up (uplink svm-${pairs.main}-u (veth into ${bridge}), primary svm-${pairs.main}-p, backup svm-${pairs.main}-b)`,
    ]);
  });

  test('re-applies only what drifted', () => {
    const u = `svm-${pairs.main}-u`;
    run('ip', ['addr', 'add', '192.0.2.77/32', 'dev', u]);
    run('ip', ['link', 'set', 'dev', u, 'promisc', 'off']);
    const steps = planSetup(main).steps.map((s) => s.argv.join(' '));
    expect(steps).toEqual([`ip addr del 192.0.2.77/32 dev ${u}`, `ip link set dev ${u} promisc on`]);
    applySetup(main, () => undefined);
    expect(addresses(u)).toEqual([]);
    expect(planSetup(main).steps).toEqual([]);
  });

  test('a dry run prints the exact commands and changes nothing', () => {
    const name = pairs.dry;
    const { lines, log } = collect();
    const result = applySetup({ name, bridge, io: 'cap' }, log, { dryRun: true });
    expect(result.changed).toBe(false);
    expect(lines.filter((l) => !l.startsWith('#'))).toEqual([
      `ip link add svm-${name}-u type veth peer name svm-${name}-h address ${bridgePortMac(os.hostname(), name)}`,
      `ip tuntap add dev svm-${name}-p mode tap vnet_hdr`,
      `ip tuntap add dev svm-${name}-b mode tap vnet_hdr`,
      `ip link set dev svm-${name}-u alias shadowvm:${name}`,
      `ip link set dev svm-${name}-h alias shadowvm:${name}`,
      `ip link set dev svm-${name}-p alias shadowvm:${name}`,
      `ip link set dev svm-${name}-b alias shadowvm:${name}`,
      `sysctl -qw net.ipv6.conf.svm-${name}-u.disable_ipv6=1`,
      `ip link set dev svm-${name}-u arp off`,
      `ethtool -K svm-${name}-u gro off`,
      `ethtool -K svm-${name}-u tso off`,
      `ethtool -K svm-${name}-u gso off`,
      `ip link set dev svm-${name}-u promisc on`,
      `sysctl -qw net.ipv6.conf.svm-${name}-h.disable_ipv6=1`,
      `ethtool -K svm-${name}-h tx off`,
      `sysctl -qw net.ipv6.conf.svm-${name}-p.disable_ipv6=1`,
      `ip link set dev svm-${name}-p arp off`,
      `ethtool -K svm-${name}-p gro off`,
      `ethtool -K svm-${name}-p tso off`,
      `ethtool -K svm-${name}-p gso off`,
      `sysctl -qw net.ipv6.conf.svm-${name}-b.disable_ipv6=1`,
      `ip link set dev svm-${name}-b arp off`,
      `ethtool -K svm-${name}-b gro off`,
      `ethtool -K svm-${name}-b tso off`,
      `ethtool -K svm-${name}-b gso off`,
      `ip link set dev svm-${name}-h master ${bridge}`,
      `ip link set dev svm-${name}-u up`,
      `ip link set dev svm-${name}-h up`,
      `ip link set dev svm-${name}-p up`,
      `ip link set dev svm-${name}-b up`,
    ]);
    expect(existing(ifnamesOf(name))).toEqual([]);
  });

  test('a dry run of the set-up pair prints no command', () => {
    const { lines, log } = collect();
    applySetup(main, log, { dryRun: true });
    expect(lines.filter((l) => !l.startsWith('#'))).toEqual([]);
    expect(lines[0]).toMatch(/already set up/);
  });

  test('teardown removes what setup created, a second teardown nothing, and the bridge is as before', () => {
    expect(planTeardown(pairs.main).steps.map((s) => s.argv.join(' '))).toEqual([
      `ip link del dev svm-${pairs.main}-p`, `ip link del dev svm-${pairs.main}-b`, `ip link del dev svm-${pairs.main}-u`,
    ]);
    const first = collect();
    expect(applyTeardown(pairs.main, first.log).changed).toBe(true);
    expect(existing(ifnamesOf(pairs.main))).toEqual([]);
    const second = collect();
    expect(applyTeardown(pairs.main, second.log).changed).toBe(false);
    expect(second.lines).toEqual([`${pairs.main}: nothing to tear down`]);
    expect(bridgeFacts(bridge)).toEqual(bridgeBefore);
    expect(setupStatus(pairs.main).state).toBe('absent');
  });

  test('an interface with our name but without our alias is neither used nor deleted', () => {
    const name = pairs.clash;
    run('ip', ['link', 'add', `svm-${name}-p`, 'type', 'veth', 'peer', 'name', lookalikePeer]);
    const err = thrown(() => applySetup({ name, bridge, io: 'afpacket' }, () => undefined));
    expect(err).toBeInstanceOf(SetupConfigError);
    expect(err.message).toMatch(new RegExp(`^interface svm-${name}-p already exists and is not shadowvm's`));
    expect(existing(ifnamesOf(name))).toEqual([`svm-${name}-p`]);
    const { lines, log } = collect();
    applyTeardown(name, log);
    expect(lines).toContain(`note: svm-${name}-p is not shadowvm's (alias none): left alone`);
    expect(link(`svm-${name}-p`)?.linkinfo?.info_kind).toBe('veth');
  });

  test('a bridge that does not exist is refused before anything is created', () => {
    const name = pairs.nobridge;
    const err = thrown(() => applySetup({ name, bridge: `svmnx${id}`, io: 'cap' }, () => undefined));
    expect(err).toBeInstanceOf(SetupConfigError);
    expect(err.message).toBe(`bridge svmnx${id} does not exist (not in \`ip link show\`)`);
    expect(existing(ifnamesOf(name))).toEqual([]);
  });

  test('a step failing midway (the bridge vanished) undoes everything done before it', () => {
    const name = pairs.midway;
    const { lines, log } = collect();
    const runner = (cmd: string, args: readonly string[]): string => {
      if (args.includes('master')) run('ip', ['link', 'del', 'dev', vanishingBridge]);
      return run(cmd, args);
    };
    const err = thrown(() => applySetup({ name, bridge: vanishingBridge, io: 'cap' }, log, { runner }));
    expect(err).toBeInstanceOf(SetupStepError);
    expect(err.message).toMatch(new RegExp(`^ip link set dev svm-${name}-h master ${vanishingBridge} failed: .*; undid 3 earlier step\\(s\\)$`));
    expect(lines).toContain(`undo: ip link del dev svm-${name}-u`);
    expect(existing(ifnamesOf(name))).toEqual([]);
  });

  test('without CAP_NET_ADMIN setup says it needs root and leaves nothing behind', () => {
    const name = pairs.eperm;
    // The same commands, run as nobody with no capabilities.
    const runner = (cmd: string, args: readonly string[]): string => run('setpriv', [
      '--reuid=65534', '--regid=65534', '--clear-groups', '--inh-caps=-all', cmd, ...args,
    ]);
    const err = thrown(() => applySetup({ name, bridge, io: 'cap' }, () => undefined, { runner }));
    expect(err).toBeInstanceOf(SetupPermissionError);
    expect(err.message).toMatch(/^shadowvm setup\/teardown needs root or CAP_NET_ADMIN \(ip link add svm-.*: RTNETLINK answers: Operation not permitted\)$/);
    expect(existing(ifnamesOf(name))).toEqual([]);
  });

  test('an existing uplink is configured in place, and teardown puts back what setup changed on it (promisc, ARP, IPv6, GRO, address, up)', () => {
    const name = pairs.nic;
    const runtimeDir = fs.mkdtempSync(`${os.tmpdir()}/op-setup-run-`);
    run('ip', ['addr', 'add', '192.0.2.77/24', 'dev', userNic]);
    run('ethtool', ['-K', userNic, 'gro', 'on']); // a veth starts with GRO off; a NIC's is on
    const uplinkFacts = (): unknown => ({
      flags: link(userNic)?.flags, mtu: link(userNic)?.mtu, alias: link(userNic)?.ifalias,
      ipv6: sysctl(`net.ipv6.conf.${userNic}.disable_ipv6`), gro: feature(userNic, 'generic-receive-offload'),
      addresses: (addresses(userNic) as Array<{ family: string; local: string }>).filter((a) => a.family === 'inet').map((a) => a.local),
    });
    const before = uplinkFacts();
    expect(before).toEqual(expect.objectContaining({ ipv6: '0', gro: 'on', addresses: ['192.0.2.77'] }));
    expect(link(userNic)?.flags).not.toContain('PROMISC');
    try {
      const opts: SetupOptions = { name, uplink: userNic, io: 'cap', flushUplink: true };
      const result = applySetup(opts, () => undefined, { runtimeDir });
      expect(result.interfaces).toEqual({ uplink: userNic, primary: `svm-${name}-p`, backup: `svm-${name}-b` });
      const nic = link(userNic) as IpLink;
      expect(nic.flags).toEqual(expect.arrayContaining(['UP', 'PROMISC', 'NOARP']));
      expect(nic.ifalias).toBeUndefined();
      expect(sysctl(`net.ipv6.conf.${userNic}.disable_ipv6`)).toBe('1');
      expect(feature(userNic, 'generic-receive-offload')).toBe('off');
      expect(addresses(userNic)).toEqual([]);
      expect(existing(ifnamesOf(name))).toEqual([`svm-${name}-p`, `svm-${name}-b`]);
      const saved = `${runtimeDir}/${name}/setup-uplink.json`;
      expect(fs.statSync(saved).mode & 0o777).toBe(0o600);
      expect(fs.statSync(`${runtimeDir}/${name}`).mode & 0o777).toBe(0o700);

      // A second setup changes nothing and keeps what the first one saved.
      expect(planSetup(opts).steps).toEqual([]);
      expect(applySetup(opts, () => undefined, { runtimeDir }).changed).toBe(false);
      expect(planTeardown(name, { runtimeDir }).steps.map((s) => s.argv.join(' '))).toEqual(expect.arrayContaining([
        `ip link set dev ${userNic} promisc off`, `ip link set dev ${userNic} arp on`, `ip addr add 192.0.2.77/24 dev ${userNic}`,
      ]));

      const { lines, log } = collect();
      applyTeardown(name, log, { runtimeDir });
      expect(lines[lines.length - 1]).toBe(`${name}: torn down`);
      expect(existing(ifnamesOf(name))).toEqual([]);
      expect(uplinkFacts()).toEqual(before);
      expect(fs.existsSync(saved)).toBe(false);
      // Nothing left to do: a second teardown changes nothing.
      expect(applyTeardown(name, () => undefined, { runtimeDir }).changed).toBe(false);
    } finally {
      runQuietly('ip', ['addr', 'flush', 'dev', userNic]);
      fs.rmSync(runtimeDir, { recursive: true, force: true });
    }
  });

  test('a failure after the user\'s uplink was changed restores the uplink as it was', () => {
    const name = pairs.nicMidway;
    const uplinkFacts = (): unknown => ({
      flags: link(userNic2)?.flags, mtu: link(userNic2)?.mtu, alias: link(userNic2)?.ifalias,
      ipv6: sysctl(`net.ipv6.conf.${userNic2}.disable_ipv6`), gro: feature(userNic2, 'generic-receive-offload'),
    });
    const before = uplinkFacts();
    // A veth takes MTU 65530, a tap refuses anything above 65521: the uplink is set up when the primary tap fails.
    const { lines, log } = collect();
    const err = thrown(() => applySetup({ name, uplink: userNic2, io: 'cap', mtu: 65530 }, log));
    expect(err).toBeInstanceOf(SetupStepError);
    expect(err.message).toMatch(new RegExp(`^ip link set dev svm-${name}-p mtu 65530 failed: `));
    expect(lines).toContain(`undo: ip link set dev ${userNic2} promisc off`);
    expect(uplinkFacts()).toEqual(before);
    expect(existing(ifnamesOf(name))).toEqual([]);
  });
});
