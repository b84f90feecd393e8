/** `shadowvm config check FILE`: validate a `--config` file and show the settings it yields. */
import type { Argv } from 'yargs';
import { makePipelineConfig } from '../../pipeline/config';
import { readConfigFile } from '../config-file';

export function configCommand(y: Argv): Argv {
  return y.command('config', 'work with --config files', (c) => c
    .command(
      'check <file>',
      'validate a --config file: print "FILE: valid" and the effective settings, or the first bad key (exit 2)',
      (a) => a
        .positional('file', { type: 'string', demandOption: true, describe: 'JSON config file (as given to `run --config`)' })
        .option('json', { type: 'boolean', default: false, describe: 'print only the effective settings, as JSON' }),
      (args) => {
        // Unreadable, not JSON, unknown key or bad value: a one-line error and exit 2 (lib/cli/main.ts).
        const file = readConfigFile(args.file);
        const effective = { ...file.run, ...makePipelineConfig(file.pipeline) };
        const text = JSON.stringify(effective, null, 2);
        process.stdout.write(args.json ? `${text}\n` : `${args.file}: valid\neffective settings (defaults filled in; command-line flags of \`run\` override ports and metrics):\n${text}\n`);
      },
    )
    .demandCommand(1, 'name a config subcommand: check'));
}
