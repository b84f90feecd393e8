/**
 * The data-plane thread of `shadowvm run`: it opens the ports and the
 * carrier watch, runs the Bridge (pipeline, agent link, timers) and answers
 * the main thread's calls. The control socket and the metrics server live on
 * the main thread, so no control or metrics client (reading slowly,
 * pipelining, holding connections) can take this thread's time beyond the
 * calls the main thread makes, which it coalesces (threaded-bridge.ts).
 */
import { parentPort, workerData } from 'node:worker_threads';
import { Bridge, BridgeOptions, BridgeRoles } from '../bridge';
import { openOneLater, openPorts } from '../cli/ports';
import { saveRoles } from '../cli/roles-file';
import { Logger } from '../control/logger';
import { UserFacingError } from '../errors';
import { LinkWatcher } from '../io/link-watch';
import { wallClockUs } from '../io/frame-wait';
import { loadAfPacketAddon } from '../io/afpacket-native';
import { applyDataPlaneScheduling, applyHelperScheduling, DataPlaneScheduling, readRtRuntimeUs, RealtimeRefusedError } from './scheduling';
import type { DataPlaneInit, FromDataPlane, FromWorker, ToDataPlane, ToWorker } from './protocol';
import { RelayAgentLink } from './relay-agent-link';

/** A carrier watch that cannot open: the same advice as the in-process path. */
class CarrierWatchError extends UserFacingError {}

/** Names this thread and applies --realtime; an addon that cannot load is a refusal like the kernel's. */
function schedule(init: DataPlaneInit, logger: Logger): DataPlaneScheduling | undefined {
  let addon;
  try {
    addon = loadAfPacketAddon();
  } catch (e) {
    if (init.realtime === 'on') throw new RealtimeRefusedError(`--realtime on: ${(e as Error).message}`);
    if (init.realtime === 'auto') logger.log('warn', 'realtime-unavailable', { reason: (e as Error).message });
    return undefined;
  }
  const s = applyDataPlaneScheduling(init.realtime, init.realtimePriority, { setThreadScheduling: addon.setThreadScheduling, rtRuntimeUs: () => readRtRuntimeUs(), log: logger.log });
  return applyHelperScheduling(s, init.helperTids, { setTaskScheduling: addon.setTaskScheduling, log: logger.log });
}

function post(m: FromDataPlane): void {
  parentPort!.postMessage(m);
}

/** One of `run --workers`' data-plane workers: its agent link is a relay to the coordinator, and it reports its role changes there. */
function coordinated(index: number, made: (relay: RelayAgentLink) => void): Pick<BridgeOptions, 'agentLink' | 'onRoleChange'> {
  const toCoordinator = (m: FromWorker) => post({ type: 'coord', m });
  return {
    agentLink: (listener) => {
      const relay = new RelayAgentLink(toCoordinator, listener);
      made(relay);
      return relay;
    },
    onRoleChange: (ev, generation) => {
      if (ev.type === 'failover') toCoordinator({ type: 'roles', generation, change: { type: 'failover', cause: ev.record.cause, detail: `worker ${index}: ${ev.record.detail}`, survivor: ev.record.survivor } });
      else if (ev.type === 'backup-lost') toCoordinator({ type: 'roles', generation, change: { type: 'backup-lost', cause: `worker ${index}: ${ev.cause}` } });
    },
  };
}

function fromCoordinator(bridge: Bridge, relay: RelayAgentLink | null, m: ToWorker): void {
  switch (m.type) {
    case 'agent': relay?.receive(m.word); return;
    case 'join': bridge.joinBarrier(m.kind, m.reason, m.flow, (ok) => post({ type: 'coord', m: { type: 'joined', kind: m.kind, ok } })); return;
    case 'follow': bridge.followRoleChange(m.generation, m.change);
  }
}

async function main(init: DataPlaneInit): Promise<void> {
  const logger = new Logger({ level: init.logLevel, fields: { bridge: init.name, ...(init.shard ? { worker: init.shard.index } : {}) } });
  let links: LinkWatcher | undefined;
  let bridge: Bridge;
  let relay: RelayAgentLink | null = null;
  try {
    if (init.carrierWatch) {
      try {
        links = LinkWatcher.open();
      } catch (e) {
        throw new CarrierWatchError(`cannot watch link carriers: ${(e as Error).message} (or run with --no-carrier-watch: deaths are then seen only by the agent and the silence detector)`);
      }
    }
    // Before the ports open: their send thread inherits the policy.
    const scheduling = schedule(init, logger);
    const portOptions = { vnetHdr: init.vnetHdr, busyPollUs: init.busyPollUs, sendThread: init.sendThread, sendInlineFrames: init.sendInlineFrames, ringFrames: init.ringFrames, largeRingFrames: init.largeRingFrames, splitRings: init.splitRings, splitRingsFanout: init.splitRingsFanout, shard: init.shard, log: logger.log };
    const ports = openPorts(init.io, init.ports, portOptions);
    // The new backup's port, named by the agent at a checkpoint: opened on the thread pool, not on this thread.
    const openPort = (ifname: string) => openOneLater(init.io, ifname, portOptions);
    const roles = init.roles;
    const onRoles = roles ? (r: BridgeRoles) => saveRoles(roles.file, init.name, roles.configured, r) : undefined;
    const workerOptions = init.shard ? coordinated(init.shard.index, (l) => { relay = l; }) : {};
    bridge = new Bridge(ports, { name: init.name, config: init.config, agentSocket: init.agentSocket, log: logger.log, links, startedEvent: 'data-plane-started', scheduling, openPort, onRoles, noBackupAtStart: init.noBackupAtStart, inlineSendsMaxFps: init.inlineSendsMaxFps, shard: init.shard, ...workerOptions });
    await bridge.start();
  } catch (e) {
    links?.close();
    post({ type: 'start-failed', message: (e as Error).message, userFacing: e instanceof UserFacingError });
    logger.close();
    return;
  }
  parentPort!.on('message', async (m: ToDataPlane) => {
    if (m.type === 'coord') {
      fromCoordinator(bridge, relay, m.m);
      return;
    }
    if (m.type === 'stop') {
      void bridge.stop().finally(() => {
        links?.close();
        logger.close();
        post({ type: 'stopped' });
        parentPort!.close();
      });
      return;
    }
    try {
      let value: unknown;
      let t0 = wallClockUs();
      switch (m.op) {
        case 'snapshot': value = bridge.snapshot(); break;
        case 'checkpoint': value = bridge.requestCheckpoint(); break;
        case 'failover': value = bridge.requestFailover(); break;
        case 'flows':
          value = await bridge.listFlows(m.limit ?? 100, m.match);
          t0 = wallClockUs(); // the listing gave way to frames between its slices; what follows does not
          break;
      }
      post({ type: 'reply', id: m.id, ok: true, json: JSON.stringify(value) });
      bridge.noteTask(`control ${m.op}`, t0, wallClockUs());
    } catch (e) {
      post({ type: 'reply', id: m.id, ok: false, error: (e as Error).message });
    }
  });
  post({ type: 'started' });
}

if (parentPort) void main(workerData as DataPlaneInit);
