/**
 * Deaths and rebirths of a replica in the netns lab, the two ways a VM can
 * die as the bridge sees it:
 *
 * - abrupt: its link goes down (QEMU gone: the tap loses its carrier);
 * - silent: it stops talking with no carrier change: its processes are
 *   stopped and its IP output to the client is dropped by blackhole routes
 *   inside its namespace (tc actions and netem do not load on these
 *   machines; see MACHINE-NOTES).
 *
 * `reviveReplica` undoes either and starts its servers afresh: the netns
 * lab's re-protection (a namespace cannot be copied, so the new backup is
 * the same namespace with fresh servers and no connections).
 */
import { Lab, LabNode, pidsInNamespace, processRunning } from './netns';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { runAsync } from './exec';
import { LabReplicaRuntime, LabServers, restartReplicaServers } from './servers';
import type { BatchReceiver, PacketPort, PortStats, VirtioNetHeader } from '../io/port';

export type DeathMode = 'abrupt' | 'silent';
export const DEATH_MODES: readonly DeathMode[] = ['abrupt', 'silent'];

/**
 * Kills a replica the way `mode` says; resolves once the death is in place.
 * Asynchronous: the bridge usually runs in this same process and must go on
 * seeing frames while the `ip` commands run.
 */
export async function killReplica(lab: Lab, node: LabNode, mode: DeathMode): Promise<void> {
  if (mode === 'abrupt') {
    await runAsync('ip', ['-n', node.netns, 'link', 'set', node.nsIf, 'down']);
    return;
  }
  // One `ip -batch` for both routes: the output stops within a single command's start-up.
  await runAsync('ip', ['-n', node.netns, '-batch', '-'], 10_000, `route add blackhole ${lab.client.ipv4}/32\nroute add blackhole ${lab.client.ipv6}/128\n`);
  for (const pid of pidsInNamespace(node.netns)) {
    try { process.kill(pid, 'SIGSTOP'); } catch { /* gone */ }
  }
}

/**
 * Brings a dead replica's network back as the lab built it (link, addresses,
 * static neighbours, no blackholes), in one `ip -batch` run asynchronously.
 */
export async function restoreReplicaNetwork(lab: Lab, node: LabNode): Promise<void> {
  const ns = node.nsIf;
  // `-force`: the blackhole routes exist only after a silent death; a missing one is not an error.
  await runAsync('ip', ['-force', '-n', node.netns, '-batch', '-'], 10_000, [
    `route del blackhole ${lab.client.ipv4}/32`,
    `route del blackhole ${lab.client.ipv6}/128`,
    `link set ${ns} up`,
    // A link going down removes IPv6 addresses (keep_addr_on_down is 0 by default) and flushes even permanent neighbour entries.
    `addr replace ${node.ipv4}/${lab.ipv4PrefixLength} dev ${ns}`,
    `addr replace ${node.ipv6}/${lab.ipv6PrefixLength} dev ${ns} nodad`,
    `neigh replace ${lab.client.ipv4} lladdr ${lab.client.mac} dev ${ns} nud permanent`,
    `neigh replace ${lab.client.ipv6} lladdr ${lab.client.mac} dev ${ns} nud permanent`,
  ].join('\n') + '\n').catch((e: Error) => {
    // -force goes on after a failed line and reports it at the end; only the blackhole deletions may fail.
    if (!/blackhole|No such process|Cannot find device/.test(e.message)) throw e;
  });
}

/** The replica runtime (servers) of the namespace behind a bridge port name. */
export function replicaOfPort(lab: Lab, servers: LabServers, port: string | undefined): LabReplicaRuntime | null {
  if (port === lab.primary.hostIf) return servers.primary;
  if (port === lab.backup.hostIf) return servers.backup;
  return null;
}

/**
 * `reviveReplica` in a process of its own (lib/lab/revive-main.js): every
 * `ip` and server start forks, and a fork of a process holding a bridge
 * stalls its forwarding for about 10 ms each (more with a larger heap), so
 * the bridge pays for one fork instead of five. Falls back to doing it here
 * when the compiled script is not there (`make build` writes it).
 */
export async function reviveReplicaElsewhere(lab: Lab, replica: LabReplicaRuntime): Promise<void> {
  const script = [join(__dirname, 'revive-main.js'), join(__dirname, '..', '..', 'dist', 'lib', 'lab', 'revive-main.js')].find((p) => existsSync(p));
  if (!script) {
    await reviveReplica(lab, replica);
    return;
  }
  await runAsync(process.execPath, [script, lab.prefix, replica.node.role], 60_000);
}

/** Re-protection in the netns lab: a dead replica's namespace gets its network back and fresh servers. */
export async function reviveReplica(lab: Lab, replica: LabReplicaRuntime): Promise<void> {
  // Stopped processes must die before the link comes back, or they would wake and speak.
  for (const pid of pidsInNamespace(replica.node.netns)) {
    try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
  }
  const deadline = Date.now() + 3000;
  while (pidsInNamespace(replica.node.netns).some(processRunning) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  await restoreReplicaNetwork(lab, replica.node);
  await restartReplicaServers(lab, replica);
}

/**
 * A port whose sends can be lost for a while: the lab's lossy link toward
 * the client (tc and netem do not load on these machines). `outage(ms)`
 * drops every frame sent through it for that long, as a link that loses
 * frames would, counted in `dropped` and in `txErrors`. Everything else is
 * the wrapped port's.
 */
export class OutagePort implements PacketPort {
  readonly name: string;
  readonly arrivalTimes?: boolean;
  readonly ring?: PacketPort['ring'];
  readonly setInlineSends?: (on: boolean) => void;
  /** Frames dropped by outages so far. */
  dropped = 0;
  private untilMs = 0;

  constructor(private readonly inner: PacketPort, private readonly nowMs: () => number = () => performance.now()) {
    this.name = inner.name;
    this.arrivalTimes = inner.arrivalTimes;
    this.ring = inner.ring;
    if (inner.setInlineSends) this.setInlineSends = (on) => inner.setInlineSends!(on);
  }

  /** Drops every frame sent from now for `ms` milliseconds. */
  outage(ms: number): void {
    this.untilMs = Math.max(this.untilMs, this.nowMs() + ms);
  }

  onBatch(receiver: BatchReceiver): void {
    this.inner.onBatch(receiver);
  }

  send(frame: Buffer, vnet?: VirtioNetHeader): void {
    if (this.untilMs > 0 && this.nowMs() < this.untilMs) {
      this.dropped++;
      return;
    }
    this.inner.send(frame, vnet);
  }

  flush(): void {
    this.inner.flush();
  }

  stats(settled?: boolean): PortStats {
    const s = this.inner.stats(settled);
    return { ...s, txErrors: s.txErrors + this.dropped };
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
