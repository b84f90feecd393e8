/** `shadowvm lab up|down|demo --kind netns|qemu`: the built-in labs. */
import type { Argv } from 'yargs';
import { Logger } from '../../control/logger';
import { formatStatus } from '../../control/status-format';
import { startBridgedLab } from '../../lab/bridged';
import { QEMU_LAB_MEM_SIZES, QemuLabMem, startQemuLab } from '../../lab/qemu/pair';
import { qemuSyncAgent } from '../../lab/qemu/agent';
import { runQemuDemo } from '../../lab/qemu/demo';
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
      .option('kind', { choices: ['netns', 'qemu'] as const, default: 'netns' as const, describe: 'netns: namespaces and real servers; qemu: two tiny VMs (the second a copy of the first)' })
      .option('mem', { type: 'number', choices: [...QEMU_LAB_MEM_SIZES], default: 128, describe: 'QEMU lab: guest RAM in MiB' })
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
          print(`lab ${args.prefix}: removed ${left.namespaces.length} namespaces and ${left.links.length} host interfaces${left.processes.length ? ` (and killed ${left.processes.length} processes)` : ''}${report.failures.length ? `; failures: ${report.failures.join('; ')}` : ''}`);
          return;
        }
        process.on('SIGINT', early);
        process.on('SIGTERM', early);
        if (args.action === 'demo' && args.kind === 'qemu') {
          const r = await runQemuDemo({ prefix: args.prefix, memMiB: Number(args.mem) as QemuLabMem, io: args.io as IoBackend, print, log: logger.log, onUp: untilUp });
          if (!r.ftpIntact || !r.counterRepaired) process.exitCode = 1;
          return;
        }
        if (args.action === 'demo') {
          await runLabDemo({ prefix: args.prefix, io: args.io as IoBackend, print, log: logger.log, onUp: untilUp });
          return;
        }
        if (args.kind === 'qemu') {
          const q = await startQemuLab({ prefix: args.prefix, memMiB: Number(args.mem) as QemuLabMem, io: args.io as IoBackend, log: logger.log, agent: qemuSyncAgent() });
          untilUp();
          print(`QEMU lab ${args.prefix} is up: ${q.memMiB} MiB guests under ${q.accel.accel.toUpperCase()} (${q.accel.reason})`);
          print(`  first VM booted in ${q.bootMs} ms; copied into the second in ${q.clone.ms} ms (${(q.clone.bytes / 1e6).toFixed(1)} MB)`);
          print(`  VMs: ${q.vms.primary.name} on ${q.taps.primary} (pid ${q.vms.primary.pid}), ${q.vms.backup.name} on ${q.taps.backup} (pid ${q.vms.backup.pid}); QMP for an agent: ${q.vms.primary.agentQmpSocket}, ${q.vms.backup.agentQmpSocket}`);
          print('try:');
          print(`  ip netns exec ${q.client.netns} curl http://${q.serviceIpv4}/hello.txt`);
          print(`  ip netns exec ${q.client.netns} curl http://${q.serviceIpv4}/cgi-bin/counter`);
          print(`  ip netns exec ${q.client.netns} lftp -c 'open ftp://${q.serviceIpv4}; ls'`);
          print(`  shadowvm status --control ${q.controlSocket}`);
          print('Ctrl-C tears it down.');
          await new Promise<void>((resolve) => {
            process.once('SIGINT', () => resolve());
            process.once('SIGTERM', () => resolve());
          });
          print(formatStatus(q.bridge.snapshot()));
          await q.stop();
          print('lab torn down');
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
