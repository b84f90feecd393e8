/** `shadowvm run`: the live bridge. */
import { readFileSync } from 'node:fs';
import type { Argv } from 'yargs';
import { Bridge } from '../../bridge';
import { makePipelineConfig, PipelineConfig } from '../../pipeline/config';
import { DEFAULT_REPLICATOR_CONFIG } from '../../replicate/replicator';
import { Logger } from '../../control/logger';
import { BridgeSignals } from '../../control/signals';
import { defaultAgentSocketPath } from '../../replicate/agent-protocol';
import { defaultControlSocketPath } from '../../control/control-socket';
import { IoBackend, openPorts } from '../ports';
import { UsageError } from '../errors';
import { LinkWatcher } from '../../io/link-watch';

export function parseHostPort(text: string): { host: string; port: number } {
  const m = /^(\[[^\]]+\]|[^:]+):(\d{1,5})$/.exec(text);
  const port = m ? Number(m[2]) : NaN;
  if (!m || !(port >= 0 && port <= 65535)) throw new UsageError(`--metrics wants HOST:PORT (e.g. 127.0.0.1:9464), got ${JSON.stringify(text)}`);
  return { host: m[1].replace(/^\[|\]$/g, ''), port };
}

export function readConfigFile(path: string): Partial<PipelineConfig> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new UsageError(`cannot read config file ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  try {
    const parsed = JSON.parse(text);
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new Error('not a JSON object');
    return parsed as Partial<PipelineConfig>;
  } catch (e) {
    throw new UsageError(`config file ${path} is not valid: ${(e as Error).message}`);
  }
}

export function runCommand(y: Argv): Argv {
  return y.command(
    'run',
    'bridge an uplink and the two VM interfaces: compare, release what agrees, checkpoint on divergence',
    (a) => a
      .option('uplink', { type: 'string', demandOption: true, describe: 'client-side interface' })
      .option('primary', { type: 'string', demandOption: true, describe: 'interface (tap) of the primary VM' })
      .option('backup', { type: 'string', demandOption: true, describe: 'interface (tap) of the backup VM' })
      .option('name', { type: 'string', default: 'default', describe: 'name of this protected pair (socket paths, logs, metrics)' })
      .option('agent', { type: 'string', describe: 'UNIX socket the sync agent connects to (default /run/shadowvm/NAME/agent.sock)' })
      .option('no-agent', { type: 'boolean', default: false, describe: 'run without a sync agent (DEGRADED: primary output unchecked)' })
      .option('control', { type: 'string', describe: 'control socket (default /run/shadowvm/NAME/control.sock)' })
      .option('metrics', { type: 'string', describe: 'serve Prometheus metrics on HOST:PORT (loopback only)' })
      .option('config', { type: 'string', describe: 'JSON file with pipeline settings (see README)' })
      .option('io', { choices: ['afpacket', 'cap'] as const, default: 'afpacket' as const, describe: 'packet I/O back-end' })
      .option('vnet-hdr', { type: 'boolean', default: true, describe: 'afpacket: exchange virtio-net headers (GSO super-frames and partial checksums pass intact)' })
      .option('busy-poll-us', { type: 'number', default: 0, describe: 'afpacket: poll the rings this many µs after each wake-up before sleeping (lower latency, more CPU)' })
      .option('carrier-watch', { type: 'boolean', default: true, describe: 'promote the backup when the primary\'s port loses carrier (netlink); --no-carrier-watch turns it off' })
      .option('resync', { choices: ['copy', 'align'] as const, describe: 'after a checkpoint: copy (a real agent copied the state) or align (lab agents that cannot)' })
      .option('checkpoint-ms', { type: 'number', describe: 'also checkpoint at least every N ms, as Remus does (replicator.maxIntervalMs; 0: only on divergence)' })
      .option('log-level', { choices: ['debug', 'info', 'warn', 'error'] as const, default: 'info' as const }),
    async (args) => {
      const name = args.name;
      if (!(args['busy-poll-us'] >= 0 && args['busy-poll-us'] <= 10_000)) throw new UsageError('--busy-poll-us must be between 0 and 10000');
      if (!/^[A-Za-z0-9_.-]{1,32}$/.test(name)) throw new UsageError(`--name must be 1-32 letters, digits, '.', '_' or '-', got ${JSON.stringify(name)}`);
      const fileConfig = args.config ? readConfigFile(args.config) : {};
      const checkpointMs = args['checkpoint-ms'];
      if (checkpointMs !== undefined && !(Number.isFinite(checkpointMs) && checkpointMs >= 0)) throw new UsageError(`--checkpoint-ms must be 0 (off) or a positive number of ms, got ${String(checkpointMs)}`);
      const config = makePipelineConfig({
        ...fileConfig,
        ...(args.resync ? { resync: args.resync } : {}),
        ...(checkpointMs !== undefined ? { replicator: { ...DEFAULT_REPLICATOR_CONFIG, ...fileConfig.replicator, maxIntervalMs: checkpointMs } } : {}),
      });
      const metrics = args.metrics ? parseHostPort(args.metrics) : undefined;
      const logger = new Logger({ level: args['log-level'], fields: { bridge: name } });
      // Carrier loss of a VM port is a replica's death (netlink link events; see README, Failover).
      let links: LinkWatcher | undefined;
      if (args['carrier-watch']) {
        try {
          links = LinkWatcher.open();
        } catch (e) {
          throw new UsageError(`cannot watch link carriers: ${(e as Error).message} (or run with --no-carrier-watch: deaths are then seen only by the agent and the silence detector)`);
        }
      }
      let ports;
      try {
        ports = openPorts(args.io as IoBackend, { uplink: args.uplink, primary: args.primary, backup: args.backup }, { vnetHdr: args['vnet-hdr'], busyPollUs: args['busy-poll-us'] });
      } catch (e) {
        links?.close();
        throw e;
      }
      const bridge = new Bridge(ports, {
        name,
        config,
        agentSocket: args['no-agent'] ? undefined : args.agent ?? defaultAgentSocketPath(name),
        controlSocket: args.control ?? defaultControlSocketPath(name),
        metrics,
        log: logger.log,
        links,
      });
      // Listening before start: a SIGHUP or SIGTERM while the sockets open must not kill the process silently.
      const started = bridge.start();
      const signals = new BridgeSignals({
        log: logger.log,
        stop: async () => {
          await started.catch(() => {});
          await bridge.stop();
        },
      });
      try {
        await started;
      } catch (e) {
        signals.dispose();
        links?.close();
        logger.close();
        throw e;
      }
      const outcome = await signals.outcome;
      signals.dispose();
      links?.close();
      logger.close();
      // Anything but a clean stop exits non-zero (bin/shadowvm exits even if handles are left open).
      if (outcome !== 'stopped') process.exitCode = 1;
    },
  );
}
