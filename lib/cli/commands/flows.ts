/**
 * `shadowvm flows`: a running bridge's flows, most recent last, from its
 * control socket. `--match` finds a connection however many came after it
 * (a piece of its key: an address, `addr:port`, or `:21 `).
 */
import type { Argv } from 'yargs';
import { MAX_FLOWS_LIMIT, MAX_MATCH_LENGTH, defaultControlSocketPath, queryControlSocket } from '../../control/control-socket';
import { formatFlows } from '../../control/status-format';
import { UsageError } from '../errors';

export function flowsCommand(y: Argv): Argv {
  return y.command(
    'flows',
    'list a running bridge\'s flows (most recent last): bytes matched and released, mismatches',
    (a) => a
      .option('name', { type: 'string', default: 'default', describe: 'name of the protected pair' })
      .option('control', { type: 'string', describe: 'control socket (default /run/shadowvm/NAME/control.sock)' })
      .option('match', { type: 'string', describe: 'only flows whose key holds this text (e.g. 10.0.0.1:40000, ":80")' })
      .option('limit', { type: 'number', default: 50, describe: `at most this many (1 to ${MAX_FLOWS_LIMIT})` })
      .option('json', { type: 'boolean', default: false }),
    async (args) => {
      const limit = args.limit;
      if (!Number.isSafeInteger(limit) || limit < 1 || limit > MAX_FLOWS_LIMIT) throw new UsageError(`--limit must be an integer from 1 to ${MAX_FLOWS_LIMIT}, got ${String(args.limit)}`);
      const match = args.match;
      if (match !== undefined && (match.length < 1 || match.length > MAX_MATCH_LENGTH)) throw new UsageError(`--match must be 1 to ${MAX_MATCH_LENGTH} characters`);
      const path = args.control ?? defaultControlSocketPath(args.name);
      const reply = await queryControlSocket(path, { cmd: 'flows', limit, ...(match !== undefined ? { match } : {}) });
      if (!reply.ok) throw new UsageError(`bridge at ${path}: ${reply.error}`);
      process.stdout.write(args.json ? `${JSON.stringify(reply.flows, null, 2)}\n` : `${formatFlows(reply.flows)}\n`);
    },
  );
}
