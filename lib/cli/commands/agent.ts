/** `shadowvm agent lab`: a sync agent for the netns lab (answers checkpoints; cannot copy namespace state). */
import type { Argv } from 'yargs';
import { runLabAgent } from '../../agents/lab-agent';
import { defaultAgentSocketPath } from '../../replicate/agent-protocol';
import { Logger } from '../../control/logger';
import { BridgeSignals } from '../../control/signals';

export function agentCommand(y: Argv): Argv {
  return y.command('agent <kind>', 'run a sync agent', (a) => a
    .positional('kind', { choices: ['lab'] as const, describe: 'lab: answers every checkpoint after a delay (the netns lab)' })
    .option('name', { type: 'string', default: 'default', describe: 'name of the protected pair' })
    .option('socket', { type: 'string', describe: 'the bridge\'s agent socket (default /run/shadowvm/NAME/agent.sock)' })
    .option('delay-ms', { type: 'number', default: 5, describe: 'how long a checkpoint takes' })
    .option('fail-fraction', { type: 'number', default: 0, describe: 'fraction of checkpoints to fail (0..1)' }),
  async (args) => {
    const logger = new Logger({ fields: { agent: 'lab' } });
    const agent = runLabAgent({
      socketPath: args.socket ?? defaultAgentSocketPath(args.name),
      name: `lab-${args.name}`,
      delayMs: args['delay-ms'],
      failFraction: args['fail-fraction'],
      log: logger.log,
    });
    // SIGTERM/SIGINT stop it (with a deadline); SIGHUP, SIGUSR1, SIGUSR2 are logged and ignored.
    const signals = new BridgeSignals({ log: logger.log, stop: () => agent.stop() });
    const outcome = await signals.outcome;
    signals.dispose();
    logger.close();
    if (outcome !== 'stopped') process.exitCode = 1;
  });
}
