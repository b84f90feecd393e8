/**
 * A JSON-lines log written to a file, in the Logger's shape: what
 * `shadowvm replay --log` and the lab demo write for `shadowvm report`.
 */
import { closeSync, openSync, writeSync } from 'node:fs';
import { LogFn, Logger, LoggerOptions } from '../control/logger';

export interface RunLogFile {
  readonly path: string;
  readonly log: LogFn;
  /** Writes pending suppression summaries and closes the file. Idempotent. */
  close(): void;
}

/** Opens (truncates) `path`; lines are written synchronously, so nothing is lost if the process ends abruptly. */
export function openRunLogFile(path: string, options: Omit<LoggerOptions, 'stream'> = {}): RunLogFile {
  const fd = openSync(path, 'w', 0o600);
  let open = true;
  const logger = new Logger({ summaryTimer: false, ...options, stream: { write: (line: string) => (open ? writeSync(fd, line) : 0) } });
  return {
    path,
    log: logger.log,
    close: () => {
      if (!open) return;
      logger.close();
      open = false;
      closeSync(fd);
    },
  };
}

/** A LogFn that hands every line to each of `fns`. */
export function teeLog(...fns: (LogFn | undefined)[]): LogFn {
  const all = fns.filter((f): f is LogFn => !!f);
  return (level, event, fields) => {
    for (const f of all) f(level, event, fields);
  };
}
