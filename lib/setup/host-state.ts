/**
 * What the host looks like now, as far as setup cares.
 *
 * In:  `ip -j -d link show`, `ip -j addr show`, `ethtool -k <if>` output,
 *      sysctl values, account look-ups.
 * Out: a HostSnapshot. The parsers are pure (unit tests feed them canned
 *      output); `readHostSnapshot` is the only function that runs commands.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import { run } from '../lab/exec';

/** Runs a command and returns its stdout; throws (LabCommandError) on a non-zero exit. `lab/exec`'s `run` by default. */
export type CommandRunner = (cmd: string, args: readonly string[]) => string;

export interface TapInfo {
  /** As `ip` prints it: a user name, or a number when the uid has no name. */
  readonly user?: string;
  readonly group?: string;
  readonly multiQueue: boolean;
  readonly vnetHdr: boolean;
}

export interface LinkState {
  readonly name: string;
  readonly index: number;
  /** `linkinfo.info_kind`: `tun`, `veth`, `bridge`, … ; undefined for plain NICs. */
  readonly kind?: string;
  /** IFF_* names as `ip` prints them: UP, PROMISC, NOARP, LOWER_UP, … */
  readonly flags: readonly string[];
  readonly mtu: number;
  readonly master?: string;
  readonly alias?: string;
  /** The veth peer's name when it is in this namespace. */
  readonly peer?: string;
  readonly address?: string;
  readonly linkType?: string;
  readonly tap?: TapInfo;
  readonly vlanFiltering?: boolean;
}

export interface AddressState {
  readonly family: 'inet' | 'inet6';
  readonly local: string;
  readonly prefixlen: number;
  readonly scope: string;
}

export interface OffloadFeature {
  readonly on: boolean;
  /** `[fixed]`: the driver does not let it change. */
  readonly fixed: boolean;
}

/** `ethtool -k` top-level features by name (`tx-checksumming`, `generic-receive-offload`, …). */
export type OffloadState = ReadonlyMap<string, OffloadFeature>;

export interface Account {
  readonly name: string;
  readonly id: number;
}

export interface TapOwner {
  /** As given (`--tap-owner user[:group]`); passed to `ip tuntap add` unchanged. */
  readonly user: string;
  readonly group?: string;
  /** Resolved through the account database; undefined when it has no such entry. */
  readonly resolvedUser?: Account;
  readonly resolvedGroup?: Account;
}

export interface HostSnapshot {
  readonly hostname: string;
  readonly links: ReadonlyMap<string, LinkState>;
  readonly addresses: ReadonlyMap<string, readonly AddressState[]>;
  /** Only for the interfaces setup manages and only when offloads matter (`--io cap`). */
  readonly offloads: ReadonlyMap<string, OffloadState>;
  /** `net.ipv6.conf.<if>.disable_ipv6`, `net.ipv6.conf.default.disable_ipv6`, `net.bridge.bridge-nf-call-*`; absent keys do not exist. */
  readonly sysctls: ReadonlyMap<string, string>;
  /** False when the kernel has no IPv6 (`/proc/sys/net/ipv6` absent). */
  readonly ipv6: boolean;
  /** Per bridge: whether its MAC was set by someone (sysfs `addr_assign_type` 3), so ports cannot change it. */
  readonly bridgeMacFixed: ReadonlyMap<string, boolean>;
  readonly tapOwner?: TapOwner;
}

interface IpLinkJson {
  ifindex: number;
  ifname: string;
  flags?: string[];
  mtu: number;
  master?: string;
  ifalias?: string;
  link?: string | null;
  address?: string;
  link_type?: string;
  linkinfo?: {
    info_kind?: string;
    info_data?: {
      type?: string;
      user?: string | number;
      group?: string | number;
      multi_queue?: boolean;
      vnet_hdr?: boolean;
      vlan_filtering?: number;
    };
  };
}

/** Parses `ip -j [-d] link show`. Without `-d` there is no kind, tap or bridge detail. */
export function parseIpLinks(json: string): Map<string, LinkState> {
  const links = new Map<string, LinkState>();
  for (const entry of JSON.parse(json) as IpLinkJson[]) {
    const info = entry.linkinfo;
    const data = info?.info_data;
    const tap: TapInfo | undefined = info?.info_kind === 'tun' && data?.type === 'tap'
      ? {
        user: data.user === undefined ? undefined : String(data.user),
        group: data.group === undefined ? undefined : String(data.group),
        multiQueue: data.multi_queue === true,
        vnetHdr: data.vnet_hdr === true,
      }
      : undefined;
    links.set(entry.ifname, {
      name: entry.ifname,
      index: entry.ifindex,
      kind: info?.info_kind,
      flags: entry.flags ?? [],
      mtu: entry.mtu,
      master: entry.master,
      alias: entry.ifalias,
      peer: info?.info_kind === 'veth' && typeof entry.link === 'string' ? entry.link : undefined,
      address: entry.address,
      linkType: entry.link_type,
      tap,
      vlanFiltering: info?.info_kind === 'bridge' ? data?.vlan_filtering === 1 : undefined,
    });
  }
  return links;
}

interface IpAddrJson {
  ifname: string;
  addr_info?: Array<{ family: string; local: string; prefixlen: number; scope?: string }>;
}

/** Parses `ip -j addr show`: addresses per interface (interfaces without any map to []). */
export function parseIpAddrs(json: string): Map<string, AddressState[]> {
  const addresses = new Map<string, AddressState[]>();
  for (const entry of JSON.parse(json) as IpAddrJson[]) {
    const list: AddressState[] = [];
    for (const a of entry.addr_info ?? []) {
      if (a.family !== 'inet' && a.family !== 'inet6') continue;
      list.push({ family: a.family, local: a.local, prefixlen: a.prefixlen, scope: a.scope ?? 'global' });
    }
    addresses.set(entry.ifname, list);
  }
  return addresses;
}

/**
 * Parses `ethtool -k <if>`: the top-level features (sub-features are
 * tab-indented and skipped), e.g. `tx-checksumming: off [requested on]`.
 */
export function parseEthtoolFeatures(text: string): Map<string, OffloadFeature> {
  const features = new Map<string, OffloadFeature>();
  for (const line of text.split('\n')) {
    const m = /^([a-z0-9-]+): (on|off)( \[fixed\])?/.exec(line);
    if (m) features.set(m[1], { on: m[2] === 'on', fixed: m[3] !== undefined });
  }
  return features;
}

/** Parses one `getent passwd|group` line into name and id. */
export function parseGetent(line: string): Account | undefined {
  const fields = line.trim().split(':');
  if (fields.length < 3 || !/^\d+$/.test(fields[2])) return undefined;
  return { name: fields[0], id: Number(fields[2]) };
}

/** Whether a `/proc/<pid>/status` text shows CAP_NET_ADMIN (bit 12) in the effective set. */
export function hasNetAdmin(procStatus: string): boolean {
  const m = /^CapEff:\s*([0-9a-fA-F]+)\s*$/m.exec(procStatus);
  if (!m) return false;
  return (BigInt(`0x${m[1]}`) & (1n << 12n)) !== 0n;
}

export const BRIDGE_NF_SYSCTLS = [
  'net.bridge.bridge-nf-call-iptables',
  'net.bridge.bridge-nf-call-ip6tables',
  'net.bridge.bridge-nf-call-arptables',
] as const;

export function disableIpv6Key(ifname: string): string {
  return `net.ipv6.conf.${ifname}.disable_ipv6`;
}

function readSysctl(key: string): string | undefined {
  try {
    return fs.readFileSync(`/proc/sys/${key.split('.').join('/')}`, 'utf8').trim();
  } catch {
    return undefined;
  }
}

function lookUp(runner: CommandRunner, database: 'passwd' | 'group', key: string): Account | undefined {
  try {
    return parseGetent(runner('getent', [database, key]));
  } catch {
    return undefined;
  }
}

export interface SnapshotRequest {
  /** Interfaces whose per-interface state (offloads, sysctls) is wanted, if they exist. */
  readonly interfaces: readonly string[];
  readonly offloads: boolean;
  readonly bridge?: string;
  /** `user[:group]` */
  readonly tapOwner?: string;
}

/** Reads the host's state (read-only commands only; works without privileges). */
export function readHostSnapshot(request: SnapshotRequest, runner: CommandRunner = run): HostSnapshot {
  const links = parseIpLinks(runner('ip', ['-j', '-d', 'link', 'show']));
  const addresses = parseIpAddrs(runner('ip', ['-j', 'addr', 'show']));
  const ipv6 = fs.existsSync('/proc/sys/net/ipv6');
  const sysctls = new Map<string, string>();
  const offloads = new Map<string, OffloadState>();
  const wanted = ['default', ...request.interfaces.filter((ifname) => links.has(ifname))];
  for (const scope of wanted) {
    const key = disableIpv6Key(scope);
    const value = readSysctl(key);
    if (value !== undefined) sysctls.set(key, value);
  }
  for (const key of BRIDGE_NF_SYSCTLS) {
    const value = readSysctl(key);
    if (value !== undefined) sysctls.set(key, value);
  }
  if (request.offloads) {
    for (const ifname of request.interfaces) {
      if (links.has(ifname)) offloads.set(ifname, parseEthtoolFeatures(runner('ethtool', ['-k', ifname])));
    }
  }
  const bridgeMacFixed = new Map<string, boolean>();
  if (request.bridge && links.get(request.bridge)?.kind === 'bridge') {
    try {
      const type = fs.readFileSync(`/sys/class/net/${request.bridge}/addr_assign_type`, 'utf8').trim();
      bridgeMacFixed.set(request.bridge, type === '3');
    } catch { /* unknown: no note */ }
  }
  let tapOwner: TapOwner | undefined;
  if (request.tapOwner !== undefined) {
    const [user, group] = request.tapOwner.split(':', 2);
    tapOwner = {
      user,
      group: group || undefined,
      resolvedUser: user ? lookUp(runner, 'passwd', user) : undefined,
      resolvedGroup: group ? lookUp(runner, 'group', group) : undefined,
    };
  }
  return { hostname: os.hostname(), links, addresses, offloads, sysctls, ipv6, bridgeMacFixed, tapOwner };
}

/** Reads the calling process's effective capabilities. */
export function processHasNetAdmin(): boolean {
  try {
    return hasNetAdmin(fs.readFileSync('/proc/self/status', 'utf8'));
  } catch {
    return process.getuid?.() === 0;
  }
}
