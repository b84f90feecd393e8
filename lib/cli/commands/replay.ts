/** `shadowvm replay`: the pipeline on three captures. */
import { accessSync, closeSync, constants, openSync } from 'node:fs';
import type { Argv } from 'yargs';
import { runReplay, formatReplayReport } from '../../replay';
import { UsageError } from '../errors';

function readable(path: string, what: string): string {
  try {
    accessSync(path, constants.R_OK);
  } catch {
    throw new UsageError(`cannot read ${what} capture ${path}`);
  }
  return path;
}

function writable(path: string, what: string): string {
  try {
    closeSync(openSync(path, 'a'));
  } catch (e) {
    throw new UsageError(`cannot write ${what} ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  return path;
}

export function replayCommand(y: Argv): Argv {
  return y.command(
    'replay',
    'run the comparison pipeline on three captures (client, primary, backup) and report the verdicts',
    (a) => a
      .option('client', { type: 'string', demandOption: true, describe: 'frames the client side sent (pcap or pcapng)' })
      .option('primary', { type: 'string', demandOption: true, describe: 'frames the primary VM sent' })
      .option('backup', { type: 'string', demandOption: true, describe: 'frames the backup VM sent' })
      .option('json', { type: 'boolean', default: false, describe: 'print one JSON object' })
      .option('out', { type: 'string', describe: 'write what the client would have received to this pcap' })
      .option('log', { type: 'string', describe: 'write the pipeline\'s JSON log here, stamped with capture time (for shadowvm report)' })
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
        runLogPath: args.log === undefined ? undefined : writable(args.log, 'log'),
        agent: args.agent,
        checkpointMs: args['checkpoint-ms'],
        config: { maxUnmatchedAgeMs: args['max-age-ms'] },
      });
      process.stdout.write(args.json ? `${JSON.stringify(report, null, 2)}\n` : `${formatReplayReport(report)}\n`);
    },
  );
}
