/**
 * A bridge under a flow flood, shared by bench/flow-flood (200,000 flows
 * against the default table) and bench/lab-bench (the RSS of 100,000 live
 * flows): `shadowvm run` and `shadowvm agent lab` as processes of their own
 * (so the bridge's RSS is its own), replicas that answer the flood, the
 * flood itself, and the bridge's VmRSS sampled while it runs.
 *
 *   client ns ── <p>c ── `shadowvm run` ─┬─ <p>p ── primary ns (nginx, UDP echo)
 *   frame-injector                        └─ <p>b ── backup ns  (nginx, UDP echo)
 *
 * Half the flows are SYNs to port 80, half datagrams to a UDP echo server
 * (UDP_FLOOD_PORT) in both replicas, from spoofed sources in
 * FLOOD_SOURCES_CIDR. The replicas route those to the client, which drops
 * what it gets: both replicas answer (SYN-ACKs, echoes) as they would real
 * clients, and a datagram flow exists only once the replicas have spoken.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { queryControlSocket } from '../../lib/control/control-socket';
import type { BridgeSnapshot } from '../../lib/control/snapshot';
import { run } from '../../lib/lab/exec';
import { LAB_CLIENT_IPV4, Lab } from '../../lib/lab/netns';
import { UDP_FLOOD_PORT } from '../../test/support/frame-injector';
import type { InjectResult } from '../../test/support/frame-injector';
import { Child, inNs, injectIn, memoryOf, start } from './children';

const SHADOWVM = join(__dirname, '..', '..', '..', 'bin', 'shadowvm');

/** The spoofed client sources of the flood (RFC 2544's benchmarking block). */
export const FLOOD_SOURCES_CIDR = '198.18.0.0/15';

const delay = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

const ECHO_SERVER = `
const s = require('node:dgram').createSocket('udp4');
s.on('message', (m, r) => s.send(m, r.port, r.address));
s.bind(Number(process.argv[1]));
`;

/**
 * Makes both replicas answer the flood: a route for the spoofed sources via
 * the client, and a UDP echo server on UDP_FLOOD_PORT. Returns the echo
 * servers (the caller kills them; teardownLab would too, as they run in the lab's namespaces).
 */
export function prepareFloodReplicas(lab: Lab): Child[] {
  const echoes: Child[] = [];
  for (const node of [lab.primary, lab.backup]) {
    run('ip', ['netns', 'exec', node.netns, 'ip', 'route', 'replace', FLOOD_SOURCES_CIDR, 'via', LAB_CLIENT_IPV4]);
    echoes.push(start(inNs(node.netns, [process.execPath, '-e', ECHO_SERVER, String(UDP_FLOOD_PORT)]), 'udp echo'));
  }
  return echoes;
}

export interface BridgeUnderTest { readonly proc: Child; readonly agent: Child; readonly controlSocket: string }

/** The bridge's status over its control socket; null if it does not answer. */
export async function bridgeStatus(controlSocket: string, timeoutMs = 5000): Promise<BridgeSnapshot | null> {
  try {
    const reply = await queryControlSocket(controlSocket, { cmd: 'status' }, timeoutMs);
    return reply.ok ? reply.status : null;
  } catch {
    return null;
  }
}

/**
 * `shadowvm run` on the lab's host ends with these settings (a `--config`
 * file; AF_PACKET with `portArgs` (default: without virtio-net headers), resync
 * align) and `shadowvm agent lab` (5 ms checkpoints); resolves once the
 * bridge is COMPARING.
 */
export async function startBridgeProcess(lab: Lab, name: string, settings: object, portArgs: readonly string[] = ['--no-vnet-hdr']): Promise<BridgeUnderTest> {
  const controlSocket = join(lab.runDir, 'run', 'control.sock');
  const agentSocket = join(lab.runDir, 'run', 'agent.sock');
  const configFile = join(lab.runDir, 'flood-bridge.json');
  writeFileSync(configFile, JSON.stringify(settings));
  const proc = start([process.execPath, SHADOWVM, 'run', '--name', name, '--uplink', lab.client.hostIf, '--primary', lab.primary.hostIf, '--backup', lab.backup.hostIf,
    '--agent', agentSocket, '--control', controlSocket, '--config', configFile, '--resync', 'align', ...portArgs, '--log-level', 'warn'], 'shadowvm run');
  for (let i = 0; i < 200 && !(await bridgeStatus(controlSocket, 500)); i++) {
    if (proc.child.exitCode !== null) throw new Error(`shadowvm run exited: ${proc.output}`);
    await delay(50);
  }
  const agent = start([process.execPath, SHADOWVM, 'agent', 'lab', '--name', name, '--socket', agentSocket, '--delay-ms', '5'], 'shadowvm agent');
  const stopBoth = () => {
    for (const c of [proc, agent]) if (c.child.exitCode === null) c.child.kill('SIGKILL');
  };
  for (let i = 0; i < 200; i++) {
    if ((await bridgeStatus(controlSocket))?.state === 'COMPARING') return { proc, agent, controlSocket };
    await delay(50);
  }
  stopBoth();
  throw new Error(`the bridge did not reach COMPARING: ${proc.output.slice(-2000)} ${agent.output.slice(-2000)}`);
}

/** A process's VmRSS every `everyMs`: the samples and the peak. */
export class RssSampler {
  readonly samples: { ms: number; rssMiB: number }[] = [];
  peakMiB: number;
  private readonly timer: NodeJS.Timeout;
  private readonly t0 = Date.now();

  constructor(private readonly pid: number, everyMs = 100) {
    this.peakMiB = memoryOf(pid).rssMiB;
    this.timer = setInterval(() => this.sample(), everyMs);
  }

  private sample(): void {
    const m = memoryOf(this.pid);
    if (Number.isFinite(m.rssMiB)) this.peakMiB = Math.max(this.peakMiB, m.rssMiB);
    this.samples.push({ ms: Date.now() - this.t0, rssMiB: m.rssMiB });
  }

  stop(): void {
    clearInterval(this.timer);
    this.sample();
  }
}

export interface FloodSpec { flows: number; perMs: number; seed: number }

/**
 * Injects the flood from the client namespace: the first half as SYNs, then
 * `between` (if given), then the second half as datagrams.
 */
export async function floodFlows(lab: Lab, spec: FloodSpec, between?: () => Promise<void>, say: (s: string) => void = () => {}): Promise<{ syn: InjectResult; udp: InjectResult }> {
  const synCount = Math.ceil(spec.flows / 2);
  const udpCount = spec.flows - synCount;
  say(`${synCount} SYNs`);
  const syn = await injectIn(lab.client.netns, { kind: 'syn-flood', count: synCount, perMs: spec.perMs, seed: spec.seed });
  await between?.();
  say(`${udpCount} UDP datagrams`);
  const udp = await injectIn(lab.client.netns, { kind: 'udp-flood', count: udpCount, perMs: spec.perMs, seed: spec.seed + 1 });
  return { syn, udp };
}
