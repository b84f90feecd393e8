/**
 * The netns lab: three network namespaces (client, primary, backup), each
 * joined to the host by a veth pair. The host ends carry no addresses: they
 * are the bridge's ports (uplink, primary tap, backup tap).
 *
 *     <prefix>-client  eth0 ──veth── <prefix>c ┐
 *     <prefix>-primary eth0 ──veth── <prefix>p ├─ host (shadowvm, tcpdump)
 *     <prefix>-backup  eth0 ──veth── <prefix>b ┘
 *
 * Primary and backup are clones: same MAC, same IPv4 and IPv6 address. Every
 * neighbour entry is static and IPv6 autoconfiguration is off, so once the
 * lab has settled a capture holds only the traffic a test generates.
 * Checksum offload is off on the namespace ends so captured TCP/UDP
 * checksums are complete (with it on, frames carry partial checksums).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { findQemuProcesses } from '../qemu/process';
import { run, runIn, runQuietly } from './exec';
import { UserFacingError } from '../errors';

export type LabRole = 'client' | 'primary' | 'backup';

export interface LabNode {
  readonly role: LabRole;
  /** Network namespace name, `<prefix>-<role>`. */
  readonly netns: string;
  /** Host end of the veth pair (no addresses), `<prefix>c|p|b`. */
  readonly hostIf: string;
  /** Namespace end of the veth pair. */
  readonly nsIf: string;
  readonly mac: string;
  readonly ipv4: string;
  readonly ipv6: string;
}

/** A process the lab started (a server); teardown kills its process group. */
export interface LabProcess {
  readonly name: string;
  readonly netns: string;
  readonly pid: number;
  readonly logFile: string;
}

export interface Lab {
  readonly prefix: string;
  /** Runtime files of this lab (server configs, roots, logs); removed by teardown. */
  readonly runDir: string;
  readonly client: LabNode;
  readonly primary: LabNode;
  readonly backup: LabNode;
  readonly nodes: readonly [LabNode, LabNode, LabNode];
  readonly ipv4PrefixLength: number;
  readonly ipv6PrefixLength: number;
  /** The service address both replicas answer on (= primary.ipv4 = backup.ipv4). */
  readonly serviceIpv4: string;
  readonly serviceIpv6: string;
  /** Servers started in the lab (filled by `startLabServers`). */
  readonly processes: LabProcess[];
  /** Date.now() after which IPv6 join noise (MLD reports) is over; see `waitUntilQuiet`. */
  readonly quietAfterMs: number;
}

export interface LabOptions {
  /** Name prefix, ≤ 14 characters [a-z0-9]; default `svm`. Distinct prefixes let labs run in parallel. */
  prefix?: string;
  /**
   * The largest TCP receive buffer of the client's namespace (`net.ipv4.tcp_rmem`'s maximum), in bytes; default:
   * what a new namespace inherits from the host (32 MiB here). A client that reads slowly (wget --limit-rate)
   * lets the server run ahead of it by this much at wire speed, so a paced download meant to be in flight when a
   * test strikes may be all on the wire already. Such tests set it small (256 KiB); the bench and the demo keep
   * the default.
   */
  clientReceiveBufferMax?: number;
}

export const LAB_DEFAULT_PREFIX = 'svm';
export const LAB_CLIENT_MAC = '02:77:00:00:00:01';
/** Primary and backup share it, as clones of one VM do. */
export const LAB_VM_MAC = '02:77:00:00:00:02';
export const LAB_CLIENT_IPV4 = '10.77.0.1';
export const LAB_VM_IPV4 = '10.77.0.2';
export const LAB_CLIENT_IPV6 = 'fd77::1';
export const LAB_VM_IPV6 = 'fd77::2';
const NS_IF = 'eth0';

/**
 * After the last interface comes up the kernel sends MLDv2 reports for the
 * solicited-node groups (the initial one and one repeat ≤ 1 s later, RFC 3810
 * §6.1 with Linux's 1 s unsolicited report interval). None follows later.
 */
const SETTLE_MS = 2000;

/** Linux IFNAMSIZ is 16 including the NUL. */
const MAX_IFNAME = 15;

export class LabConfigError extends UserFacingError {
  constructor(message: string) {
    super(message);
    this.name = 'LabConfigError';
  }
}

export interface LabNames {
  readonly namespaces: Record<LabRole, string>;
  readonly hostIfs: Record<LabRole, string>;
  readonly runDir: string;
}

export function labNames(prefix: string = LAB_DEFAULT_PREFIX): LabNames {
  if (!/^[a-z][a-z0-9]*$/.test(prefix) || prefix.length + 1 > MAX_IFNAME) {
    throw new LabConfigError(`lab prefix "${prefix}" must be [a-z][a-z0-9]* and at most ${MAX_IFNAME - 1} characters`);
  }
  return {
    namespaces: { client: `${prefix}-client`, primary: `${prefix}-primary`, backup: `${prefix}-backup` },
    hostIfs: { client: `${prefix}c`, primary: `${prefix}p`, backup: `${prefix}b` },
    runDir: path.join(os.tmpdir(), `shadowvm-lab-${prefix}`),
  };
}

function describeNodes(prefix: string): [LabNode, LabNode, LabNode] {
  const names = labNames(prefix);
  const node = (role: LabRole, mac: string, ipv4: string, ipv6: string): LabNode => ({
    role, netns: names.namespaces[role], hostIf: names.hostIfs[role], nsIf: NS_IF, mac, ipv4, ipv6,
  });
  return [
    node('client', LAB_CLIENT_MAC, LAB_CLIENT_IPV4, LAB_CLIENT_IPV6),
    node('primary', LAB_VM_MAC, LAB_VM_IPV4, LAB_VM_IPV6),
    node('backup', LAB_VM_MAC, LAB_VM_IPV4, LAB_VM_IPV6),
  ];
}

/** IPv6 settings that keep the namespace end silent: no RS, no RA, no DAD, no link-local address. */
const QUIET_IPV6_SYSCTLS: ReadonlyArray<[string, string]> = [
  ['router_solicitations', '0'],
  ['accept_ra', '0'],
  ['accept_dad', '0'],
  ['dad_transmits', '0'],
  // 1 = no link-local address: nothing to run DAD for, no stable-privacy churn.
  ['addr_gen_mode', '1'],
];

/** One namespace joined to the host by a veth pair, addressed, quiet, with a static neighbour entry for `peer`. */
export function setUpNode(node: LabNode, peer: LabNode): void {
  run('ip', ['netns', 'add', node.netns]);
  run('ip', ['link', 'add', node.hostIf, 'type', 'veth', 'peer', 'name', node.nsIf, 'netns', node.netns]);

  // Host end: a bridge port, not a host interface. No IPv6 (no link-local,
  // no MLD from the host), no forwarding, no GRO (frames > MTU cannot be sent on).
  run('sysctl', ['-qw', `net.ipv6.conf.${node.hostIf}.disable_ipv6=1`]);
  run('sysctl', ['-qw', `net.ipv4.conf.${node.hostIf}.forwarding=0`]);
  runQuietly('ethtool', ['-K', node.hostIf, 'gro', 'off']);
  run('ip', ['link', 'set', node.hostIf, 'up']);

  const sysctls: string[] = [];
  for (const [key, value] of QUIET_IPV6_SYSCTLS) {
    for (const scope of ['all', 'default', node.nsIf]) sysctls.push(`net.ipv6.conf.${scope}.${key}=${value}`);
  }
  runIn(node.netns, 'sysctl', ['-qw', ...sysctls]);
  run('ip', ['-n', node.netns, 'link', 'set', node.nsIf, 'address', node.mac]);
  // `tx off` also turns TSO off; GSO still segments in software before the wire.
  runIn(node.netns, 'ethtool', ['-K', node.nsIf, 'tx', 'off']);
  run('ip', ['-n', node.netns, 'addr', 'add', `${node.ipv4}/24`, 'dev', node.nsIf]);
  run('ip', ['-n', node.netns, 'addr', 'add', `${node.ipv6}/64`, 'dev', node.nsIf, 'nodad']);
  run('ip', ['-n', node.netns, 'link', 'set', 'lo', 'up']);
  run('ip', ['-n', node.netns, 'link', 'set', node.nsIf, 'up']);
  // Static neighbours after `up` (an interface going down flushes them): no ARP, no ND.
  for (const addr of [peer.ipv4, peer.ipv6]) {
    run('ip', ['-n', node.netns, 'neigh', 'replace', addr, 'lladdr', peer.mac, 'dev', node.nsIf, 'nud', 'permanent']);
  }
}

function checkReceiveBufferMax(bytes: number): void {
  if (!Number.isInteger(bytes) || bytes < 4096) throw new LabConfigError(`a receive buffer maximum of ${bytes} bytes: it must be an integer of at least 4096`);
}

/** Sets the largest TCP receive buffer of namespace `netns` (LabOptions.clientReceiveBufferMax). */
export function setReceiveBufferMax(netns: string, bytes: number): void {
  checkReceiveBufferMax(bytes);
  // The initial size must not exceed the maximum.
  runIn(netns, 'sysctl', ['-qw', `net.ipv4.tcp_rmem=4096 ${Math.min(131072, bytes)} ${bytes}`]);
}

/**
 * Builds the lab. Leftovers of an earlier lab with the same prefix are
 * removed first; if a step fails, everything built so far is torn down and
 * the LabCommandError is rethrown.
 */
export function buildLab(options: LabOptions = {}): Lab {
  const prefix = options.prefix ?? LAB_DEFAULT_PREFIX;
  const names = labNames(prefix);
  const rmemMax = options.clientReceiveBufferMax;
  if (rmemMax !== undefined) checkReceiveBufferMax(rmemMax);
  teardownLab(prefix);
  const [client, primary, backup] = describeNodes(prefix);
  try {
    fs.mkdirSync(names.runDir, { recursive: true, mode: 0o755 });
    // mkdtemp-style 0700 would stop vsftpd's unprivileged session from reading its root.
    fs.chmodSync(names.runDir, 0o755);
    setUpNode(client, primary);
    setUpNode(primary, client);
    setUpNode(backup, client);
    if (rmemMax !== undefined) setReceiveBufferMax(client.netns, rmemMax);
  } catch (err) {
    teardownLab(prefix);
    throw err;
  }
  return describeLab(prefix);
}

/** The description of a lab with this prefix (names, addresses), built or not: what another process needs to act on it. */
export function describeLab(prefix: string = LAB_DEFAULT_PREFIX): Lab {
  const names = labNames(prefix);
  const [client, primary, backup] = describeNodes(prefix);
  return {
    prefix,
    runDir: names.runDir,
    client,
    primary,
    backup,
    nodes: [client, primary, backup],
    ipv4PrefixLength: 24,
    ipv6PrefixLength: 64,
    serviceIpv4: LAB_VM_IPV4,
    serviceIpv6: LAB_VM_IPV6,
    processes: [],
    quietAfterMs: Date.now() + SETTLE_MS,
  };
}

/** Resolves once the lab's own setup noise (MLD reports) is over. */
export async function waitUntilQuiet(lab: Lab): Promise<void> {
  const wait = lab.quietAfterMs - Date.now();
  if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
}

export interface LabLeftovers {
  namespaces: string[];
  links: string[];
  processes: number[];
  runDirExists: boolean;
}

function existingNamespaces(): string[] {
  return run('ip', ['netns', 'list']).split('\n').map((line) => line.split(' ')[0]).filter(Boolean);
}

function existingLinks(): string[] {
  return run('ip', ['-o', 'link', 'show']).split('\n')
    .map((line) => line.split(':')[1]?.trim().split('@')[0])
    .filter((name): name is string => Boolean(name));
}

/**
 * The processes inside a named network namespace, as `ip netns pids` finds
 * them (their /proc/PID/ns/net is the same namespace as /run/netns/NAME), but
 * without starting a process: a fork of this one would stall a bridge running
 * in it for milliseconds.
 */
export function pidsInNamespace(netns: string): number[] {
  let target: fs.Stats;
  try {
    target = fs.statSync(path.join('/run/netns', netns));
  } catch {
    return [];
  }
  const out: number[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const ns = fs.statSync(`/proc/${name}/ns/net`);
      if (ns.ino === target.ino && ns.dev === target.dev) out.push(Number(name));
    } catch { /* gone, or a kernel thread */ }
  }
  return out;
}

/**
 * Whether a process still runs. A killed server that this Node process
 * spawned stays a zombie until the event loop reaps it, so `kill(pid, 0)`
 * alone would call it alive.
 */
export function processRunning(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The state follows the parenthesised command name, which may itself hold ") ".
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/**
 * The QEMU lab's standby taps: `<prefix>s<N>` from the lab itself, `<prefix>a<N>`
 * from a QEMU agent in its own process (`shadowvm agent qemu`); a fresh tap per new backup.
 */
export function labStandbyTapName(prefix: string, n: number): string {
  return `${prefix}s${n}`;
}

function isLabLink(prefix: string, link: string): boolean {
  const names = labNames(prefix);
  if (Object.values(names.hostIfs).includes(link)) return true;
  const rest = link.startsWith(prefix) ? link.slice(prefix.length) : '';
  return /^[sa]\d+$/.test(rest);
}

/** What is left of a lab with this prefix (empty lists after a clean teardown). */
export function findLabLeftovers(prefix: string = LAB_DEFAULT_PREFIX): LabLeftovers {
  const names = labNames(prefix);
  const ours = new Set(Object.values(names.namespaces));
  const namespaces = existingNamespaces().filter((ns) => ours.has(ns));
  return {
    namespaces,
    links: existingLinks().filter((link) => isLabLink(prefix, link)),
    // The QEMU lab's VMs run in the host namespace; their command lines name the run directory.
    processes: [...namespaces.flatMap(pidsInNamespace), ...findQemuProcesses(names.runDir)],
    runDirExists: fs.existsSync(names.runDir),
  };
}

export interface TeardownReport {
  /** Steps that failed; teardown went on regardless. */
  failures: string[];
  leftovers: LabLeftovers;
}

/**
 * Removes everything a lab with this prefix may have left: its servers (and
 * every other process inside its namespaces), the QEMU lab's VMs, the namespaces, the host veth
 * ends and the run directory. Idempotent, synchronous (usable from exit
 * handlers), never throws: what it could not remove is in the report.
 */
export function teardownLab(labOrPrefix: Lab | string = LAB_DEFAULT_PREFIX): TeardownReport {
  const prefix = typeof labOrPrefix === 'string' ? labOrPrefix : labOrPrefix.prefix;
  const names = labNames(prefix);
  const failures: string[] = [];

  const victims = new Set<number>();
  if (typeof labOrPrefix !== 'string') {
    for (const proc of labOrPrefix.processes) {
      // Servers run as process-group leaders; the group takes their children along.
      try { process.kill(-proc.pid, 'SIGKILL'); } catch { /* already gone */ }
      victims.add(proc.pid);
    }
    labOrPrefix.processes.length = 0;
  }
  for (const pid of findQemuProcesses(names.runDir)) {
    // QEMU runs as a process-group leader (lib/qemu/process.ts).
    try { process.kill(-pid, 'SIGKILL'); } catch { try { process.kill(pid, 'SIGKILL'); } catch { /* already gone */ } }
    victims.add(pid);
  }
  const present = new Set(existingNamespaces());
  for (const netns of Object.values(names.namespaces)) {
    if (!present.has(netns)) continue;
    // A namespace stays alive (with its veth) while any process is inside it.
    for (const pid of pidsInNamespace(netns)) {
      try { process.kill(pid, 'SIGKILL'); } catch { /* already gone */ }
      victims.add(pid);
    }
  }
  const deadline = Date.now() + 3000;
  while ([...victims].some(processRunning) && Date.now() < deadline) sleepSync(20);

  for (const netns of Object.values(names.namespaces)) {
    if (present.has(netns)) runQuietly('ip', ['netns', 'del', netns], failures);
  }
  // Deleting a namespace deletes its veth ends and with them the host peers,
  // asynchronously; delete any host end still there ourselves.
  for (const hostIf of existingLinks().filter((link) => isLabLink(prefix, link))) {
    const linkFailures: string[] = [];
    if (!runQuietly('ip', ['link', 'del', hostIf], linkFailures) && existingLinks().includes(hostIf)) {
      failures.push(...linkFailures);
    }
  }
  try {
    fs.rmSync(names.runDir, { recursive: true, force: true });
  } catch (err) {
    failures.push(`rm -r ${names.runDir}: ${(err as Error).message}`);
  }
  return { failures, leftovers: findLabLeftovers(prefix) };
}
