/**
 * Setup and teardown plans, computed from a HostSnapshot. Pure: no command
 * runs here, so every decision is unit-testable on canned `ip -j` output.
 *
 * In:  SetupOptions (or a pair name) and the host's current state.
 * Out: the steps that take the host from where it is to where it must be
 *      (nothing when it is there already), plus notes for the user.
 */
import { SetupConfigError } from './errors';
import { AddressState, HostSnapshot, LinkState, OffloadState, disableIpv6Key, BRIDGE_NF_SYSCTLS } from './host-state';
import { PairNames, bridgePortMac, pairNames } from './names';

export type IoMode = 'afpacket' | 'cap';

export interface SetupOptions {
  /** Pair name, ≤ 8 characters of [a-z0-9_]. */
  readonly name: string;
  /** An existing interface to use as the uplink; only checked and configured, never created or deleted. */
  readonly uplink?: string;
  /** An existing Linux bridge: a veth pair joins it and its other end becomes the uplink. */
  readonly bridge?: string;
  /** `afpacket` (vnet-header I/O: offloads may stay on) or `cap` (libpcap: checksum offload and GRO off). */
  readonly io: IoMode;
  /** `user[:group]` owning the taps, so an unprivileged QEMU can open them. */
  readonly tapOwner?: string;
  /** MTU of the uplink and the taps; default the uplink's (or the bridge's) MTU. */
  readonly mtu?: number;
  /** Initial IFF_VNET_HDR flag of new taps (default true). QEMU sets its own flag when it opens the tap. */
  readonly vnetHdr?: boolean;
  /** Remove addresses from a user-given uplink instead of refusing it. */
  readonly flushUplink?: boolean;
}

/** The interfaces `shadowvm run` should use. */
export interface PairInterfaces {
  readonly uplink: string;
  readonly primary: string;
  readonly backup: string;
}

export interface Step {
  /** One line for the user: what changes and why. */
  readonly why: string;
  readonly argv: readonly string[];
  /** Restores the state before `argv`; absent when nothing needs restoring (the interface is new and its removal undoes everything). */
  readonly undo?: readonly string[];
  /** The interface this step changes (absent for steps that create one). */
  readonly ifname?: string;
}

export interface SetupPlan {
  readonly name: string;
  readonly interfaces: PairInterfaces;
  readonly steps: readonly Step[];
  /** Things the user should know that setup does not (or cannot) change. */
  readonly notes: readonly string[];
}

export interface TeardownPlan {
  readonly name: string;
  readonly steps: readonly Step[];
  readonly notes: readonly string[];
}

/** MTU of a tap or veth right after creation. */
const NEW_LINK_MTU = 1500;

type Role = 'primary' | 'backup' | 'uplink' | 'bridge-port';

/** One interface setup manages and the state it must end in. */
interface Target {
  readonly ifname: string;
  readonly role: Role;
  /** Undefined when this plan creates it. */
  readonly existing?: LinkState;
  readonly mtu: number;
  readonly promisc: boolean;
  /** IFF_NOARP: the host's ARP must not answer requests that arrive on shadowvm's path. */
  readonly noArp: boolean;
  /** A port shadowvm captures on: GRO/LRO off with `--io cap`. */
  readonly capturePort: boolean;
  /**
   * Checksum offload off with `--io cap`: this end transmits what shadowvm
   * captures on its peer. A sender without checksum offload completes
   * partial checksums and segments GSO frames before the frame crosses.
   */
  readonly txChecksumOff: boolean;
  /** The veth peer, for the log. */
  readonly peer?: string;
  readonly master?: string;
  /** Remove existing addresses (always for ours; for a user uplink only with flushUplink, else it was refused). */
  readonly removeAddresses: boolean;
}

function isOurs(link: LinkState, names: PairNames): boolean {
  return link.alias === names.alias;
}

function describeAddresses(list: readonly AddressState[]): string {
  return list.map((a) => `${a.local}/${a.prefixlen}`).join(', ');
}

/** Addresses the host would use on this interface; IPv6 link-local ones vanish with disable_ipv6. */
function configuredAddresses(list: readonly AddressState[] | undefined): AddressState[] {
  return (list ?? []).filter((a) => a.family === 'inet' || a.scope !== 'link');
}

function checkOwnedLink(link: LinkState | undefined, names: PairNames, what: string): void {
  if (link && !isOurs(link, names)) {
    throw new SetupConfigError(
      'name-conflict',
      `interface ${link.name} already exists and is not shadowvm's (alias ${link.alias === undefined ? 'none' : `"${link.alias}"`}, `
      + `expected "${names.alias}"): pick another --name or remove ${link.name} (wanted it as the ${what})`,
    );
  }
}

function foreignState(ifname: string, names: PairNames, problem: string): never {
  throw new SetupConfigError(
    'foreign-state',
    `${ifname} carries shadowvm's alias but ${problem}: run \`shadowvm teardown --name ${names.name}\`, then set up again`,
  );
}

function checkTap(link: LinkState | undefined, names: PairNames, host: HostSnapshot, what: string): void {
  checkOwnedLink(link, names, what);
  if (!link) return;
  if (!link.tap) foreignState(link.name, names, `is a ${link.kind ?? 'plain interface'}, not a tap`);
  if (link.tap.multiQueue) foreignState(link.name, names, 'has multi_queue on');
  const owner = host.tapOwner;
  if (owner) {
    const userOk = link.tap.user !== undefined
      && (link.tap.user === owner.resolvedUser?.name || link.tap.user === String(owner.resolvedUser?.id) || link.tap.user === owner.user);
    const groupOk = owner.group === undefined || (link.tap.group !== undefined
      && (link.tap.group === owner.resolvedGroup?.name || link.tap.group === String(owner.resolvedGroup?.id) || link.tap.group === owner.group));
    // A persistent tap's owner is set only when it is created (`ip tuntap add` refuses an existing one).
    if (!userOk || !groupOk) {
      const now = link.tap.user === undefined && link.tap.group === undefined
        ? 'has no owner (only CAP_NET_ADMIN may open it)'
        : `is owned by ${link.tap.user ?? '-'}${link.tap.group ? `:${link.tap.group}` : ''}`;
      foreignState(link.name, names, `${now}, not ${owner.user}${owner.group ? `:${owner.group}` : ''}`);
    }
  }
}

function checkOptions(opts: SetupOptions, host: HostSnapshot, names: PairNames): void {
  if (opts.io !== 'afpacket' && opts.io !== 'cap') {
    throw new SetupConfigError('invalid-option', `--io must be afpacket or cap, not "${String(opts.io)}"`);
  }
  if ((opts.uplink === undefined) === (opts.bridge === undefined)) {
    throw new SetupConfigError('invalid-option', 'give exactly one of --uplink <existing interface> or --bridge <existing Linux bridge>');
  }
  if (opts.mtu !== undefined && (!Number.isInteger(opts.mtu) || opts.mtu < 68 || opts.mtu > 65535)) {
    throw new SetupConfigError('invalid-option', `--mtu must be an integer from 68 to 65535, not ${opts.mtu}`);
  }
  const owner = host.tapOwner;
  if (opts.tapOwner !== undefined) {
    if (!owner || !owner.user) throw new SetupConfigError('invalid-option', `--tap-owner must be user or user:group, not "${opts.tapOwner}"`);
    if (!owner.resolvedUser) throw new SetupConfigError('unknown-owner', `tap owner user "${owner.user}" does not exist`);
    if (owner.group !== undefined && !owner.resolvedGroup) throw new SetupConfigError('unknown-owner', `tap owner group "${owner.group}" does not exist`);
  }
  const ours = new Set([names.primaryTap, names.backupTap, names.vethUplink, names.vethBridgePort]);
  if (opts.uplink !== undefined) {
    const uplink = host.links.get(opts.uplink);
    if (ours.has(opts.uplink)) {
      throw new SetupConfigError('unusable-uplink', `--uplink ${opts.uplink} is one of the interfaces setup creates for ${names.name}; use --bridge to get a veth uplink`);
    }
    if (!uplink) throw new SetupConfigError('unknown-uplink', `uplink ${opts.uplink} does not exist (not in \`ip link show\`)`);
    if (uplink.kind === 'bridge') {
      throw new SetupConfigError('unusable-uplink', `uplink ${opts.uplink} is a Linux bridge: pass --bridge ${opts.uplink} to join it through a veth pair`);
    }
    if (uplink.linkType !== undefined && uplink.linkType !== 'ether') {
      throw new SetupConfigError('unusable-uplink', `uplink ${opts.uplink} is not an Ethernet interface (link type ${uplink.linkType})`);
    }
    if (uplink.master !== undefined) {
      throw new SetupConfigError('unusable-uplink', `uplink ${opts.uplink} is enslaved to ${uplink.master}, which would handle its frames too; give shadowvm a dedicated interface or use --bridge ${uplink.master}`);
    }
    const configured = configuredAddresses(host.addresses.get(opts.uplink));
    if (configured.length > 0 && !opts.flushUplink) {
      throw new SetupConfigError(
        'unusable-uplink',
        `uplink ${opts.uplink} carries addresses (${describeAddresses(configured)}): shadowvm's uplink must not be a host interface; `
        + 'move them elsewhere or pass --flush-uplink to remove them',
      );
    }
  } else {
    const bridge = host.links.get(opts.bridge as string);
    if (!bridge) throw new SetupConfigError('unknown-bridge', `bridge ${opts.bridge} does not exist (not in \`ip link show\`)`);
    if (bridge.kind !== 'bridge') {
      throw new SetupConfigError(
        'not-a-bridge',
        `${opts.bridge} is not a Linux bridge (it is ${bridge.kind === undefined ? 'a plain interface' : `a ${bridge.kind}`})`
        + (bridge.kind === 'openvswitch' ? '; with Open vSwitch, use --uplink with an OVS internal port' : ''),
      );
    }
  }
}

function targetsFor(opts: SetupOptions, host: HostSnapshot, names: PairNames, notes: string[]): { targets: Target[]; uplink: string } {
  const link = (ifname: string): LinkState | undefined => host.links.get(ifname);
  checkTap(link(names.primaryTap), names, host, 'primary tap');
  checkTap(link(names.backupTap), names, host, 'backup tap');

  const targets: Target[] = [];
  let uplinkName: string;
  let mtu: number;
  if (opts.uplink !== undefined) {
    const uplink = link(opts.uplink) as LinkState;
    uplinkName = uplink.name;
    mtu = opts.mtu ?? uplink.mtu;
    targets.push({
      ifname: uplink.name, role: 'uplink', existing: uplink, mtu, promisc: true, noArp: true,
      capturePort: true, txChecksumOff: false, removeAddresses: opts.flushUplink === true,
    });
  } else {
    const bridge = link(opts.bridge as string) as LinkState;
    const vethUplink = link(names.vethUplink);
    const vethPort = link(names.vethBridgePort);
    checkOwnedLink(vethUplink, names, 'veth uplink');
    checkOwnedLink(vethPort, names, 'bridge port');
    if (vethUplink || vethPort) {
      if (!vethUplink || !vethPort) {
        foreignState((vethUplink ?? vethPort as LinkState).name, names, `its veth peer ${vethUplink ? names.vethBridgePort : names.vethUplink} is missing`);
      }
      if (vethUplink.kind !== 'veth' || vethUplink.peer !== vethPort.name) {
        foreignState(vethUplink.name, names, `is not a veth paired with ${vethPort.name}`);
      }
    }
    uplinkName = names.vethUplink;
    mtu = opts.mtu ?? bridge.mtu;
    if (mtu > bridge.mtu) {
      notes.push(`--mtu ${mtu} is above ${bridge.name}'s MTU ${bridge.mtu}: ${bridge.name} drops frames larger than ${bridge.mtu} bytes`);
    }
    targets.push({
      ifname: names.vethUplink, role: 'uplink', existing: vethUplink, mtu, promisc: true, noArp: true,
      // What shadowvm sends here already carries complete checksums: its own tx offload does not matter.
      capturePort: true, txChecksumOff: false, removeAddresses: true,
    });
    // The bridge port keeps the bridge's MTU: a smaller one would lower a bridge whose MTU follows its ports.
    targets.push({
      ifname: names.vethBridgePort, role: 'bridge-port', existing: vethPort, mtu: bridge.mtu, promisc: false, noArp: false,
      capturePort: false, txChecksumOff: true, peer: names.vethUplink, master: bridge.name, removeAddresses: true,
    });
    bridgeNotes(bridge, host, names, notes);
  }
  for (const [role, ifname] of [['primary', names.primaryTap], ['backup', names.backupTap]] as const) {
    targets.push({
      ifname, role, existing: link(ifname), mtu, promisc: false, noArp: true,
      capturePort: true, txChecksumOff: false, removeAddresses: true,
    });
  }
  return { targets, uplink: uplinkName };
}

function bridgeNotes(bridge: LinkState, host: HostSnapshot, names: PairNames, notes: string[]): void {
  const filtering = BRIDGE_NF_SYSCTLS.filter((key) => host.sysctls.get(key) === '1');
  if (filtering.length > 0) {
    notes.push(
      `${filtering.map((key) => `${key}=1`).join(', ')}: frames bridged through ${bridge.name} pass the host's firewall `
      + `(a FORWARD policy of DROP, as Docker sets, drops the clients' frames); shadowvm leaves these global settings alone; `
      + `if clients cannot reach the VMs, accept them, e.g. \`iptables -I FORWARD -m physdev --physdev-in ${names.vethBridgePort} -j ACCEPT\` `
      + `and the same with --physdev-out`,
    );
  }
  if (bridge.vlanFiltering) {
    notes.push(`${bridge.name} filters VLANs: ${names.vethBridgePort} gets the bridge's default PVID; add the VLANs the VMs use with \`bridge vlan add dev ${names.vethBridgePort} vid …\``);
  }
  const otherPorts = [...host.links.values()].filter((l) => l.master === bridge.name && l.name !== names.vethBridgePort);
  if (host.bridgeMacFixed.get(bridge.name) === false && otherPorts.length === 0 && host.links.get(names.vethBridgePort)?.master !== bridge.name) {
    notes.push(`${bridge.name} has no ports and no fixed MAC address: it will take ${names.vethBridgePort}'s (${bridgePortMac(host.hostname, names.name)})`);
  }
}

function ipv6Disabled(host: HostSnapshot, target: Target): boolean {
  const key = disableIpv6Key(target.existing ? target.ifname : 'default');
  return host.sysctls.get(key) === '1';
}

function offloadSteps(target: Target, offloads: OffloadState | undefined, notes: string[]): Step[] {
  const wanted: Array<{ feature: string; ethtoolName: string; why: string }> = [];
  if (target.txChecksumOff) {
    wanted.push({
      feature: 'tx-checksumming', ethtoolName: 'tx',
      why: `${target.ifname}: checksum offload off, so what it passes to ${target.peer ?? 'its peer'} (shadowvm's capture port) carries complete TCP/UDP checksums and no GSO frames above the MTU (--io cap)`,
    });
  }
  if (target.capturePort) {
    wanted.push({
      feature: 'generic-receive-offload', ethtoolName: 'gro',
      why: `${target.ifname}: GRO off, so captured frames are never larger than the MTU (a plain send rejects them; --io cap)`,
    });
    wanted.push({
      feature: 'large-receive-offload', ethtoolName: 'lro',
      why: `${target.ifname}: LRO off, so captured frames are never larger than the MTU (--io cap)`,
    });
    // libpcap sizes its ring slots for the MTU only when none of TSO, GSO, GRO, LRO is on; otherwise for
    // cap's 64 KiB snapshot: 8 MiB then holds about 128 frames, and under load backup frames are lost.
    wanted.push({
      feature: 'tcp-segmentation-offload', ethtoolName: 'tso',
      why: `${target.ifname}: TSO off, so libpcap sizes its ring slots for the MTU, not 64 KiB (about 50 times the frames in the same memory; --io cap)`,
    });
    wanted.push({
      feature: 'generic-segmentation-offload', ethtoolName: 'gso',
      why: `${target.ifname}: GSO off, so libpcap sizes its ring slots for the MTU, not 64 KiB (--io cap)`,
    });
  }
  const steps: Step[] = [];
  for (const w of wanted) {
    if (!target.existing) {
      // A new veth or tap has no LRO to turn off; its other features are read only after creation.
      if (w.ethtoolName !== 'lro') steps.push({ why: w.why, argv: ['ethtool', '-K', target.ifname, w.ethtoolName, 'off'] });
      continue;
    }
    const state = offloads?.get(w.feature);
    if (!state || !state.on) continue;
    if (state.fixed) {
      notes.push(`${target.ifname}: ${w.feature} is on and fixed by its driver; with --io cap expect ${w.ethtoolName === 'tx' ? 'partial checksums' : 'frames above the MTU'}`);
      continue;
    }
    steps.push({ why: w.why, argv: ['ethtool', '-K', target.ifname, w.ethtoolName, 'off'], undo: ['ethtool', '-K', target.ifname, w.ethtoolName, 'on'] });
  }
  return steps;
}

/** Steps for one interface after it exists: addresses, IPv6, ARP, MTU, offloads, promiscuity. */
function configureSteps(target: Target, opts: SetupOptions, host: HostSnapshot, notes: string[]): Step[] {
  const steps: Step[] = [];
  const existing = target.existing;
  const flags = new Set(existing?.flags ?? []);
  const undoable = (undo: string[]): string[] | undefined => (existing ? undo : undefined);
  const dev = target.ifname;

  // Addresses go first, IPv6 off second: undone in reverse, IPv6 is back before its addresses return.
  if (existing && target.removeAddresses) {
    for (const a of configuredAddresses(host.addresses.get(dev))) {
      const cidr = `${a.local}/${a.prefixlen}`;
      steps.push({
        why: `${dev}: remove address ${cidr}; shadowvm's interfaces carry none, so the host stays out of the path`,
        argv: ['ip', 'addr', 'del', cidr, 'dev', dev],
        undo: ['ip', 'addr', 'add', cidr, 'dev', dev],
      });
    }
  }
  if (host.ipv6 && !ipv6Disabled(host, target)) {
    const key = disableIpv6Key(dev);
    steps.push({
      why: `${dev}: IPv6 off, so the kernel sends no ND, MLD or router solicitations of its own into the protected path`,
      argv: ['sysctl', '-qw', `${key}=1`],
      undo: undoable(['sysctl', '-qw', `${key}=${host.sysctls.get(key) ?? '0'}`]),
    });
  }
  if (target.noArp && !flags.has('NOARP')) {
    steps.push({
      why: `${dev}: ARP off, so the host never answers ARP requests that arrive on shadowvm's path`,
      argv: ['ip', 'link', 'set', 'dev', dev, 'arp', 'off'],
      undo: undoable(['ip', 'link', 'set', 'dev', dev, 'arp', 'on']),
    });
  }
  const mtuNow = existing?.mtu ?? NEW_LINK_MTU;
  if (mtuNow !== target.mtu) {
    steps.push({
      why: `${dev}: MTU ${mtuNow} → ${target.mtu}${target.role === 'bridge-port' ? ' (the bridge\'s, so joining does not change it)' : ''}`,
      argv: ['ip', 'link', 'set', 'dev', dev, 'mtu', String(target.mtu)],
      undo: undoable(['ip', 'link', 'set', 'dev', dev, 'mtu', String(mtuNow)]),
    });
  }
  if (opts.io === 'cap') steps.push(...offloadSteps(target, host.offloads.get(dev), notes));
  if (target.promisc && !flags.has('PROMISC')) {
    steps.push({
      why: `${dev}: promiscuous, so frames for the VMs' MAC reach shadowvm`,
      argv: ['ip', 'link', 'set', 'dev', dev, 'promisc', 'on'],
      undo: undoable(['ip', 'link', 'set', 'dev', dev, 'promisc', 'off']),
    });
  }
  return steps.map((step) => ({ ...step, ifname: dev }));
}

/** The plan that brings the host to a set-up pair; empty when it is set up already. Throws SetupConfigError. */
export function computeSetupPlan(opts: SetupOptions, host: HostSnapshot): SetupPlan {
  const names = pairNames(opts.name);
  checkOptions(opts, host, names);
  const notes: string[] = [];
  const { targets, uplink } = targetsFor(opts, host, names, notes);
  const steps: Step[] = [];

  for (const target of targets) {
    if (target.existing) continue;
    if (target.role === 'primary' || target.role === 'backup') {
      const owner = host.tapOwner;
      steps.push({
        why: `create the ${target.role} VM's tap ${target.ifname}${owner ? ` owned by ${opts.tapOwner}` : ''}, for QEMU's -netdev tap,ifname=${target.ifname}`,
        argv: [
          'ip', 'tuntap', 'add', 'dev', target.ifname, 'mode', 'tap',
          ...(owner ? ['user', owner.user] : []),
          ...(owner?.group ? ['group', owner.group] : []),
          ...(opts.vnetHdr === false ? [] : ['vnet_hdr']),
        ],
        undo: ['ip', 'link', 'del', 'dev', target.ifname],
      });
    } else if (target.role === 'uplink') {
      steps.push({
        why: `create the veth pair ${names.vethUplink} (shadowvm's uplink) / ${names.vethBridgePort} (joins ${opts.bridge})`,
        argv: [
          'ip', 'link', 'add', names.vethUplink, 'type', 'veth',
          'peer', 'name', names.vethBridgePort, 'address', bridgePortMac(host.hostname, names.name),
        ],
        undo: ['ip', 'link', 'del', 'dev', names.vethUplink],
      });
    } else {
      continue; // created with its peer
    }
  }
  for (const target of targets) {
    if (target.existing) continue;
    steps.push({
      why: `mark ${target.ifname} as shadowvm's (alias ${names.alias}), so teardown removes it and nothing else`,
      argv: ['ip', 'link', 'set', 'dev', target.ifname, 'alias', names.alias],
    });
  }
  for (const target of targets) steps.push(...configureSteps(target, opts, host, notes));
  for (const target of targets) {
    if (target.master === undefined || target.existing?.master === target.master) continue;
    const before = target.existing?.master;
    steps.push({
      why: `${target.ifname}: join bridge ${target.master}, so the pair is on the host's network`,
      ifname: target.ifname,
      argv: ['ip', 'link', 'set', 'dev', target.ifname, 'master', target.master],
      undo: target.existing ? (before ? ['ip', 'link', 'set', 'dev', target.ifname, 'master', before] : ['ip', 'link', 'set', 'dev', target.ifname, 'nomaster']) : undefined,
    });
  }
  // Up last: by then the interface is silent (no IPv6, no addresses, no ARP).
  for (const target of targets) {
    if (target.existing?.flags.includes('UP')) continue;
    steps.push({
      why: `${target.ifname}: up`,
      ifname: target.ifname,
      argv: ['ip', 'link', 'set', 'dev', target.ifname, 'up'],
      undo: target.existing ? ['ip', 'link', 'set', 'dev', target.ifname, 'down'] : undefined,
    });
  }
  if (opts.io === 'cap') {
    notes.push(
      `--io cap: start QEMU with -netdev tap,ifname=${names.primaryTap},script=no,downscript=no,vnet_hdr=off (same for ${names.backupTap}): `
      + 'with a vnet header the guest leaves checksums and segmentation to the host and libpcap captures partial checksums and frames above the MTU; '
      + 'ethtool on the tap cannot prevent it (QEMU resets the tap\'s offloads when it opens it)',
    );
  }
  return {
    name: names.name,
    interfaces: { uplink, primary: names.primaryTap, backup: names.backupTap },
    steps,
    notes,
  };
}

/**
 * What setup changed on a user's own `--uplink` (an interface it did not
 * create and teardown does not delete), as the steps that put it back:
 * promiscuity, ARP, IPv6, MTU, offloads, addresses, up/down. Saved by setup,
 * run by teardown.
 */
export interface SavedUplinkState {
  readonly uplink: string;
  /** In the order to run them (the reverse of setup's). */
  readonly restore: readonly Step[];
}

/** The restore steps for the changes `plan` makes to the user's uplink `uplink`; empty when it changes nothing there. */
export function uplinkRestoreSteps(plan: SetupPlan, uplink: string): Step[] {
  return plan.steps
    .filter((step) => step.ifname === uplink && step.undo !== undefined)
    .reverse()
    .map((step) => ({ why: `${uplink}: restore what setup changed (${step.argv.join(' ')})`, argv: step.undo as readonly string[], ifname: uplink }));
}

/**
 * The plan that removes what setup created for this pair (taps and veth pair
 * carrying its alias) and restores a user's uplink as setup found it
 * (`saved`); empty when nothing is left.
 */
export function computeTeardownPlan(name: string, host: HostSnapshot, saved?: SavedUplinkState): TeardownPlan {
  const names = pairNames(name);
  const steps: Step[] = [];
  const notes: string[] = [];
  const handled = new Set<string>();
  const foreign = (link: LinkState): void => {
    notes.push(`${link.name} is not shadowvm's (alias ${link.alias === undefined ? 'none' : `"${link.alias}"`}): left alone`);
  };
  for (const [what, ifname] of [['primary tap', names.primaryTap], ['backup tap', names.backupTap]] as const) {
    const link = host.links.get(ifname);
    if (!link) continue;
    if (!isOurs(link, names)) { foreign(link); continue; }
    // `ip link del` also works while QEMU still holds the tap (`ip tuntap del` would fail with EBUSY).
    steps.push({ why: `remove the ${what} ${ifname}`, argv: ['ip', 'link', 'del', 'dev', ifname] });
    handled.add(ifname);
  }
  for (const ifname of [names.vethUplink, names.vethBridgePort]) {
    const link = host.links.get(ifname);
    if (!link || handled.has(ifname)) continue;
    if (!isOurs(link, names)) { foreign(link); continue; }
    const peer = link.kind === 'veth' ? link.peer : undefined;
    const peerLink = peer === undefined ? undefined : host.links.get(peer);
    if (peerLink && !isOurs(peerLink, names)) {
      // Deleting one veth end deletes the other: never take a foreign peer along.
      notes.push(`${ifname} is shadowvm's but its veth peer ${peer} is not (alias ${peerLink.alias === undefined ? 'none' : `"${peerLink.alias}"`}): both left alone`);
      handled.add(peer as string);
      continue;
    }
    steps.push({
      why: peer ? `remove the veth pair ${ifname} / ${peer}` : `remove ${ifname}`,
      argv: ['ip', 'link', 'del', 'dev', ifname],
    });
    handled.add(ifname);
    if (peer) handled.add(peer);
  }
  if (saved && saved.restore.length > 0) {
    if (host.links.has(saved.uplink)) steps.push(...saved.restore);
    else notes.push(`uplink ${saved.uplink} no longer exists: nothing of it to restore`);
  }
  return { name: names.name, steps, notes };
}
