/**
 * `shadowvm failover`: promote the backup of a running bridge now (a planned
 * switchover, or a primary that the detectors did not see die). Exits 0 once
 * promoted, or once accepted while a checkpoint is in flight (the promotion
 * follows the agent's answer: it says so); 2 with the reason when the bridge
 * refuses (no backup, or a stale one).
 */
import type { Argv } from 'yargs';
import { defaultControlSocketPath, queryControlSocket } from '../../control/control-socket';
import { UsageError } from '../errors';

export function failoverCommand(y: Argv): Argv {
  return y.command(
    'failover',
    'promote the backup of a running bridge now (the primary is treated as dead; the agent rebuilds a backup)',
    (a) => a
      .option('name', { type: 'string', default: 'default', describe: 'name of the protected pair' })
      .option('control', { type: 'string', describe: 'control socket (default /run/shadowvm/NAME/control.sock)' })
      .option('json', { type: 'boolean', default: false }),
    async (args) => {
      const path = args.control ?? defaultControlSocketPath(args.name);
      const reply = await queryControlSocket(path, { cmd: 'failover' });
      if (!reply.ok) throw new UsageError(`bridge at ${path}: ${reply.error}`);
      const f = reply.failover;
      if (args.json) process.stdout.write(`${JSON.stringify(f)}\n`);
      if (f.deferred) {
        if (!args.json) process.stdout.write(`accepted, not yet promoted: ${f.why}\n`);
        return;
      }
      if (!f.promoted) throw new UsageError(`bridge at ${path} refused the failover: ${f.why ?? 'not promoted'}`);
      if (!args.json) process.stdout.write(`promoted ${f.survivor}; roles now ${f.roles.map((r) => `${r.port} ${r.role}`).join(', ')}\n`);
    },
  );
}
