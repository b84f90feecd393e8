/**
 * The shadowvm command line. `bin/shadowvm` only calls `main(argv)`.
 * Every UserFacingError (usage errors, unreadable inputs, unknown
 * interfaces, sockets in use…): one line on stderr, exit code 2.
 */
import yargs from 'yargs';
import { UsageError, UserFacingError } from './errors';
import { replayCommand } from './commands/replay';
import { runCommand } from './commands/run';
import { statusCommand } from './commands/status';
import { flowsCommand } from './commands/flows';
import { failoverCommand } from './commands/failover';
import { agentCommand } from './commands/agent';
import { labCommand } from './commands/lab';
import { setupCommands } from './commands/setup';
import { reportCommand } from './commands/report';
import { configCommand } from './commands/config';

export { UsageError, UserFacingError };

export async function main(argv: string[]): Promise<number> {
  let y = yargs(argv).scriptName('shadowvm').usage('$0 <command> [options]');
  for (const add of [setupCommands, runCommand, statusCommand, flowsCommand, failoverCommand, agentCommand, labCommand, replayCommand, reportCommand, configCommand]) y = add(y);
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
    // A user's mistake or the machine's state (UserFacingError): one line. Anything else is a bug: its stack.
    if (err instanceof UserFacingError) {
      process.stderr.write(`shadowvm: ${err.message.replace(/\s*\n\s*/g, ' ')}\n`);
      return 2;
    }
    throw err;
  }
  // A command that finished but failed (e.g. `run` whose stop hit its deadline) says so here.
  return typeof process.exitCode === 'number' ? process.exitCode : 0;
}
