/** `shadowvm agent lab|qemu`: the sync agents, each as its own process. */
import type { Argv } from 'yargs';
import { runLabAgent } from '../../agents/lab-agent';
import { runQemuAgentFromConfig } from '../../agents/qemu-attach';
import { defaultAgentSocketPath } from '../../replicate/agent-protocol';
import { Logger } from '../../control/logger';
import { BridgeSignals } from '../../control/signals';
import { UsageError } from '../errors';

export function agentCommand(y: Argv): Argv {
  return y.command('agent <kind>', 'run a sync agent', (a) => a
    .positional('kind', { choices: ['lab', 'qemu'] as const, describe: 'lab: answers every checkpoint after a delay (the netns lab); qemu: copies the primary VM into a fresh backup VM at every checkpoint' })
    .option('name', { type: 'string', default: 'default', describe: 'name of the protected pair' })
    .option('socket', { type: 'string', describe: 'the bridge\'s agent socket (default /run/shadowvm/NAME/agent.sock; qemu: from the config)' })
    .option('config', { type: 'string', describe: 'qemu: the VMs, their spare QMP sockets and the standby template (JSON; the QEMU lab writes one as lab.json)' })
    .option('sync', { type: 'string', describe: 'qemu: auto (the default: colo where it can run, else full-copy; logged), full-copy (a full copy into a fresh VM at every checkpoint) or colo (QEMU COLO checkpoints into one secondary: only dirtied pages; needs the patched QEMU, make qemu-colo); wins over the config\'s "sync"' })
    .option('delay-ms', { type: 'number', default: 5, describe: 'lab: how long a checkpoint takes' })
    .option('fail-fraction', { type: 'number', default: 0, describe: 'lab: fraction of checkpoints to fail (0..1)' }),
  async (args) => {
    const logger = new Logger({ fields: { agent: args.kind } });
    let stop: () => Promise<void>;
    if (args.kind === 'qemu') {
      if (!args.config) throw new UsageError('agent qemu needs --config FILE (the QEMU lab writes one: <runDir>/lab.json)');
      const agent = await runQemuAgentFromConfig(args.config, { log: logger.log, sync: args.sync });
      stop = () => agent.stop();
    } else {
      const agent = runLabAgent({
        socketPath: args.socket ?? defaultAgentSocketPath(args.name),
        name: `lab-${args.name}`,
        delayMs: args['delay-ms'],
        failFraction: args['fail-fraction'],
        log: logger.log,
      });
      stop = () => agent.stop();
    }
    // SIGTERM/SIGINT stop it (with a deadline); SIGHUP, SIGUSR1, SIGUSR2 are logged and ignored.
    const signals = new BridgeSignals({ log: logger.log, stop: () => stop() });
    const outcome = await signals.outcome;
    signals.dispose();
    logger.close();
    if (outcome !== 'stopped') process.exitCode = 1;
  });
}
