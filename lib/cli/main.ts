/**
 * The shadowvm command line. `bin/shadowvm` only calls `main(argv)`.
 * Usage errors and unreadable inputs: one line on stderr, exit code 2.
 */
import yargs from 'yargs';
import { accessSync, constants } from 'node:fs';
import { runReplay, formatReplayReport } from '../replay';
import { PcapFormatError } from '../io';
import { ConfigError } from '../pipeline';

export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

function readable(path: string, what: string): string {
  try {
    accessSync(path, constants.R_OK);
  } catch {
    throw new UsageError(`cannot read ${what} capture ${path}`);
  }
  return path;
}

export async function main(argv: string[]): Promise<number> {
  let exitCode = 0;
  const parser = yargs(argv)
    .scriptName('shadowvm')
    .usage('$0 <command> [options]')
    .command(
      'replay',
      'run the comparison pipeline on three captures (client, primary, backup) and report the verdicts',
      (y) => y
        .option('client', { type: 'string', demandOption: true, describe: 'frames the client side sent (pcap or pcapng)' })
        .option('primary', { type: 'string', demandOption: true, describe: 'frames the primary VM sent' })
        .option('backup', { type: 'string', demandOption: true, describe: 'frames the backup VM sent' })
        .option('json', { type: 'boolean', default: false, describe: 'print one JSON object' })
        .option('out', { type: 'string', describe: 'write what the client would have received to this pcap' })
        .option('divergence', { type: 'string', describe: 'write one pcapng per mismatch (both sides) into this directory' })
        .option('max-age-ms', { type: 'number', default: 100, describe: 'checkpoint when a primary byte stays unmatched this long' })
        .option('checkpoint-ms', { type: 'number', default: 0, describe: 'simulated agent: how long a checkpoint takes' })
        .option('agent', { choices: ['instant', 'none'] as const, default: 'instant' as const, describe: 'simulated sync agent' }),
      (args) => {
        if (!(args['max-age-ms'] > 0)) throw new UsageError('--max-age-ms must be a positive number');
        if (!(args['checkpoint-ms'] >= 0)) throw new UsageError('--checkpoint-ms must be zero or positive');
        const report = runReplay({
          client: readable(args.client, 'client'),
          primary: readable(args.primary, 'primary'),
          backup: readable(args.backup, 'backup'),
          outPath: args.out,
          divergenceDir: args.divergence,
          agent: args.agent,
          checkpointMs: args['checkpoint-ms'],
          config: { maxUnmatchedAgeMs: args['max-age-ms'] },
        });
        process.stdout.write(args.json ? `${JSON.stringify(report, null, 2)}\n` : `${formatReplayReport(report)}\n`);
      },
    )
    .demandCommand(1, 'name a command: replay')
    .strict()
    .help()
    .version(false)
    .fail((msg, err) => {
      throw err ?? new UsageError(msg.replace(/\s*\n\s*/g, ' '));
    });
  try {
    await parser.parseAsync();
  } catch (err) {
    if (err instanceof UsageError || err instanceof PcapFormatError || err instanceof ConfigError) {
      process.stderr.write(`shadowvm: ${err.message}\n`);
      exitCode = 2;
    } else {
      throw err;
    }
  }
  return exitCode;
}
