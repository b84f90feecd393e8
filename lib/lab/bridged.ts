/**
 * The netns lab with shadowvm in the middle: the lab's namespaces and real
 * servers (netns.ts, servers.ts), a Bridge on the host ends of the veths,
 * and the lab sync agent. A namespace's state cannot be copied, so the lab
 * agent only answers checkpoints and the bridge resyncs by aligning
 * (`resync: 'align'`); the QEMU lab does real state sync.
 *
 *   client ns ── <p>c ─┐                 ┌─ <p>p ── primary ns (nginx, vsftpd, dnsmasq)
 *                      └── shadowvm ─────┤
 *                                        └─ <p>b ── backup ns  (same IP and MAC)
 */
import { join } from 'node:path';
import { Bridge, LinkEventSource } from '../bridge';
import { LinkWatcher } from '../io/link-watch';
import { makePipelineConfig, PipelineConfig } from '../pipeline/config';
import { runLabAgent, LabAgent } from '../agents/lab-agent';
import { LogFn, noLog } from '../control/logger';
import { IoBackend, openPorts } from '../cli/ports';
import { Lab, buildLab, teardownLab, waitUntilQuiet } from './netns';
import { runQuietly } from './exec';
import { Lab as LabT, LabNode } from './netns';
import { LabServers, startLabServers } from './servers';
import { DeathMode, killReplica, OutagePort, replicaOfPort, reviveReplicaElsewhere } from './faults';

export interface BridgedLabOptions {
  prefix?: string;
  /** LabOptions.clientReceiveBufferMax. */
  clientReceiveBufferMax?: number;
  io?: IoBackend;
  /**
   * AF_PACKET virtio-net headers. Off by default here: the lab turns checksum
   * offload off in its namespaces, so no frame needs one, and slots sized for
   * MTU frames give a ring of thousands of them.
   */
  vnetHdr?: boolean;
  /** AF_PACKET: poll the rings this long after each breath before sleeping (µs). */
  busyPollUs?: number;
  /** AF_PACKET: a wake-up takes every port's waiting frames (default true; false: one breath per epoll event). */
  sweepOnWake?: boolean;
  /** AF_PACKET: send from a thread of its own (default: on without virtio-net headers; see PortOptions). */
  sendThread?: boolean;
  /** See PortOptions.sendInlineFrames (default 8, as `shadowvm run`). */
  sendInlineFrames?: number;
  /** See PortOptions.splitRings (with vnetHdr: two rings a port). Default false. */
  splitRings?: boolean;
  /** See PortOptions.splitRingsFanout. */
  splitRingsFanout?: boolean;
  /** See BridgeOptions.inlineSendsMaxFps (absent here: no rate gate; `shadowvm run` gates at DEFAULT_SEND_INLINE_MAX_FPS). */
  inlineSendsMaxFps?: number;
  /** How long the lab agent's checkpoints take. */
  checkpointMs?: number;
  config?: Partial<PipelineConfig>;
  log?: LogFn;
  /**
   * Carrier events for the VM ports. Default: the lab opens its own netlink
   * LinkWatcher (closed by `stop`); 'none': only the agent and the silence
   * detector see deaths.
   */
  links?: LinkEventSource | 'none';
  /** vsftpd's passive ports (see LabServerOptions). */
  ftpPassivePorts?: { min: number; max: number };
  /** The backup's own passive range (see LabServerOptions). */
  backupFtpPassivePorts?: { min: number; max: number };
  /** Re-protect after a failover by restarting the dead namespace's servers (default true). */
  reprotect?: boolean;
  /** Serve Prometheus metrics here (loopback), as `shadowvm run --metrics` does. */
  metrics?: { host: string; port: number };
  /** Wrap the client-facing port so that `clientLinkOutage` can lose what the bridge sends to the client. */
  clientLinkFaults?: boolean;
}

export interface BridgedLab {
  readonly lab: Lab;
  readonly servers: LabServers;
  readonly bridge: Bridge;
  readonly agent: LabAgent;
  readonly agentSocket: string;
  readonly controlSocket: string;
  /** The namespace whose output the client receives now. */
  activeNode(): LabNode;
  /** The namespace compared against it, if any. */
  standbyNode(): LabNode | null;
  /** Kills the replica in `node` (abrupt: link down; silent: stopped and blackholed); resolves once it is dead. */
  kill(node: LabNode, mode: DeathMode): Promise<void>;
  /** With `clientLinkFaults`: every frame the bridge sends to the client for `ms` is lost; returns how many were lost so far. Throws without. */
  clientLinkOutage(ms: number): number;
  /** Stops agent and bridge and removes every namespace, veth and server. Idempotent. */
  stop(): Promise<void>;
}

function nodeOfPort(lab: LabT, port: string): LabNode {
  return port === lab.primary.hostIf ? lab.primary : lab.backup;
}

/** Waits until `test()` holds, polling; false on timeout. */
export async function waitFor(test: () => boolean, timeoutMs: number, everyMs = 10): Promise<boolean> {
  const until = Date.now() + timeoutMs;
  while (!test()) {
    if (Date.now() > until) return false;
    await new Promise((r) => setTimeout(r, everyMs));
  }
  return true;
}

export async function startBridgedLab(options: BridgedLabOptions = {}): Promise<BridgedLab> {
  const log = options.log ?? noLog;
  const lab = buildLab({ prefix: options.prefix, clientReceiveBufferMax: options.clientReceiveBufferMax });
  let bridge: Bridge | null = null;
  let agent: LabAgent | null = null;
  let ownLinks: LinkWatcher | null = null;
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    await agent?.stop();
    await bridge?.stop();
    ownLinks?.close();
    teardownLab(lab);
  };
  try {
    const servers = await startLabServers(lab, { ftpPassivePorts: options.ftpPassivePorts, backupFtpPassivePorts: options.backupFtpPassivePorts });
    await waitUntilQuiet(lab);
    const agentSocket = join(lab.runDir, 'agent.sock');
    const controlSocket = join(lab.runDir, 'control.sock');
    // What cap-ring-small advises (lib/cli/ports.ts): with these offloads on its host ends, libpcap's ring holds ~128 frames.
    if (options.io === 'cap') for (const n of lab.nodes) runQuietly('ethtool', ['-K', n.hostIf, 'tso', 'off', 'gso', 'off', 'gro', 'off']);
    const ports = openPorts(options.io ?? 'afpacket', { uplink: lab.client.hostIf, primary: lab.primary.hostIf, backup: lab.backup.hostIf }, { vnetHdr: options.vnetHdr ?? false, busyPollUs: options.busyPollUs, sweepOnWake: options.sweepOnWake, sendThread: options.sendThread, sendInlineFrames: options.sendInlineFrames, splitRings: options.splitRings, splitRingsFanout: options.splitRingsFanout, log: options.log });
    const clientLink = options.clientLinkFaults ? (ports.uplink = new OutagePort(ports.uplink)) : null;
    bridge = new Bridge(ports, {
      name: lab.prefix,
      config: makePipelineConfig({ resync: 'align', ...options.config }),
      agentSocket,
      controlSocket,
      log,
      links: options.links === 'none' ? undefined : options.links ?? (ownLinks = LinkWatcher.open()),
      metrics: options.metrics,
      ...(options.inlineSendsMaxFps !== undefined ? { inlineSendsMaxFps: options.inlineSendsMaxFps } : {}),
    });
    await bridge.start();
    const reprotect = options.reprotect ?? true;
    agent = runLabAgent({
      socketPath: agentSocket, name: `${lab.prefix}-lab-agent`, delayMs: options.checkpointMs ?? 5, reconnectInitialMs: 20, log,
      rebuildBackup: async (port) => {
        if (!reprotect) throw new Error('re-protection is off in this lab');
        const replica = replicaOfPort(lab, servers, port);
        if (!replica) throw new Error(`no lab replica behind port ${String(port)}`);
        await reviveReplicaElsewhere(lab, replica);
      },
    });
    const b = bridge;
    // The first checkpoint (asked for as soon as the agent connects) takes the bridge out of DEGRADED.
    if (!(await waitFor(() => b.pipeline.state === 'COMPARING', 10_000))) {
      throw new Error(`lab bridge did not reach COMPARING (state ${b.pipeline.state}): is the lab agent connected to ${agentSocket}?`);
    }
    const replicas = b.pipeline.replicas;
    return {
      lab, servers, bridge, agent, agentSocket, controlSocket, stop,
      activeNode: () => nodeOfPort(lab, replicas.active.name),
      standbyNode: () => (replicas.standby ? nodeOfPort(lab, replicas.standby.name) : null),
      kill: (node, mode) => killReplica(lab, node, mode),
      clientLinkOutage: (ms) => {
        if (!clientLink) throw new Error('clientLinkOutage needs a lab started with clientLinkFaults');
        clientLink.outage(ms);
        return clientLink.dropped;
      },
    };
  } catch (e) {
    await stop();
    throw e;
  }
}
