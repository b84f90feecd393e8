/** `shadowvm run`: the live bridge. */
import { DEFAULT_REALTIME_PRIORITY, platformThreadIds } from '../../dataplane/scheduling';
import { setFlagsFromString } from 'node:v8';
import { readFileSync } from 'node:fs';
import type { Argv } from 'yargs';
import { Bridge, BridgeRoles } from '../../bridge';
import { makePipelineConfig } from '../../pipeline/config';
import { parseHostPort, readConfigFile, RunFileSettings } from '../config-file';
import { DEFAULT_REPLICATOR_CONFIG } from '../../replicate/replicator';
import { Logger } from '../../control/logger';
import { BridgeSignals } from '../../control/signals';
import { defaultAgentSocketPath } from '../../replicate/agent-protocol';
import { defaultControlSocketPath } from '../../control/control-socket';
import { IoBackend, openOneLater, openPorts, usesSendThread } from '../ports';
import { restoreRoles, rolesFileOf, saveRoles } from '../roles-file';
import { UsageError } from '../errors';
import { LinkWatcher } from '../../io/link-watch';
import { ThreadedBridge } from '../../dataplane/threaded-bridge';
import { MAX_SHARDS } from '../../dataplane/shard';
import { availableParallelism } from 'node:os';

/**
 * How far V8 lets the heap grow over its live size before the next full
 * collection. V8's own factor lets a bridge that churns through flows (a
 * flood evicting them) double its heap: 368 MiB peak for a 200,000-flow
 * flood through a 65,536-flow table, against 195 MiB with 20%, at no
 * measurable cost per frame (bench/pipeline) and 8-23% more time to create
 * flows (README, "Memory").
 */
/** --send-thread: auto leaves it to the ports' default (on without virtio-net headers). */
function sendThreadOf(v: 'auto' | 'on' | 'off'): boolean | undefined {
  return v === 'auto' ? undefined : v === 'on';
}

/**
 * V8's tier-up budget for `run` (KiB of bytecode a function runs before
 * V8 considers optimizing it; V8's own is 132). With V8's own, an idle
 * bridge's ICMP path ran unoptimized until some 20,000 pings had passed
 * (rtt-legs, 5 rounds: the answer's leg to the client 67 µs with 16
 * against 108 with V8's own; soak stalls the same).
 */
export const DEFAULT_OPTIMIZE_AFTER_KIB = 16;
/**
 * Inline sends: a flush of at most this many frames, made while the send
 * thread is idle, goes out from the data plane itself...
 */
export const DEFAULT_SEND_INLINE_FRAMES = 8;
/**
 * ...while the bridge takes in at most this many frames a second. An idle
 * ping through the lab is about 300 frames a second taken in; the soak's
 * downloads alone, about 20,000.
 */
export const DEFAULT_SEND_INLINE_MAX_FPS = 2000;

/**
 * Whether V8 may scavenge with its helper threads: as asked, else yes unless
 * the data plane has its own thread, may be realtime, and its helpers stay at
 * the normal policy (--no-realtime-helpers): a scavenge waits for its
 * helpers, and the data plane would then wait behind every busy normal
 * thread of the host.
 */
export function scavengeHelpers(asked: boolean | undefined, dataPlaneThread: boolean, realtime: 'auto' | 'on' | 'off', realtimeHelpers = true): boolean {
  return asked ?? !(dataPlaneThread && realtime !== 'off' && !realtimeHelpers);
}

export const HEAP_GROWING_PERCENT = 20;
/**
 * V8's first old-generation limit, in MiB. With V8's own (a few MiB), the
 * data plane's old space filled during its first seconds under load and was
 * collected at once, not incrementally: a 5-9 ms pause 6 s after start, and
 * 8-12 full collections per soak. With 64: one or two, pauses up to 2.1 ms.
 */
export const INITIAL_OLD_SPACE_MIB = 64;

export { parseHostPort, readConfigFile };

/** A group's id from /etc/group (the group database the bridge's host uses). */
function groupByName(name: string): { gid: number; name: string } {
  let text = '';
  try {
    text = readFileSync('/etc/group', 'utf8');
  } catch (e) {
    throw new UsageError(`--control-group ${name}: cannot read /etc/group: ${(e as Error).message}`);
  }
  for (const line of text.split('\n')) {
    const [n, , gid] = line.split(':');
    if (n === name && /^\d+$/.test(gid ?? '')) return { gid: Number(gid), name };
  }
  throw new UsageError(`--control-group ${name}: no such group in /etc/group`);
}

export function runCommand(y: Argv): Argv {
  return y.command(
    'run',
    'bridge an uplink and the two VM interfaces: compare, release what agrees, checkpoint on divergence',
    (a) => a
      .option('uplink', { type: 'string', describe: 'client-side interface (or "ports": {"uplink": …} in --config)' })
      .option('primary', { type: 'string', describe: 'interface (tap) of the primary VM (or ports.primary in --config)' })
      .option('backup', { type: 'string', describe: 'interface (tap) of the backup VM (or ports.backup in --config)' })
      .option('name', { type: 'string', default: 'default', describe: 'name of this protected pair (socket paths, logs, metrics)' })
      .option('agent', { type: 'string', describe: 'UNIX socket the sync agent connects to (default /run/shadowvm/NAME/agent.sock)' })
      .option('no-agent', { type: 'boolean', default: false, describe: 'run without a sync agent (DEGRADED: primary output unchecked)' })
      .option('control', { type: 'string', describe: 'control socket (default /run/shadowvm/NAME/control.sock)' })
      .option('control-group', { type: 'string', describe: 'a group whose members may use the control socket too (default: root and this user only)' })
      .option('metrics', { type: 'string', describe: 'serve Prometheus metrics on HOST:PORT (loopback only; or "metrics" in --config)' })
      .option('config', { type: 'string', describe: 'JSON file with pipeline settings, ports and metrics (see README; check it with `shadowvm config check`)' })
      .option('io', { choices: ['afpacket', 'cap'] as const, default: 'afpacket' as const, describe: 'packet I/O back-end' })
      .option('vnet-hdr', { type: 'boolean', default: true, describe: 'afpacket: exchange virtio-net headers (GSO super-frames and partial checksums pass intact)' })
      .option('busy-poll-us', { type: 'number', default: 0, describe: 'afpacket: poll the rings this many µs after each wake-up before sleeping (lower latency, more CPU)' })
      .option('send-thread', { choices: ['auto', 'on', 'off'] as const, default: 'auto' as const, describe: 'afpacket: send from a thread of its own, so the kernel work a send does (a veth runs its peer\'s stack) is not time the rings wait; auto: on without --vnet-hdr, off with it' })
      .option('realtime', { choices: ['auto', 'on', 'off'] as const, default: 'auto' as const, describe: 'schedule the data-plane thread (and its send thread) SCHED_RR, ahead of every normal thread on the host, as the kernel\'s own bridge is; the main thread (control, metrics) stays normal. auto: when the kernel allows it (root, RT throttling on), else one warning; on: or do not start' })
      .option('realtime-priority', { type: 'number', default: DEFAULT_REALTIME_PRIORITY, describe: 'SCHED_RR priority for --realtime (1-99)' })
      .option('carrier-watch', { type: 'boolean', default: true, describe: 'promote the backup when the primary\'s port loses carrier (netlink); --no-carrier-watch turns it off' })
      .option('resync', { choices: ['copy', 'align'] as const, describe: 'after a checkpoint: copy (a real agent copied the state) or align (lab agents that cannot)' })
      .option('checkpoint-ms', { type: 'number', describe: 'also checkpoint at least every N ms, as Remus does (replicator.maxIntervalMs; 0: only on divergence)' })
      .option('workers', { type: 'number', describe: 'data-plane threads, each on its share of the flows (the kernel sorts frames by a hash of both ends: a flow, both ways, and both VMs\' answers reach one thread); checkpoints and failovers stay one for all. 1: one thread (the default, or "workers" in --config). Up to the cores the bridge may use; afpacket only' })
      .option('data-plane-thread', { type: 'boolean', default: true, describe: 'move frames on a thread of their own, apart from the control socket and metrics (--no-data-plane-thread: one thread)' })
      .option('send-inline-frames', { type: 'number', default: DEFAULT_SEND_INLINE_FRAMES, describe: 'afpacket, with the send thread: a flush of at most N frames made while that thread is idle and traffic is light (--send-inline-max-fps) is sent by the data plane itself: no hand-off, so lower latency at idle, but the receiving side\'s stack runs on the data plane. 0: every send through the thread' })
      .option('ring-frames', { type: 'number', default: 0, describe: 'afpacket: receive ring slots per port (with split rings: of the ring for MTU-sized frames), kernel memory resident from the start (status shows each ring). 0: 4,096 of 2 KiB with split rings (the default), 512 with --vnet-hdr --no-split-rings (68 KiB slots for GSO super-frames: 34 MiB per port), 8 MiB worth of 2 KiB slots without --vnet-hdr. Fewer: less memory, but a stalled breath overflows the ring sooner (counted in rx drops)' })
      .option('large-ring-frames', { type: 'number', default: 0, describe: 'afpacket with split rings: slots of the ring for GSO super-frames (68 KiB each), per port and per worker. 0: 128 (8.5 MiB a port). Fewer: less kernel memory (each of --workers N has its own rings), less room for a burst of super-frames' })
      .option('split-rings', { type: 'boolean', default: true, describe: 'afpacket with --vnet-hdr: read each port through two rings read as one, 4,096 slots of 2 KiB for frames up to 1,920 bytes and 128 of 68 KiB for GSO super-frames (18 MiB a port); --no-split-rings: one ring of 68 KiB slots (34 MiB a port for 512 slots)' })
      .option('split-rings-fanout', { type: 'boolean', default: true, describe: 'split rings on Linux 6.2+: the two rings\' sockets share a PACKET_FANOUT group, so the kernel offers each frame to one of them (status: "(fanout)"); --no-split-rings-fanout: to both, sorted by their filters (what older kernels get)' })
      .option('send-inline-max-fps', { type: 'number', default: DEFAULT_SEND_INLINE_MAX_FPS, describe: 'the rate gate of --send-inline-frames: inline sends stop at the first 10 ms tick with more than this many frames a second taken in, and start again after 5 ticks in a row at or under it; meanwhile every send goes through the send thread, so a busy receiver\'s stack never runs on the data plane' })
      .option('realtime-helpers', { type: 'boolean', default: true, describe: 'with a realtime data plane, give Node\'s platform threads (V8\'s helpers, whose collection work the data plane waits for) SCHED_RR one step below it; --no-realtime-helpers leaves them at the normal policy' })
      .option('scavenge-helpers', { type: 'boolean', describe: 'let V8 collect the young generation with its helper threads (default: yes, except with a realtime data plane and --no-realtime-helpers, whose scavenges would wait for those normal-policy threads; lab bench: about 7% more 1 KiB req/s with them)' })
      .option('initial-old-space-mib', { type: 'number', default: INITIAL_OLD_SPACE_MIB, describe: 'V8\'s first old-generation limit: below it no full collection is needed (0: V8\'s own, a few MiB, whose first collection comes under load and at once, not incrementally)' })
      .option('optimize-after-kib', { type: 'number', default: DEFAULT_OPTIMIZE_AFTER_KIB, describe: 'V8 considers optimizing a function once it has run about this many KiB of bytecode (V8\'s --interrupt-budget; its own default is 132). Lower: a path that carries few frames (an idle service\'s pings, a rare protocol) runs compiled code after seconds instead of minutes. 0: V8\'s own' })
      .option('heap-growing-percent', { type: 'number', default: HEAP_GROWING_PERCENT, describe: 'let the heap grow this many percent over what is live before a full collection (0: V8\'s own, which may double it)' })
      .option('log-level', { choices: ['debug', 'info', 'warn', 'error'] as const, default: 'info' as const }),
    async (args) => {
      const name = args.name;
      const growing = args['heap-growing-percent'];
      if (!(Number.isInteger(growing) && growing >= 0 && growing <= 1000)) throw new UsageError(`--heap-growing-percent must be a whole number from 0 to 1000, got ${String(growing)}`);
      // Before the data plane allocates anything; V8's flags are the process's, its threads' heaps included.
      if (growing > 0) setFlagsFromString(`--heap-growing-percent=${growing}`);
      const optimizeAfter = args['optimize-after-kib'];
      if (!(Number.isInteger(optimizeAfter) && optimizeAfter >= 0 && optimizeAfter <= 1024)) throw new UsageError(`--optimize-after-kib must be a whole number from 0 to 1024, got ${String(optimizeAfter)}`);
      // Read each time a function's budget is reset: set before the data plane runs any of its code.
      if (optimizeAfter > 0) setFlagsFromString(`--interrupt-budget=${optimizeAfter * 1024}`);
      const oldSpace = args['initial-old-space-mib'];
      if (!(Number.isInteger(oldSpace) && oldSpace >= 0 && oldSpace <= 4096)) throw new UsageError(`--initial-old-space-mib must be a whole number from 0 to 4096, got ${String(oldSpace)}`);
      // Read when a heap is made: the data-plane thread's, made after this, has it.
      if (oldSpace > 0) setFlagsFromString(`--initial-old-space-size=${oldSpace}`);
      if (!(args['busy-poll-us'] >= 0 && args['busy-poll-us'] <= 10_000)) throw new UsageError('--busy-poll-us must be between 0 and 10000');
      const inline = args['send-inline-frames'];
      if (!(Number.isInteger(inline) && inline >= 0 && inline <= 1024)) throw new UsageError(`--send-inline-frames must be a whole number from 0 to 1024, got ${String(inline)}`);
      const maxFps = args['send-inline-max-fps'];
      if (!(Number.isInteger(maxFps) && maxFps >= 0 && maxFps <= 10_000_000)) throw new UsageError(`--send-inline-max-fps must be a whole number from 0 to 10000000, got ${String(maxFps)}`);
      const ringFrames = args['ring-frames'];
      if (!(Number.isInteger(ringFrames) && (ringFrames === 0 || (ringFrames >= 64 && ringFrames <= 1_048_576)))) {
        throw new UsageError(`--ring-frames must be 0 (automatic) or a whole number from 64 to 1048576, got ${String(ringFrames)}`);
      }
      const largeRingFrames = args['large-ring-frames'];
      if (!(Number.isInteger(largeRingFrames) && (largeRingFrames === 0 || (largeRingFrames >= 8 && largeRingFrames <= 4096)))) {
        throw new UsageError(`--large-ring-frames must be 0 (automatic) or a whole number from 8 to 4096, got ${String(largeRingFrames)}`);
      }
      // The gate only means something where sends can go through a send thread.
      const sendThreadOn = usesSendThread(args.io as IoBackend, { vnetHdr: args['vnet-hdr'], sendThread: sendThreadOf(args['send-thread']) });
      const inlineFps = sendThreadOn && inline > 0 ? maxFps : undefined;
      const rtPriority = args['realtime-priority'];
      if (!(Number.isInteger(rtPriority) && rtPriority >= 1 && rtPriority <= 99)) throw new UsageError(`--realtime-priority must be a whole number from 1 to 99, got ${String(rtPriority)}`);
      const file = args.config ? readConfigFile(args.config) : { pipeline: {}, run: { ports: {} } as RunFileSettings };
      const workers = args.workers ?? file.run.workers ?? 1;
      if (!(Number.isInteger(workers) && workers >= 1 && workers <= MAX_SHARDS)) throw new UsageError(`--workers must be a whole number from 1 to ${MAX_SHARDS}, got ${String(workers)}`);
      const realtime = realtimeForWorkers(args.realtime, workers, availableParallelism());
      // A young-generation collection waits for its helpers, V8's platform threads. At the normal policy a
      // realtime data plane would wait behind every busy normal thread of the host (soak, data plane RR:
      // longest scavenge 12.9 and 8.9 ms with helpers, 6.6 and 3.8 ms without): it then scavenges alone.
      // Realtime helpers (the default) scavenge with it (soak: breaths over 5 ms 0, 0, 0 against 5, 1, 1 alone).
      // Set before the data-plane threads' heaps are made.
      if (!scavengeHelpers(args['scavenge-helpers'], args['data-plane-thread'], realtime, args['realtime-helpers'])) setFlagsFromString('--no-parallel-scavenge');
      if (workers > 1 && !args['data-plane-thread']) throw new UsageError('--workers above 1 needs the data-plane thread (--no-data-plane-thread runs one thread)');
      if (workers > 1 && args.io !== 'afpacket') throw new UsageError(`--workers above 1 needs --io afpacket: the ${String(args.io)} ports cannot take a share of the frames`);
      if (args.realtime === 'on' && !args['data-plane-thread']) throw new UsageError('--realtime on needs the data-plane thread: with --no-data-plane-thread the control socket and metrics would run at realtime priority too');
      if (!/^[A-Za-z0-9_.-]{1,32}$/.test(name)) throw new UsageError(`--name must be 1-32 letters, digits, '.', '_' or '-', got ${JSON.stringify(name)}`);
      const checkpointMs = args['checkpoint-ms'];
      if (checkpointMs !== undefined && !(Number.isFinite(checkpointMs) && checkpointMs >= 0)) throw new UsageError(`--checkpoint-ms must be 0 (off) or a positive number of ms, got ${String(checkpointMs)}`);
      const config = makePipelineConfig({
        ...file.pipeline,
        ...(args.resync ? { resync: args.resync } : {}),
        ...(checkpointMs !== undefined ? { replicator: { ...DEFAULT_REPLICATOR_CONFIG, ...file.pipeline.replicator, maxIntervalMs: checkpointMs } } : {}),
      });
      // Flags win over the file.
      const uplink = args.uplink ?? file.run.ports.uplink;
      const primary = args.primary ?? file.run.ports.primary;
      const backup = args.backup ?? file.run.ports.backup;
      const missing = Object.entries({ uplink, primary, backup }).filter(([, v]) => !v).map(([k]) => k);
      if (missing.length) {
        throw new UsageError(`name the ${missing.join(', ')} interface${missing.length > 1 ? 's' : ''}: --${missing.join(', --')}, or "ports": {${missing.map((k) => `"${k}": IF`).join(', ')}} in --config`);
      }
      const metricsAt = args.metrics ?? file.run.metrics;
      const metrics = metricsAt ? parseHostPort(metricsAt) : undefined;
      const logger = new Logger({ level: args['log-level'], fields: { bridge: name } });
      if (realtime !== args.realtime) logger.log('warn', 'realtime-off-for-workers', { workers, cpus: availableParallelism(), note: '--realtime auto: as many realtime data-plane threads as CPUs would leave none for the VMs, the host\'s network stack and the control thread; --realtime on to insist' });
      const agentSocket = args['no-agent'] ? undefined : args.agent ?? defaultAgentSocketPath(name);
      const controlSocket = args.control ?? defaultControlSocketPath(name);
      const controlGroup = args['control-group'] !== undefined ? groupByName(args['control-group']) : undefined;
      // Where the VMs are now, if this pair ran before: an agent that copies into fresh VMs, and every
      // failover, move the roles to other taps (roles-file.ts).
      const rolesFile = rolesFileOf(controlSocket);
      const configured = { primary: primary!, backup: backup! };
      const restored = restoreRoles(rolesFile, name, configured);
      if (restored.note) logger.log(restored.changed ? 'warn' : 'info', restored.changed ? 'roles-restored' : 'roles-file', { file: rolesFile, configured, primary: restored.primary, backup: restored.backup, note: restored.note });
      const ports = { uplink: uplink!, primary: restored.primary, backup: restored.backup };
      const noBackupAtStart = restored.backup === null ? `no backup at start (${restored.note}): the agent is asked for one` : undefined;
      const roles = { file: rolesFile, configured };
      if (args['data-plane-thread']) {
        // The data-plane thread creates the agent socket and cannot set the umask itself: every file this
        // process makes is private (sockets are born 0600, their folders 0700; the control group's are chmodded).
        process.umask(0o077);
        const threaded = new ThreadedBridge({
          init: {
            name, config, ports, roles, noBackupAtStart, io: args.io as IoBackend,
            vnetHdr: args['vnet-hdr'], busyPollUs: args['busy-poll-us'], sendThread: sendThreadOf(args['send-thread']), sendInlineFrames: args['send-inline-frames'], ringFrames, largeRingFrames, splitRings: args['split-rings'], splitRingsFanout: args['split-rings-fanout'], inlineSendsMaxFps: inlineFps, agentSocket, carrierWatch: args['carrier-watch'], logLevel: args['log-level'],
            realtime, realtimePriority: rtPriority,
            // Listed before the data-plane thread exists: every other thread now is Node's platform's.
            helperTids: args['realtime-helpers'] ? platformThreadIds() : [],
          },
          workers, controlSocket, controlGroup, metrics, log: logger.log,
        });
        await runUntilStopped(logger, threaded.start(), () => threaded.stop(), threaded.died);
        return;
      }
      // Carrier loss of a VM port is a replica's death (netlink link events; see README, Failover).
      let links: LinkWatcher | undefined;
      if (args['carrier-watch']) {
        try {
          links = LinkWatcher.open();
        } catch (e) {
          throw new UsageError(`cannot watch link carriers: ${(e as Error).message} (or run with --no-carrier-watch: deaths are then seen only by the agent and the silence detector)`);
        }
      }
      let opened;
      const portOptions = { vnetHdr: args['vnet-hdr'], busyPollUs: args['busy-poll-us'], sendThread: sendThreadOf(args['send-thread']), sendInlineFrames: args['send-inline-frames'], ringFrames, largeRingFrames, splitRings: args['split-rings'], splitRingsFanout: args['split-rings-fanout'], log: logger.log };
      try {
        opened = openPorts(args.io as IoBackend, ports, portOptions);
      } catch (e) {
        links?.close();
        throw e;
      }
      // An agent that puts each new backup behind a fresh tap (or asks for a fresh socket) names it in checkpoint-done.
      const openPort = (ifname: string) => openOneLater(args.io as IoBackend, ifname, portOptions);
      const onRoles = (r: BridgeRoles) => saveRoles(rolesFile, name, configured, r);
      const bridge = new Bridge(opened, { name, config, agentSocket, controlSocket, controlGroup, metrics, log: logger.log, links, openPort, onRoles, noBackupAtStart, inlineSendsMaxFps: inlineFps });
      try {
        await runUntilStopped(logger, bridge.start(), () => bridge.stop());
      } finally {
        links?.close();
      }
    },
  );
}

/**
 * `--realtime auto` with `workers` data-plane threads on a host whose bridge
 * may use `cpus` CPUs: realtime only while a CPU is left over. SCHED_RR on
 * every CPU starves everything else of the host under load (shard-scale, 2
 * workers on 2 CPUs: 1 KiB req/s 0.50-0.56 of one worker's with realtime,
 * 0.69 without). `on` and `off` are the administrator's word.
 */
export function realtimeForWorkers(asked: 'auto' | 'on' | 'off', workers: number, cpus: number): 'auto' | 'on' | 'off' {
  return asked === 'auto' && workers > 1 && workers >= cpus ? 'off' : asked;
}

/**
 * Waits for a stop signal (or the data plane's end), then stops. Signals are
 * listened to before start settles: a SIGHUP or SIGTERM while the sockets
 * open must not kill the process silently. Anything but a clean stop exits
 * non-zero (bin/shadowvm exits even if handles are left open).
 */
async function runUntilStopped(logger: Logger, started: Promise<void>, stop: () => Promise<void>, died?: Promise<number>): Promise<void> {
  const signals = new BridgeSignals({
    log: logger.log,
    stop: async () => {
      await started.catch(() => {});
      await stop();
    },
  });
  try {
    await started;
  } catch (e) {
    signals.dispose();
    logger.close();
    throw e;
  }
  const outcome = await Promise.race([signals.outcome, ...(died ? [died.then(() => 'failed' as const)] : [])]);
  if (outcome === 'failed' && died) await stop().catch(() => {});
  signals.dispose();
  logger.close();
  if (outcome !== 'stopped') process.exitCode = 1;
}
