/**
 * What the lab bench adds to a lab built by lib/lab: the benchmark objects
 * in both replicas' nginx roots, iperf3 servers in both replica namespaces,
 * the kernel-bridge baseline on the host ends, and a record of the offload
 * settings the run was measured with.
 *
 *   kernel baseline:  <p>c ──┐
 *                            <p>br (Linux bridge, STP off)      <p>b: left out (backup unreachable)
 *                     <p>p ──┘
 *
 * Everything started here is registered in `lab.processes` (killed by
 * teardownLab); the Linux bridge is not in a namespace, so `removeKernelBridge`
 * must run too (idempotent, synchronous: usable from signal handlers).
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { run, runIn, runInAsync, runQuietly } from '../../lib/lab/exec';
import { fixedSeedBytes } from '../../lib/lab/content';
import type { Lab, LabNode } from '../../lib/lab/netns';
import { LAB_CLIENT_IPV4, LAB_CLIENT_IPV6, LAB_CLIENT_MAC, pidsInNamespace, processRunning, setUpNode } from '../../lib/lab/netns';
import { LabServers, serveOnBoth } from '../../lib/lab/servers';

export const BENCH_OBJECTS = {
  small: { file: 'bench-1k.bin', bytes: 1024, seed: 0x1b1b1b1 },
  large: { file: 'bench-100k.bin', bytes: 100 * 1024, seed: 0x100b100 },
} as const;

/** Writes both objects into both content roots: same bytes, same mtime (same Last-Modified and ETag). */
export function writeBenchObjects(servers: LabServers): void {
  for (const o of Object.values(BENCH_OBJECTS)) serveOnBoth(servers, o.file, fixedSeedBytes(o.bytes, o.seed));
}

export const IPERF_PORT = 5201;

export function iperfLogFile(lab: Lab, node: LabNode): string {
  return path.join(lab.runDir, node.role, 'iperf3.log');
}

function listeningOn(netns: string, port: number): boolean {
  const out = runIn(netns, 'ss', ['-Hltn']);
  return out.split('\n').some((line) => line.trim().split(/\s+/)[3]?.endsWith(`:${port}`));
}

/** Starts `iperf3 -s` in the primary and the backup namespace; resolves once both listen. */
export async function startIperfServers(lab: Lab, timeoutMs = 5000): Promise<void> {
  const started: { node: LabNode; pid: number; log: string }[] = [];
  for (const node of [lab.primary, lab.backup]) {
    const logFile = iperfLogFile(lab, node);
    const log = fs.openSync(logFile, 'a');
    try {
      const child = spawn('ip', ['netns', 'exec', node.netns, 'iperf3', '-s', '-p', String(IPERF_PORT), '--forceflush'], { detached: true, stdio: ['ignore', log, log] });
      if (child.pid === undefined) throw new Error(`iperf3 in ${node.netns}: could not spawn`);
      child.unref();
      lab.processes.push({ name: 'iperf3', netns: node.netns, pid: child.pid, logFile });
      started.push({ node, pid: child.pid, log: logFile });
    } finally {
      fs.closeSync(log);
    }
  }
  const deadline = Date.now() + timeoutMs;
  for (const s of started) {
    while (!listeningOn(s.node.netns, IPERF_PORT)) {
      if (!processRunning(s.pid) || Date.now() > deadline) {
        throw new Error(`iperf3 in ${s.node.netns} is not listening on ${IPERF_PORT}; log ${s.log}:\n${readTail(s.log)}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

/** A TCP server that accepts connections and reads what comes, and never writes: a backup that serves nothing. */
const DISCARD_SERVER = `
require('node:net').createServer((s) => { s.on('data', () => {}); s.on('error', () => {}); }).listen(Number(process.argv[1]));
`;

/**
 * Makes `node` a sink on `port`: its lab server there (nginx on 80) is
 * stopped and a discard server takes the port (registered in
 * `lab.processes`, so teardownLab kills it). Resolves once it listens.
 */
export async function replaceWithDiscardServer(lab: Lab, node: LabNode, server: string, port: number, timeoutMs = 5000): Promise<void> {
  for (const p of lab.processes.filter((q) => q.netns === node.netns && q.name === server)) {
    try { process.kill(-p.pid, 'SIGKILL'); } catch { /* already gone */ }
    lab.processes.splice(lab.processes.indexOf(p), 1);
  }
  const deadline = Date.now() + timeoutMs;
  while (listeningOn(node.netns, port)) {
    if (Date.now() > deadline) throw new Error(`${server} in ${node.netns} still holds port ${port}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  const logFile = path.join(lab.runDir, node.role, 'discard.log');
  const log = fs.openSync(logFile, 'a');
  try {
    const child = spawn('ip', ['netns', 'exec', node.netns, process.execPath, '-e', DISCARD_SERVER, String(port)], { detached: true, stdio: ['ignore', log, log] });
    if (child.pid === undefined) throw new Error(`discard server in ${node.netns}: could not spawn`);
    child.unref();
    lab.processes.push({ name: 'discard', netns: node.netns, pid: child.pid, logFile });
    while (!listeningOn(node.netns, port)) {
      if (!processRunning(child.pid) || Date.now() > deadline) throw new Error(`discard server in ${node.netns} is not listening on ${port}; log ${logFile}:\n${readTail(logFile)}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  } finally {
    fs.closeSync(log);
  }
}

export function readTail(file: string, bytes = 4000): string {
  try {
    const text = fs.readFileSync(file, 'utf8');
    return text.slice(-bytes);
  } catch {
    return '';
  }
}

// ------------------------------------------------------------------ kernel bridge

export function kernelBridgeName(prefix: string): string {
  return `${prefix}br`;
}

/**
 * Enslaves the host ends of the client and the primary veth to a Linux
 * bridge (STP off: ports forward at once). The backup's veth stays out.
 */
export function addKernelBridge(lab: Lab): string {
  return addKernelBridgeOn(lab.prefix, [lab.client.hostIf, lab.primary.hostIf]);
}

/** The same on any host interfaces (the QEMU lab: the client's veth and the primary VM's tap). */
export function addKernelBridgeOn(prefix: string, ifaces: readonly string[]): string {
  removeKernelBridge(prefix);
  return createLinuxBridge(kernelBridgeName(prefix), ifaces);
}

/** A Linux bridge named `br` (which must not exist) over these host interfaces, STP off. */
export function createLinuxBridge(br: string, ifaces: readonly string[]): string {
  run('ip', ['link', 'add', br, 'type', 'bridge', 'stp_state', '0']);
  // As the lab's host ends: no IPv6 on the host side (no MLD, no link-local noise).
  run('sysctl', ['-qw', `net.ipv6.conf.${br}.disable_ipv6=1`]);
  for (const ifname of ifaces) run('ip', ['link', 'set', ifname, 'master', br]);
  run('ip', ['link', 'set', br, 'up']);
  return br;
}

/** Deletes the kernel bridge of this prefix if it exists. Never throws. */
export function removeKernelBridge(prefix: string): boolean {
  const br = kernelBridgeName(prefix);
  try {
    run('ip', ['link', 'show', 'dev', br]);
  } catch {
    return true;
  }
  return runQuietly('ip', ['link', 'del', br]);
}

export function linkExists(name: string): boolean {
  try {
    run('ip', ['link', 'show', 'dev', name]);
    return true;
  } catch {
    return false;
  }
}

// ------------------------------------------------------------------ a second client for the backup

/** The second client's Linux bridge and host veth end. */
export const twinBridgeName = (prefix: string): string => `${prefix}br2`;
export const twinHostIf = (prefix: string): string => `${prefix}c2`;

/**
 * A second client for the backup, so that it serves the same load as the
 * primary at the same time with nothing in between (the like-for-like
 * baseline of a bridge that makes the backup serve too):
 *
 *   netns (client's MAC and addresses) eth0 ── <p>c2 ── <p>br2 (Linux bridge) ── vmHostIf ── backup
 *
 * The backup knows the client's MAC statically, so the twin has the same
 * one. `netns` must not be in use (it is removed first); removeTwinClient
 * takes it away again.
 */
export function addTwinClient(prefix: string, netns: string, vmHostIf: string, vm: { mac: string; ipv4: string; ipv6: string }): string {
  const node: LabNode = {
    role: 'client', netns, hostIf: twinHostIf(prefix), nsIf: 'eth0', mac: LAB_CLIENT_MAC, ipv4: LAB_CLIENT_IPV4, ipv6: LAB_CLIENT_IPV6,
  };
  removeTwinClient(prefix, netns);
  setUpNode(node, { ...node, role: 'primary', ...vm });
  createLinuxBridge(twinBridgeName(prefix), [node.hostIf, vmHostIf]);
  return netns;
}

/** Removes the twin's bridge, namespace (and whatever still runs in it) and veth, if present. Never throws; synchronous. */
export function removeTwinClient(prefix: string, netns: string): void {
  runQuietly('ip', ['link', 'del', twinBridgeName(prefix)]);
  for (const pid of pidsInNamespace(netns)) {
    try { process.kill(pid, 'SIGKILL'); } catch { /* already gone */ }
  }
  runQuietly('ip', ['netns', 'del', netns]);
  // Deleting the namespace deletes the veth pair, asynchronously.
  if (linkExists(twinHostIf(prefix))) runQuietly('ip', ['link', 'del', twinHostIf(prefix)]);
}

// ------------------------------------------------------------------ offloads and host facts

const OFFLOAD_KEYS: Record<string, string> = {
  'tx-checksumming': 'tx-csum',
  'tx-tcp-segmentation': 'tso',
  'generic-segmentation-offload': 'gso',
  'generic-receive-offload': 'gro',
};

function parseOffloads(out: string): Record<string, string> {
  const r: Record<string, string> = {};
  for (const line of out.split('\n')) {
    const m = /^([a-z-]+): (on|off)/.exec(line.trim());
    if (m && OFFLOAD_KEYS[m[1]]) r[OFFLOAD_KEYS[m[1]]] = m[2];
  }
  return r;
}

/** Offload state of every veth end of the lab (namespace ends and host ends). Synchronous: call before a bridge runs. */
export function readOffloads(lab: Lab): Record<string, Record<string, string>> {
  const r: Record<string, Record<string, string>> = {};
  for (const node of lab.nodes) {
    try { r[`${node.netns}:${node.nsIf}`] = parseOffloads(runIn(node.netns, 'ethtool', ['-k', node.nsIf])); } catch { /* reported as absent */ }
    try { r[node.hostIf] = parseOffloads(run('ethtool', ['-k', node.hostIf])); } catch { /* reported as absent */ }
  }
  return r;
}

/**
 * Turns a namespace end's offloads on: checksum offload, scatter-gather,
 * TSO and GSO (the lab builds it with `tx off`). TCP then hands the veth
 * super-frames of up to 64 KiB with partial checksums, which only a bridge
 * that exchanges virtio-net headers can forward (AF_PACKET `vnetHdr`).
 * Asynchronous: a bridge may run in this process.
 */
export async function offloadsOn(node: Pick<LabNode, 'netns' | 'nsIf'>): Promise<void> {
  await runInAsync(node.netns, 'ethtool', ['-K', node.nsIf, 'tx', 'on', 'sg', 'on', 'tso', 'on', 'gso', 'on']);
}

/** Short text: e.g. "namespace ends: tx-csum off, tso off, gso on, gro on; host ends: … gro off". */
export function describeOffloads(offloads: Record<string, Record<string, string>>): string {
  const group = (keys: string[]) => {
    const seen = new Map<string, Set<string>>();
    for (const k of keys) for (const [f, v] of Object.entries(offloads[k] ?? {})) (seen.get(f) ?? seen.set(f, new Set()).get(f)!).add(v);
    return [...seen].map(([f, v]) => `${f} ${[...v].join('/')}`).join(', ');
  };
  const keys = Object.keys(offloads);
  return `namespace ends: ${group(keys.filter((k) => k.includes(':')))}; host ends: ${group(keys.filter((k) => !k.includes(':')))}`;
}

/** Host-wide settings that shape the kernel baseline (read only, never changed). */
export function hostFacts(): Record<string, string> {
  const read = (f: string) => { try { return fs.readFileSync(f, 'utf8').trim(); } catch { return 'absent'; } };
  return {
    kernel: read('/proc/sys/kernel/osrelease'),
    cpus: String(os.cpus().length),
    'bridge-nf-call-iptables': read('/proc/sys/net/bridge/bridge-nf-call-iptables'),
    'bridge-nf-call-ip6tables': read('/proc/sys/net/bridge/bridge-nf-call-ip6tables'),
    loadavg: read('/proc/loadavg'),
  };
}

/** Host-wide CPU time from /proc/stat (jiffies): busy (everything but idle and iowait), total, and steal (the hypervisor's). */
export function readHostCpu(): { busy: number; total: number; steal: number } {
  try {
    const fields = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1, 9).map(Number);
    const total = fields.reduce((n, v) => n + v, 0);
    return { busy: total - fields[3] - fields[4], total, steal: fields[7] };
  } catch {
    return { busy: NaN, total: NaN, steal: NaN };
  }
}

/** /proc/stat counts in USER_HZ ticks: 100 per second on Linux, whatever the kernel's HZ. */
const USER_HZ = 100;

/** CPU time all CPUs spent busy between two readings, µs. */
export function hostCpuBusyUs(before: { busy: number; total: number }, after: { busy: number; total: number }): number {
  return ((after.busy - before.busy) * 1e6) / USER_HZ;
}

/** Busy share of all CPUs between two readings, percent (100: every CPU busy all the time). */
export function hostCpuBusyPercent(before: { busy: number; total: number }, after: { busy: number; total: number }): number {
  const total = after.total - before.total;
  return total > 0 ? ((after.busy - before.busy) / total) * 100 : NaN;
}
