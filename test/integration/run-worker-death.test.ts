/**
 * A data-plane thread of `shadowvm run` dies in the middle of downloads, with
 * one worker and with two (`--workers 2`: worker 1, then worker 0, which keeps
 * the roles file and takes manual commands), on the netns lab
 * with the lab agent, each its own process as an administrator runs them.
 * Needs root.
 *
 * What dies: the thread itself, of an exception nothing catches, as a bug in
 * the data plane would end it. run is started with a preload
 * (NODE_OPTIONS=--require, test/support/worker-death.ts) that Node loads in
 * every thread; in the chosen data-plane thread it throws from a timer once
 * the test creates a file. The product has no hook for it.
 *
 * What must follow: run exits with code 1 at once (the other worker does not
 * keep it alive), its log says which worker ended, and it leaves no socket
 * behind. Started again as systemd would (same arguments, same agent, same
 * folder of its roles file), it is protecting again within a second or two:
 * the agent back, every worker COMPARING. The downloads that were in flight
 * stall while no bridge runs (TCP retransmits) and then finish intact: the
 * new bridge takes their flows up in the middle, as if after a checkpoint.
 * A real agent's backup is then a copy of the primary (run-qemu-agent.test.ts
 * restarts one with a download in flight); the lab agent's is not (`--resync
 * align`), so the new bridge cannot know the backup's sequence space for them
 * and lets them go on unprotected from their first frame, without asking a
 * checkpoint for them. New downloads are compared from their handshake and
 * arrive intact.
 */
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { BridgeSnapshot } from '../../lib/control/snapshot';
import { Lab, buildLab, processRunning, waitUntilQuiet } from '../../lib/lab/netns';
import { LabServers, startLabServers } from '../../lib/lab/servers';
import { clientBytesReceived, CliProcess, delay, IN_FLIGHT_RECEIVE_BUFFER, killProcessesAndLabAfterAll, labDownloads, REPO_ROOT, requireBuiltCli, requireRoot, spawnShadowvm, statusOf, statusUntil } from '../support/lab-helpers';

const PREFIX = 'svmwd';
/** The preload, as built (tsc compiles test/ into dist/ with lib/). */
const PRELOAD = join(REPO_ROOT, 'dist', 'test', 'support', 'worker-death.js');
/**
 * In flight across the crash: 6 MiB at 1 MB/s each, so every download spans the death and the restart (checked:
 * each connection has received part of its file). With curl's --limit-rate, some were over before the death.
 */
const IN_FLIGHT = { count: 8, bytes: 6 << 20 };
const AFTER = { count: 4, bytes: 2 << 20 };
/** How soon run must have exited after its thread died. */
const EXIT_WITHIN_MS = 3000;
/** How soon the restarted run must protect again (the agent retries with back-off: up to 1.6 s apart by then). */
const PROTECTING_WITHIN_MS = 10_000;
jest.setTimeout(90_000);

/** `p`'s value, or `late` if it takes more than `ms`. */
async function within<T>(p: Promise<T>, ms: number, late: T): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<T>((resolve) => { timer = setTimeout(() => resolve(late), ms); })]);
  } finally {
    clearTimeout(timer);
  }
}

/** The lines of a JSON log with `event`. */
function events(log: string, event: string): Record<string, unknown>[] {
  return log.split('\n').filter((line) => line.includes(`"event":"${event}"`)).map((line) => JSON.parse(line) as Record<string, unknown>);
}

/** AF_PACKET sockets bound to any of `ifnames` (/proc/net/packet: its Iface column is the ifindex). */
function packetSocketsOn(ifnames: readonly string[]): number {
  const indexes = new Set(ifnames.map((n) => readFileSync(`/sys/class/net/${n}/ifindex`, 'utf8').trim()));
  return readFileSync('/proc/net/packet', 'utf8').split('\n').slice(1).filter((line) => indexes.has(line.trim().split(/\s+/)[4])).length;
}

const ONE_CHECKPOINT = { mismatch: 0, timeout: 0, queue: 0, periodic: 0, manual: 1 };

describe('shadowvm run: a data-plane thread dies in the middle of downloads (netns lab, root)', () => {
  let lab: Lab | undefined;
  let servers: LabServers;
  const processes: CliProcess[] = [];

  beforeAll(async () => {
    requireRoot('run-worker-death.test.ts');
    requireBuiltCli();
    if (!existsSync(PRELOAD)) throw new Error(`${PRELOAD} is missing: build first (npx tsc -p tsconfig.json)`);
    lab = buildLab({ prefix: PREFIX, clientReceiveBufferMax: IN_FLIGHT_RECEIVE_BUFFER });
    servers = await startLabServers(lab);
    await waitUntilQuiet(lab);
  }, 30_000);

  killProcessesAndLabAfterAll(PREFIX, processes);

  it.each([[2, 1], [2, 0], [1, 0]])('--workers %i, worker %i dies: run exits 1 at once and leaves nothing; restarted, it protects again; every download intact', async (workers, dying) => {
    const l = lab!;
    // What a case that failed left running (its restarted bridge, its agent) must not hold the next one's ports.
    for (const p of processes.splice(0)) {
      if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
      await p.exited;
    }
    const dir = join(l.runDir, `workers-${workers}-dies-${dying}`);
    mkdirSync(dir, { mode: 0o700 });
    const control = join(dir, 'control.sock');
    const agentSocket = join(dir, 'agent.sock');
    const dieFile = join(dir, 'die');
    const env = { NODE_OPTIONS: `--require ${PRELOAD}`, SHADOWVM_TEST_DIE_FILE: dieFile, SHADOWVM_TEST_DIE_WORKER: String(dying) };
    const args = ['run', '--name', PREFIX, '--uplink', l.client.hostIf, '--primary', l.primary.hostIf, '--backup', l.backup.hostIf,
      '--agent', agentSocket, '--control', control, '--resync', 'align', '--workers', String(workers), '--log-level', 'info'];
    const protecting = (s: BridgeSnapshot) => s.state === 'COMPARING' && s.agent.connected && (workers === 1 || s.workers?.filter((w) => w.state === 'COMPARING').length === workers);

    const bridge = spawnShadowvm(args, env);
    processes.push(bridge);
    await bridge.waitFor(/"event":"started"/, 20_000);
    const agent = spawnShadowvm(['agent', 'lab', '--name', PREFIX, '--socket', agentSocket, '--delay-ms', '5']);
    processes.push(agent);
    const first = await statusUntil(control, (s) => protecting(s) && s.checkpoints.done >= 1, 10_000);
    expect(first && protecting(first)).toBe(true);
    // Every worker asked for a checkpoint as the agent came; one barrier served them all: one checkpoint.
    expect(first!.checkpoints.requested).toEqual(ONE_CHECKPOINT);
    expect(first!.checkpoints.done).toBe(1);

    const inFlight = labDownloads(l, servers, `w${workers}-`, IN_FLIGHT, 0x300 + 0x10 * workers, 60);
    // Under way, and with two workers on both of them (8 connections all on one worker: odds of 1 in 128).
    const busy = await statusUntil(control, (s) => s.flows.active >= IN_FLIGHT.count && (workers === 1 || s.workers!.every((w) => w.flowsActive > 0)), 5000);
    expect(busy?.workers?.map((w) => w.flowsActive > 0) ?? [true]).toEqual(Array(workers).fill(true));
    const ports = [l.client.hostIf, l.primary.hostIf, l.backup.hostIf];
    expect(packetSocketsOn(ports)).toBeGreaterThan(0);
    await delay(1000);
    // Really in flight: each connection has received only part of its file.
    const received = clientBytesReceived(l);
    expect(received.filter((b) => b > 0 && b < IN_FLIGHT.bytes)).toHaveLength(IN_FLIGHT.count);

    writeFileSync(dieFile, '');
    const diedAt = Date.now();
    const code = await within(bridge.exited, EXIT_WITHIN_MS + 5000, 'still running');
    const exitMs = Date.now() - diedAt;
    const log = bridge.output();
    if (code !== 1) throw new Error(`run ended with ${code} after ${exitMs} ms, not 1; its log:\n${log.slice(-4000)}`);
    expect(exitMs).toBeLessThan(EXIT_WITHIN_MS);
    expect(events(log, 'data-plane-failed').map((e) => e.error)).toEqual([expect.stringContaining('dies as the test asked')]);
    const exited = events(log, 'data-plane-exited');
    expect(exited).toEqual([expect.objectContaining({ level: 'error', code: 1 })]);
    // Named by its index when there are several.
    expect(exited[0].worker).toBe(workers > 1 ? dying : undefined);
    // The other worker was stopped in order, not left to run.
    if (workers > 1) expect(events(log, 'stopped').map((e) => e.worker)).toEqual([1 - dying]);
    // Nothing left: the process, its sockets' files, its packet sockets.
    expect(processRunning(bridge.child.pid!)).toBe(false);
    expect([existsSync(control), existsSync(agentSocket)]).toEqual([false, false]);
    expect(packetSocketsOn(ports)).toBe(0);

    // systemd's restart: the same command, environment and agent; the thread's bug does not strike twice.
    rmSync(dieFile);
    const restartedAt = Date.now();
    const again = spawnShadowvm(args, env);
    processes.push(again);
    const back = await statusUntil(control, (s) => protecting(s) && s.checkpoints.done >= 1, PROTECTING_WITHIN_MS);
    const restartMs = Date.now() - restartedAt;
    if (!back || !protecting(back)) throw new Error(`the restarted run is not protecting (status ${JSON.stringify(back)}); its log:\n${again.output().slice(-4000)}`);
    expect(back.checkpoints.done).toBeGreaterThanOrEqual(1);
    expect(back.workers?.map((w) => w.index) ?? [0]).toEqual(Array.from({ length: workers }, (_, i) => i));

    // The downloads in flight across the crash and the restart: whole and intact.
    await inFlight.done;
    const resumed = await statusOf(control);
    // Taken up unprotected (each worker's flow stage counts its own), and no checkpoint asked for them: only the
    // start-up one. Before, each asked checkpoints until its client's budget ran out (20-41 per restart).
    expect(resumed!.stages.flow.midstream_unprotected).toBeGreaterThanOrEqual(IN_FLIGHT.count);
    expect(resumed!.checkpoints.requested.mismatch + resumed!.checkpoints.requested.timeout).toBe(0);
    // New downloads: compared from their handshake (bytes agreed by both VMs), intact. They stay protected (none
    // goes on unprotected) and their bytes are compared; a checkpoint meanwhile (a backup late on this loaded
    // machine; CI once: 63 KB of 8 MiB) releases what it holds uncompared, so that part is reported, not failed.
    const fresh = labDownloads(l, servers, `n${workers}-`, AFTER, 0x500 + 0x10 * workers, 60);
    await fresh.done;
    const after = await statusUntil(control, (s) => s.bytesMatched - resumed!.bytesMatched >= AFTER.count * AFTER.bytes, 3000);
    const compared = after!.bytesMatched - resumed!.bytesMatched;
    if (compared < AFTER.count * AFTER.bytes) {
      const why = again.output().split('\n').filter((line) => /"event":"(backup-late|mismatch|state|checkpoint-done|over-budget|client-reset-released)"/.test(line));
      console.log(`new downloads: ${compared} bytes compared of ${AFTER.count * AFTER.bytes}; checkpoints ${JSON.stringify(after!.checkpoints.requested)} `
        + `(after the in-flight ones: ${JSON.stringify(resumed!.checkpoints.requested)}); compare stage ${JSON.stringify(after!.stages.compare)}; log:\n${why.slice(-40).join('\n')}`);
    }
    expect(compared).toBeGreaterThanOrEqual(0.9 * AFTER.count * AFTER.bytes);
    // (Taken up mid-stream meanwhile: only the backup's copies of earlier connections, retransmitting.)
    const unprotectedNew = (x: BridgeSnapshot) => x.stages.flow.unprotected - x.stages.flow.midstream_unprotected;
    expect(unprotectedNew(after!)).toBe(unprotectedNew(resumed!));
    expect(after!.checkpoints.requested.mismatch).toBe(0);
    expect(after!.state).toBe('COMPARING');

    console.log(`run --workers ${workers}, worker ${dying} died: exit 1 after ${exitMs} ms; restart to COMPARING (agent back, ${workers} worker(s)) ${restartMs} ms; `
      + `${IN_FLIGHT.count} downloads in flight intact (the new bridge meanwhile: ${resumed!.flows.created} flows taken up or made, ${resumed!.failover.flowsUnprotected} unprotected, ${resumed!.checkpoints.done} checkpoints); `
      + `${AFTER.count} new downloads compared and intact`);

    // A clean stop afterwards is a clean exit.
    again.child.kill('SIGTERM');
    expect(await again.exited).toBe(0);
    agent.child.kill('SIGTERM');
    await agent.exited;
  });
});
