/** `shadowvm status`: a running bridge's figures, from its control socket. */
import type { Argv } from 'yargs';
import { defaultControlSocketPath, queryControlSocket } from '../../control/control-socket';
import { formatStatus } from '../../control/status-format';
import { UsageError } from '../errors';

export function statusCommand(y: Argv): Argv {
  return y.command(
    'status',
    'show a running bridge: ports, state, flows, matched and released bytes, mismatches, checkpoints',
    (a) => a
      .option('name', { type: 'string', default: 'default', describe: 'name of the protected pair' })
      .option('control', { type: 'string', describe: 'control socket (default /run/shadowvm/NAME/control.sock)' })
      .option('json', { type: 'boolean', default: false })
      .option('watch', { type: 'number', describe: 'refresh every N seconds (Ctrl-C to stop)' }),
    async (args) => {
      const path = args.control ?? defaultControlSocketPath(args.name);
      const once = async () => {
        const reply = await queryControlSocket(path, { cmd: 'status' });
        if (!reply.ok) throw new UsageError(`bridge at ${path}: ${reply.error}`);
        const text = args.json ? JSON.stringify(reply.status, null, 2) : formatStatus(reply.status);
        return text;
      };
      if (!args.watch) {
        process.stdout.write(`${await once()}\n`);
        return;
      }
      const every = Math.max(0.2, args.watch) * 1000;
      for (;;) {
        const text = await once();
        process.stdout.write(`${process.stdout.isTTY ? '\x1b[2J\x1b[H' : ''}${text}\n`);
        await new Promise((r) => setTimeout(r, every));
      }
    },
  );
}
