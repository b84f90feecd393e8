/**
 * JSON-lines logger: one object per line,
 * `{"ts":"2024-…Z","level":"warn","event":"mismatch",…fields}`.
 *
 * In:  `log(level, event, fields)` from any stage (the signature matches
 *      `PipelineOutputs.log`, so `logger.log` can be handed over as is).
 * Out: lines on a writable stream (stderr by default).
 *
 * Per-frame events must not flood the log: each event may write at most
 * `perEventPerSecond` lines per one-second window; the rest are counted and
 * one `log-suppressed` line says how many were dropped, when the window is
 * over (on the event's next line, on a timer, or on `flush()`).
 */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
export const LOG_LEVELS: readonly LogLevel[] = ['debug', 'info', 'warn', 'error'];
const RANK: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3 };

/** How modules that only emit events receive a logger. */
export type LogFn = (level: LogLevel, event: string, fields?: Record<string, unknown>) => void;

export const noLog: LogFn = () => {};

export interface LoggerOptions {
  /** Where lines go; default `process.stderr`. */
  stream?: { write(line: string): unknown };
  /** Lines below this level are not written; default `info`. */
  level?: LogLevel;
  /** Lines per event per window before suppression; 0: unlimited. Default 20. */
  perEventPerSecond?: number;
  /** Window length; default 1000 ms. */
  windowMs?: number;
  /** Milliseconds since the epoch; injectable for tests. */
  clock?: () => number;
  /** Emit suppression summaries on a timer as windows end; default true. */
  summaryTimer?: boolean;
  /** Fields on every line (e.g. the bridge name). */
  fields?: Record<string, unknown>;
}

interface EventWindow {
  startMs: number;
  lines: number;
  suppressed: number;
  /** Highest level among the suppressed lines: the summary line gets it. */
  suppressedLevel: LogLevel;
}

/** Bounds the per-event table if callers ever build event names from data. */
const MAX_TRACKED_EVENTS = 4096;

/** Errors, bigints and buffers as something JSON can carry. */
function jsonValue(_key: string, value: unknown): unknown {
  if (value instanceof Error) return { name: value.name, message: value.message };
  if (typeof value === 'bigint') return value.toString();
  if (value instanceof Map) return Object.fromEntries(value);
  if (value instanceof Set) return [...value];
  return value;
}

export class Logger {
  /** Lines dropped by the rate limiter since start. */
  suppressedTotal = 0;
  private readonly stream: { write(line: string): unknown };
  private readonly minRank: number;
  private readonly limit: number;
  private readonly windowMs: number;
  private readonly clock: () => number;
  private readonly useTimer: boolean;
  private readonly base: Record<string, unknown>;
  private readonly windows = new Map<string, EventWindow>();
  private timer: NodeJS.Timeout | null = null;

  constructor(options: LoggerOptions = {}) {
    this.stream = options.stream ?? process.stderr;
    this.minRank = RANK[options.level ?? 'info'];
    this.limit = options.perEventPerSecond ?? 20;
    this.windowMs = options.windowMs ?? 1000;
    this.clock = options.clock ?? Date.now;
    this.useTimer = options.summaryTimer ?? true;
    this.base = options.fields ?? {};
  }

  /** Bound, so it can be passed around as a `LogFn`. */
  readonly log: LogFn = (level, event, fields) => {
    if (RANK[level] < this.minRank) return;
    const now = this.clock();
    if (this.limit > 0 && !this.admit(level, event, now)) return;
    this.write(now, level, event, fields);
  };

  debug(event: string, fields?: Record<string, unknown>): void { this.log('debug', event, fields); }
  info(event: string, fields?: Record<string, unknown>): void { this.log('info', event, fields); }
  warn(event: string, fields?: Record<string, unknown>): void { this.log('warn', event, fields); }
  error(event: string, fields?: Record<string, unknown>): void { this.log('error', event, fields); }

  /** Writes the summaries of windows that have ended (all of them if `all`). */
  flush(all = false): void {
    const now = this.clock();
    for (const [event, w] of this.windows) {
      if (!all && now - w.startMs < this.windowMs) continue;
      this.summarize(event, w, now);
      this.windows.delete(event);
    }
  }

  /** Writes every pending summary and stops the timer. */
  close(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.flush(true);
  }

  private admit(level: LogLevel, event: string, now: number): boolean {
    let w = this.windows.get(event);
    if (w && now - w.startMs >= this.windowMs) {
      this.summarize(event, w, now);
      w = undefined;
    }
    if (!w) {
      if (this.windows.size >= MAX_TRACKED_EVENTS) this.flush();
      if (this.windows.size >= MAX_TRACKED_EVENTS) this.flush(true);
      w = { startMs: now, lines: 0, suppressed: 0, suppressedLevel: 'debug' };
      this.windows.set(event, w);
    }
    if (w.lines < this.limit) {
      w.lines++;
      return true;
    }
    if (w.suppressed++ === 0) this.armTimer(w.startMs + this.windowMs - now);
    if (RANK[level] > RANK[w.suppressedLevel]) w.suppressedLevel = level;
    this.suppressedTotal++;
    return false;
  }

  private summarize(event: string, w: EventWindow, now: number): void {
    if (w.suppressed === 0) return;
    this.write(now, w.suppressedLevel, 'log-suppressed', {
      suppressedEvent: event,
      suppressed: w.suppressed,
      windowStart: new Date(w.startMs).toISOString(),
      limitPerSecond: this.limit,
    });
    w.suppressed = 0;
  }

  private armTimer(delayMs: number): void {
    if (!this.useTimer || this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.flush();
      for (const w of this.windows.values()) {
        if (w.suppressed > 0) {
          this.armTimer(Math.max(1, w.startMs + this.windowMs - this.clock()));
          break;
        }
      }
    }, Math.max(1, delayMs));
    this.timer.unref();
  }

  private write(now: number, level: LogLevel, event: string, fields: Record<string, unknown> | undefined): void {
    const ts = new Date(now).toISOString();
    // Reserved keys first and last: first for their place in the line, last so fields cannot overwrite them.
    const record = Object.assign({ ts, level, event }, this.base, fields, { ts, level, event });
    let line: string;
    try {
      line = JSON.stringify(record, jsonValue);
    } catch (e) {
      line = JSON.stringify({ ts, level, event, logError: `fields not serializable: ${(e as Error).message}` });
    }
    this.stream.write(`${line}\n`);
  }
}
