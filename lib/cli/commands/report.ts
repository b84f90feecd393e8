/** `shadowvm report`: one self-contained HTML picture of a run, from a bridge's JSON log or from three captures. */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import type { Argv } from 'yargs';
import { runReplay } from '../../replay';
import { reportFromLog, RunLogError } from '../../report';
import { UsageError } from '../errors';

function readText(path: string, what: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (e) {
    throw new UsageError(`cannot read ${what} ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

/** The log of a replay of three captures, stamped with capture time. */
function replayLog(client: string, primary: string, backup: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'shadowvm-report-'));
  try {
    const path = join(dir, 'replay.log');
    for (const [p, what] of [[client, 'client'], [primary, 'primary'], [backup, 'backup']]) readText(p, `${what} capture`);
    runReplay({ client, primary, backup, runLogPath: path });
    return readFileSync(path, 'utf8');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export function reportCommand(y: Argv): Argv {
  return y.command(
    'report',
    'write one self-contained HTML file with a timeline of a run: from a bridge\'s JSON log (--log), or from a replay of three captures',
    (a) => a
      .option('log', { type: 'string', describe: 'the bridge\'s JSON log (its stderr, or `shadowvm replay --log`)' })
      .option('client', { type: 'string', describe: 'instead of --log: replay these captures (with --primary and --backup)' })
      .option('primary', { type: 'string', describe: 'frames the primary VM sent (with --client)' })
      .option('backup', { type: 'string', describe: 'frames the backup VM sent (with --client)' })
      .option('out', { type: 'string', demandOption: true, describe: 'the HTML file to write' })
      .option('title', { type: 'string', describe: 'the report\'s title (default: from the input)' })
      .option('width', { type: 'number', default: 1200, describe: 'timeline width in pixels' }),
    (args) => {
      const captures = [args.client, args.primary, args.backup];
      const replay = captures.some((c) => c !== undefined);
      if (replay && args.log) throw new UsageError('give either --log or the three captures (--client, --primary, --backup), not both');
      if (replay && captures.some((c) => c === undefined)) throw new UsageError('a replay needs all three captures: --client, --primary and --backup');
      if (!replay && !args.log) throw new UsageError('name the run: --log FILE, or --client/--primary/--backup captures');
      if (!(args.width >= 600 && args.width <= 20_000)) throw new UsageError('--width must be between 600 and 20000 pixels');
      const text = replay ? replayLog(args.client!, args.primary!, args.backup!) : readText(args.log!, 'log');
      const title = args.title ?? (replay ? `shadowvm replay of ${basename(args.client!)}` : `shadowvm run: ${basename(args.log!)}`);
      let html: string;
      try {
        html = reportFromLog(text, title, { width: args.width });
      } catch (e) {
        if (e instanceof RunLogError) throw new UsageError(`${replay ? 'the replay' : args.log}: ${e.message}`);
        throw e;
      }
      try {
        writeFileSync(args.out, html);
      } catch (e) {
        throw new UsageError(`cannot write ${args.out}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
      }
      process.stdout.write(`report written to ${args.out}\n`);
    },
  );
}
