/** `shadowvm setup` / `shadowvm teardown`: the host plumbing of a protected pair. */
import type { Argv } from 'yargs';
import { applySetup, applyTeardown, setupStatus } from '../../setup';
import type { SetupOptions } from '../../setup';
import { UsageError } from '../errors';

const log = (line: string) => process.stdout.write(`${line}\n`);

export function setupCommands(y: Argv): Argv {
  return y
    .command(
      'setup',
      'create the host plumbing of a protected pair: VM taps and the uplink (no addresses, offloads and sysctls as the data path needs)',
      (a) => a
        .option('name', { type: 'string', demandOption: true, describe: 'pair name (≤ 8 characters): interfaces are svm-NAME-p|b|u|h' })
        .option('bridge', { type: 'string', describe: 'join the host network through this Linux bridge (a veth pair is created)' })
        .option('uplink', { type: 'string', describe: 'or use this existing interface as the uplink (configured, never deleted)' })
        .option('io', { choices: ['afpacket', 'cap'] as const, default: 'afpacket' as const, describe: 'the I/O back-end shadowvm run will use' })
        .option('tap-owner', { type: 'string', describe: 'user[:group] that may open the taps (an unprivileged QEMU)' })
        .option('mtu', { type: 'number', describe: 'MTU of the pair (default: the bridge\'s or uplink\'s)' })
        .option('vnet-hdr', { type: 'boolean', default: true, describe: 'taps with virtio-net headers (offloads stay on)' })
        .option('flush-uplink', { type: 'boolean', default: false, describe: 'remove the addresses of an existing --uplink (else refused)' })
        .option('dry-run', { type: 'boolean', default: false, describe: 'print the ip/ethtool/sysctl commands, change nothing' })
        .option('status', { type: 'boolean', default: false, describe: 'show what exists of the pair' })
        .option('json', { type: 'boolean', default: false }),
      (args) => {
        if (args.status) {
          const s = setupStatus(args.name);
          log(args.json ? JSON.stringify(s, null, 2) : `${s.name}: ${s.state}${s.pair ? ` (uplink ${s.pair.uplink}, primary ${s.pair.primary}, backup ${s.pair.backup})` : ''}`);
          return;
        }
        if (!args.bridge === !args.uplink) throw new UsageError('give exactly one of --bridge BR (a veth pair joins it) or --uplink IF (an existing interface)');
        const opts: SetupOptions = {
          name: args.name,
          bridge: args.bridge,
          uplink: args.uplink,
          io: args.io,
          tapOwner: args['tap-owner'],
          mtu: args.mtu,
          vnetHdr: args['vnet-hdr'],
          flushUplink: args['flush-uplink'],
        };
        const result = applySetup(opts, log, { dryRun: args['dry-run'] });
        if (!args['dry-run']) {
          const i = result.interfaces;
          log(`run it with: shadowvm run --name ${args.name} --uplink ${i.uplink} --primary ${i.primary} --backup ${i.backup}${args.io === 'cap' ? ' --io cap' : ''}`);
        }
      },
    )
    .command(
      'teardown',
      'remove what setup created for a pair (only interfaces it marked as its own) and put a user\'s own --uplink back as setup found it',
      (a) => a
        .option('name', { type: 'string', demandOption: true })
        .option('dry-run', { type: 'boolean', default: false }),
      (args) => {
        applyTeardown(args.name, log, { dryRun: args['dry-run'] });
      },
    );
}
