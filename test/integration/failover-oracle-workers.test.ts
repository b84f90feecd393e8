/**
 * The failover oracle (test/support/oracle.ts) against `shadowvm run
 * --workers 2` as an administrator runs it (its own process, run's default
 * ports), seen only through its control socket: at 16 random moments a
 * download starts, the active replica dies (abrupt or silent) 20-320 ms in,
 * the download must equal the reference, and the pair must be protected
 * again (a lab agent that revives the dead replica). A download is one
 * connection, so one worker carries it and sees the death (or not: a
 * carrier loss reaches both); the other must follow, every time, without
 * telling the agent twice. Twice: with the lab's namespaces as built
 * (offloads off), and with TSO and checksum offload on (super-frames through
 * the workers' large rings). Needs root.
 */
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { runLabAgent, LabAgent } from '../../lib/agents/lab-agent';
import { queryControlSocket } from '../../lib/control/control-socket';
import type { BridgeSnapshot } from '../../lib/control/snapshot';
import { fixedSeedBytes } from '../../lib/lab/content';
import { runInAsync } from '../../lib/lab/exec';
import { killReplica, replicaOfPort, reviveReplicaElsewhere } from '../../lib/lab/faults';
import { Lab, buildLab, findLabLeftovers, teardownLab, waitUntilQuiet } from '../../lib/lab/netns';
import { LabServers, serveOnBoth, startLabServers } from '../../lib/lab/servers';
import { CliProcess, delay, IN_FLIGHT_RECEIVE_BUFFER, NO_LEFTOVERS, paced, requireBuiltCli, requireRoot, sha256, spawnShadowvm } from '../support/lab-helpers';
import { describeDetections, oracleMoments, OracleTarget } from '../support/oracle';

const PREFIX = 'svmow';
const MOMENTS = 16;
const OBJECT = 'oracle-workers.bin';
const OBJECT_BYTES = 4 << 20;
jest.setTimeout(300_000);

describe.each([false, true])('failover oracle: shadowvm run --workers 2, offloads on in the namespaces: %s (netns lab, root)', (offloads) => {
  let lab: Lab | undefined;
  let bridge: CliProcess | undefined;
  let agent: LabAgent | undefined;

  afterAll(async () => {
    await agent?.stop();
    if (bridge && bridge.child.exitCode === null) {
      bridge.child.kill('SIGTERM');
      await bridge.exited;
    }
    teardownLab(PREFIX);
    expect(findLabLeftovers(PREFIX)).toEqual(NO_LEFTOVERS);
  }, 30_000);

  test(`the client receives exactly the bytes of a run with no failover, at ${MOMENTS} random moments, and both workers follow every failover`, async () => {
    requireRoot('failover-oracle-workers.test.ts');
    requireBuiltCli();
    const seed = Number(process.env.SHADOWVM_SEED ?? Math.floor(Math.random() * 2 ** 31));
    console.log(`failover oracle (run --workers 2, offloads ${offloads ? 'on' : 'off'}) seed ${seed} (replay with SHADOWVM_SEED=${seed})`);
    lab = buildLab({ prefix: PREFIX, clientReceiveBufferMax: IN_FLIGHT_RECEIVE_BUFFER });
    const l = lab;
    const servers: LabServers = await startLabServers(l);
    serveOnBoth(servers, OBJECT, fixedSeedBytes(OBJECT_BYTES, 0x0a1));
    // TSO and checksum offload: the servers' answers reach the workers' large rings as super-frames. A replica
    // brought back after its death keeps them (its link goes down and up; the device stays).
    if (offloads) for (const n of [l.primary, l.backup, l.client]) await runInAsync(n.netns, 'ethtool', ['-K', n.nsIf, 'tx', 'on', 'sg', 'on', 'tso', 'on', 'gso', 'on'], 10_000);
    await waitUntilQuiet(l);
    const control = join(l.runDir, 'control.sock');
    const agentSocket = join(l.runDir, 'agent.sock');
    bridge = spawnShadowvm(['run', '--name', PREFIX, '--uplink', l.client.hostIf, '--primary', l.primary.hostIf, '--backup', l.backup.hostIf,
      '--agent', agentSocket, '--control', control, '--resync', 'align', '--workers', '2', '--log-level', 'info']);
    await bridge.waitFor(/"event":"started"/, 20_000);
    agent = runLabAgent({
      socketPath: agentSocket, name: `${PREFIX}-lab-agent`, delayMs: 5, reconnectInitialMs: 20,
      rebuildBackup: async (port) => {
        const replica = replicaOfPort(l, servers, port);
        if (!replica) throw new Error(`no lab replica behind port ${String(port)}`);
        await reviveReplicaElsewhere(l, replica);
      },
    });
    const status = async (): Promise<BridgeSnapshot> => {
      const r = await queryControlSocket(control, { cmd: 'status' }, 3000);
      if (!r.ok) throw new Error(`status: ${JSON.stringify(r)}`);
      return r.status;
    };
    const activePort = (s: BridgeSnapshot) => s.replicas.find((r) => r.role === 'primary' || r.role === 'promoted')!.port;
    const target: OracleTarget = {
      lab: l,
      failovers: async () => (await status()).failover.count,
      lastFailover: async () => {
        const last = (await status()).failover.last;
        return last ? { detectionMs: last.detectionToPromotionMs, survivor: last.survivor, record: JSON.stringify(last) } : null;
      },
      protectedAgain: async () => {
        const s = await status();
        return s.state === 'COMPARING' && s.replicas.some((r) => r.role === 'backup') && (s.workers ?? []).every((w) => w.state === 'COMPARING');
      },
      activeNode: async () => (activePort(await status()) === l.primary.hostIf ? l.primary : l.backup),
      kill: (node, mode) => killReplica(l, node, mode),
      describe: async () => {
        const s = await status();
        return `state ${s.state}, workers ${JSON.stringify(s.workers)}, roles ${JSON.stringify(s.replicas)}, failover ${JSON.stringify(s.failover)}\n${bridge!.output().split('\n').filter((x) => /"level":"(warn|error)"/.test(x)).slice(-30).join('\n')}`;
      },
    };
    for (let i = 0; i < 200 && !(await target.protectedAgain().catch(() => false)); i++) await delay(50);
    expect(await target.protectedAgain()).toBe(true);

    async function download(name: string): Promise<Buffer> {
      const out = join(l.runDir, name);
      rmSync(out, { force: true });
      await runInAsync(l.client.netns, 'wget', paced(out, `http://${l.serviceIpv4}/${OBJECT}`, '8m', 30), 40_000);
      return readFileSync(out);
    }
    const reference = await download('reference');
    expect(sha256(reference)).toBe(sha256(fixedSeedBytes(OBJECT_BYTES, 0x0a1)));

    const run = await oracleMoments(target, { moments: MOMENTS, seed, download, reference, pollMs: 5 });
    const after = await status();
    const follows = bridge.output().split('\n').filter((x) => x.includes('"event":"workers-follow"') && x.includes('"change":"failover"'));
    const causes: Record<string, number> = {};
    for (const x of follows) { const c = /"cause":"([a-z]+)"/.exec(x)?.[1] ?? '?'; causes[c] = (causes[c] ?? 0) + 1; }
    const large = after.ports.reduce((n, port) => n + (port.rxLargeFrames ?? 0), 0);
    console.log(`oracle (run --workers 2, offloads ${offloads ? 'on' : 'off'}): ${MOMENTS} failovers (${run.midDownload} in the middle of the download), ${large} super-frames through the large rings (by cause ${JSON.stringify(causes)}), ${describeDetections(run.detectionsMs)}; workers ${JSON.stringify(after.workers)}; coordinator ${JSON.stringify(after.components.workers_coordinator)}`);
    // Deaths in the middle of downloads, not between them (wget paces them: see paced()).
    expect(run.midDownload).toBeGreaterThanOrEqual(Math.ceil(MOMENTS * 0.75));
    if (run.slow.length) console.log(`promotions later than 100 ms after detection:\n${run.slow.join('\n')}`);
    console.log(`detections ms: ${run.detectionsMs.map((x) => x.toFixed(1)).join(" ")}`);
    expect(after.failover.count).toBe(MOMENTS);
    // Every failover promoted the other port (A→B→A→B), was told to the agent once, and both workers made it.
    for (let i = 1; i < run.survivors.length; i++) expect(run.survivors[i]).not.toBe(run.survivors[i - 1]);
    expect(follows).toHaveLength(MOMENTS);
    expect(after.stages.failover.failovers).toBe(2 * MOMENTS);
    if (offloads) expect(large).toBeGreaterThan(MOMENTS);
  });
});
