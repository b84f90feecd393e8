/** `shadowvm lab up|down|demo --kind netns`: the built-in lab. */
import type { Argv } from 'yargs';
import { Logger } from '../../control/logger';
import { formatStatus } from '../../control/status-format';
import { startBridgedLab } from '../../lab/bridged';
import { runLabDemo } from '../../lab/demo';
import { LAB_DEFAULT_PREFIX, findLabLeftovers, teardownLab } from '../../lab/netns';
import { IoBackend } from '../ports';
import { UsageError } from '../errors';

export function labCommand(y: Argv): Argv {
  return y.command(
    'lab <action>',
    'the built-in lab: up (run until Ctrl-C), down (remove leftovers), demo (show the bridge at work)',
    (a) => a
      .positional('action', { choices: ['up', 'down', 'demo'] as const })
      .option('kind', { choices: ['netns'] as const, default: 'netns' as const, describe: 'netns: namespaces and real servers (the QEMU lab comes with the QEMU agent)' })
      .option('prefix', { type: 'string', default: LAB_DEFAULT_PREFIX, describe: 'name prefix of the lab\'s namespaces and interfaces' })
      .option('io', { choices: ['afpacket', 'cap'] as const, default: 'afpacket' as const })
      .option('log-level', { choices: ['debug', 'info', 'warn', 'error'] as const, default: 'warn' as const }),
    async (args) => {
      if (process.getuid && process.getuid() !== 0) throw new UsageError('the lab builds network namespaces: run it as root');
      const logger = new Logger({ level: args['log-level'], fields: { lab: args.prefix } });
      const print = (line: string) => process.stdout.write(`${line}\n`);
      // Ctrl-C while the lab is being built: tear down what exists, synchronously, and leave.
      const prefix = args.prefix;
      const early = () => {
        teardownLab(prefix);
        process.stderr.write(`shadowvm: interrupted while building lab ${prefix}: torn down\n`);
        process.exit(130);
      };
      const untilUp = () => {
        process.off('SIGINT', early);
        process.off('SIGTERM', early);
      };
      try {
        if (args.action === 'down') {
          const left = findLabLeftovers(args.prefix);
          const report = teardownLab(args.prefix);
          print(`lab ${args.prefix}: removed ${left.namespaces.length} namespaces and ${left.links.length} host interfaces${report.failures.length ? `; failures: ${report.failures.join('; ')}` : ''}`);
          return;
        }
        process.on('SIGINT', early);
        process.on('SIGTERM', early);
        if (args.action === 'demo') {
          await runLabDemo({ prefix: args.prefix, io: args.io as IoBackend, print, log: logger.log, onUp: untilUp });
          return;
        }
        const l = await startBridgedLab({ prefix: args.prefix, io: args.io as IoBackend, log: logger.log });
        untilUp();
        print(`lab ${args.prefix} is up; try:`);
        print(`  ip netns exec ${l.lab.client.netns} curl http://${l.lab.serviceIpv4}/hello.txt`);
        print(`  ip netns exec ${l.lab.client.netns} curl 'http://[${l.lab.serviceIpv6}]/hello.txt'`);
        print(`  shadowvm status --control ${l.controlSocket}`);
        print('Ctrl-C tears it down.');
        await new Promise<void>((resolve) => {
          process.once('SIGINT', () => resolve());
          process.once('SIGTERM', () => resolve());
        });
        print(formatStatus(l.bridge.snapshot()));
        await l.stop();
        print('lab torn down');
      } finally {
        untilUp();
        logger.close();
      }
    },
  );
}
