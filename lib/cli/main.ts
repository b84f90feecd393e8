/**
 * The shadowvm command line. `bin/shadowvm` only calls `main(argv)`.
 * Usage errors, unreadable inputs, unknown interfaces, sockets in use: one
 * line on stderr, exit code 2.
 */
import yargs from 'yargs';
import { PcapFormatError } from '../io/pcap-reader';
import { ConfigError } from '../pipeline/config';
import { UsageError } from './errors';
import { replayCommand } from './commands/replay';
import { runCommand } from './commands/run';
import { statusCommand } from './commands/status';
import { failoverCommand } from './commands/failover';
import { agentCommand } from './commands/agent';
import { labCommand } from './commands/lab';
import { setupCommands } from './commands/setup';
import { configCommand } from './commands/config';

export { UsageError };

/** Errors that describe a user's mistake or the machine's state: shown as one line. */
const ONE_LINE_ERRORS = new Set([
  'UsageError', 'PcapFormatError', 'UnsupportedLinkTypeError', 'ConfigError',
  'AfPacketPortError', 'AfPacketNoSuchInterfaceError', 'AfPacketPermissionError', 'AfPacketInterfaceDownError', 'AfPacketAddonError',
  'CapPortError', 'SocketInUseError', 'SocketPathError', 'MetricsBindError', 'ControlSocketError', 'LabAgentOptionError',
  'SetupConfigError', 'SetupPermissionError', 'TeardownIncompleteError', 'LabCommandError', 'LabConfigError',
  'GuestBuildError', 'QemuLabError', 'QemuLaunchError', 'CloneError',
]);

function isOneLine(err: unknown): err is Error {
  return err instanceof UsageError || err instanceof PcapFormatError || err instanceof ConfigError
    || (err instanceof Error && ONE_LINE_ERRORS.has(err.name));
}

export async function main(argv: string[]): Promise<number> {
  let y = yargs(argv).scriptName('shadowvm').usage('$0 <command> [options]');
  for (const add of [setupCommands, runCommand, statusCommand, failoverCommand, agentCommand, labCommand, replayCommand, configCommand]) y = add(y);
  const parser = y
    .demandCommand(1, 'name a command (see --help)')
    .strict()
    .help()
    .version(false)
    .fail((msg, err) => {
      throw err ?? new UsageError(msg.replace(/\s*\n\s*/g, ' '));
    });
  try {
    await parser.parseAsync();
  } catch (err) {
    if (isOneLine(err)) {
      process.stderr.write(`shadowvm: ${err.message.replace(/\s*\n\s*/g, ' ')}\n`);
      return 2;
    }
    throw err;
  }
  // A command that finished but failed (e.g. `run` whose stop hit its deadline) says so here.
  return typeof process.exitCode === 'number' ? process.exitCode : 0;
}
