/**
 * A QMP client over a UNIX socket.
 *
 *   connect ──► greeting ──► qmp_capabilities ──► execute(cmd, args) ⇄ {return|error, id}
 *                                                 events ──► 'event' / events()
 *
 * Every command carries an id and a timeout; replies are matched by id, so
 * events may come between them. When the socket closes (QEMU died, or closed
 * it mid-message) every pending command rejects with QmpClosedError and the
 * client emits 'close' once. A line that is not JSON is logged and counted,
 * never fatal: QEMU's next reply still finds its command.
 */
import { EventEmitter } from 'node:events';
import { connect, Socket } from 'node:net';
import { LogFn, noLog } from '../control/logger';

export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
  timestamp: { seconds: number; microseconds: number };
}

export interface QmpGreeting {
  version: { qemu: { major: number; minor: number; micro: number }; package: string };
  capabilities: string[];
}

/** QEMU answered a command with an error. */
export class QmpCommandError extends Error {
  constructor(readonly command: string, readonly errorClass: string, readonly desc: string, readonly socketPath: string) {
    super(`QMP ${command} on ${socketPath} failed: ${errorClass}: ${desc}`);
    this.name = 'QmpCommandError';
  }
}

/** QEMU did not answer in time (the command may still run). */
export class QmpTimeoutError extends Error {
  constructor(readonly command: string, readonly timeoutMs: number, readonly socketPath: string) {
    super(`QMP ${command} on ${socketPath}: no answer within ${timeoutMs} ms`);
    this.name = 'QmpTimeoutError';
  }
}

/** The socket closed (or could not be opened) before the answer came. */
export class QmpClosedError extends Error {
  constructor(readonly command: string, readonly socketPath: string, readonly reason: string) {
    super(`QMP ${command} on ${socketPath}: connection closed (${reason})`);
    this.name = 'QmpClosedError';
  }
}

export interface QmpConnectOptions {
  /** Whole connect + greeting + qmp_capabilities budget; default 5000 ms. */
  timeoutMs?: number;
  /** Keep retrying connect() while the socket is absent or refuses (QEMU still starting); default true. */
  retry?: boolean;
  /** Default timeout of execute(); default 10000 ms. */
  commandTimeoutMs?: number;
  /** Stops the retrying (QEMU died during start-up): connect rejects at once. */
  signal?: AbortSignal;
  /** Named in log lines. */
  name?: string;
  log?: LogFn;
}

export interface QmpCounters {
  commands: number;
  errors: number;
  timeouts: number;
  events: number;
  /** Lines that were not JSON objects, or replies to no pending command. */
  badLines: number;
}

interface Pending {
  command: string;
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

/** Frames ≥ this without a newline mean the peer is not QEMU. */
const MAX_LINE = 16 << 20;

export class QmpClient extends EventEmitter {
  readonly counters: QmpCounters = { commands: 0, errors: 0, timeouts: 0, events: 0, badLines: 0 };
  private readonly pending = new Map<string, Pending>();
  private nextId = 1;
  private buffered = '';
  private closedReason: string | null = null;
  private waiters: Array<(ev: QmpEvent | null) => void> = [];
  private queued: QmpEvent[] = [];
  private iterating = false;

  private constructor(
    private readonly socket: Socket,
    readonly socketPath: string,
    readonly greeting: QmpGreeting,
    private readonly commandTimeoutMs: number,
    private readonly name: string,
    private readonly log: LogFn,
    leftover: string,
  ) {
    super();
    socket.on('data', (chunk: Buffer) => this.onData(chunk.toString('utf8')));
    socket.on('error', (err) => this.onClose(err.message));
    socket.on('close', () => this.onClose('socket closed'));
    if (leftover) this.onData(leftover);
  }

  /** Connects, reads the greeting and leaves negotiation mode. */
  static async connect(socketPath: string, options: QmpConnectOptions = {}): Promise<QmpClient> {
    const timeoutMs = options.timeoutMs ?? 5000;
    const deadline = Date.now() + timeoutMs;
    const log = options.log ?? noLog;
    const name = options.name ?? socketPath;
    let lastError = 'not tried';
    for (;;) {
      if (options.signal?.aborted) throw new QmpClosedError('connect', socketPath, `abandoned: ${String(options.signal.reason ?? 'aborted')}`);
      const remaining = deadline - Date.now();
      if (remaining <= 0) throw new QmpClosedError('connect', socketPath, `no QMP greeting within ${timeoutMs} ms: ${lastError}`);
      try {
        const { socket, greeting, leftover } = await openAndGreet(socketPath, remaining);
        const client = new QmpClient(socket, socketPath, greeting, options.commandTimeoutMs ?? 10_000, name, log, leftover);
        try {
          await client.execute('qmp_capabilities', undefined, { timeoutMs: Math.max(1, deadline - Date.now()) });
        } catch (e) {
          client.close();
          throw e;
        }
        return client;
      } catch (e) {
        lastError = (e as Error).message;
        const code = (e as NodeJS.ErrnoException).code;
        const retriable = code === 'ENOENT' || code === 'ECONNREFUSED';
        if (!(options.retry ?? true) || !retriable) {
          if (e instanceof QmpClosedError || e instanceof QmpTimeoutError || e instanceof QmpCommandError) throw e;
          throw new QmpClosedError('connect', socketPath, lastError);
        }
        await new Promise((r) => setTimeout(r, 20));
      }
    }
  }

  get closed(): boolean {
    return this.closedReason !== null;
  }

  /** Runs a command; resolves with its `return`, rejects with QmpCommandError/QmpTimeoutError/QmpClosedError. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, options: { timeoutMs?: number } = {}): Promise<T> {
    if (this.closedReason !== null) return Promise.reject(new QmpClosedError(command, this.socketPath, this.closedReason));
    const id = `svm-${this.nextId++}`;
    const timeoutMs = options.timeoutMs ?? this.commandTimeoutMs;
    this.counters.commands++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        this.counters.timeouts++;
        this.log('warn', 'qmp-timeout', { qmp: this.name, command, timeoutMs });
        reject(new QmpTimeoutError(command, timeoutMs, this.socketPath));
      }, timeoutMs);
      this.pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      this.socket.write(`${JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}), id })}\n`);
    });
  }

  /** The next event named `name` (and satisfying `match`), or QmpTimeoutError. */
  waitForEvent(name: string, timeoutMs: number, match: (ev: QmpEvent) => boolean = () => true): Promise<QmpEvent> {
    return new Promise((resolve, reject) => {
      const done = () => {
        clearTimeout(timer);
        this.off('event', onEvent);
        this.off('close', onClose);
      };
      const onEvent = (ev: QmpEvent) => {
        if (ev.event === name && match(ev)) { done(); resolve(ev); }
      };
      const onClose = (reason: string) => { done(); reject(new QmpClosedError(`wait for ${name}`, this.socketPath, reason)); };
      const timer = setTimeout(() => { done(); reject(new QmpTimeoutError(`wait for ${name}`, timeoutMs, this.socketPath)); }, timeoutMs);
      if (this.closedReason !== null) { done(); reject(new QmpClosedError(`wait for ${name}`, this.socketPath, this.closedReason)); return; }
      this.on('event', onEvent);
      this.on('close', onClose);
    });
  }

  /**
   * Every event from now on, until the connection closes. One iterator at a
   * time (events are queued for it, unbounded only while it is being read).
   */
  async *events(): AsyncGenerator<QmpEvent> {
    if (this.iterating) throw new Error('QmpClient.events(): already being iterated');
    this.iterating = true;
    try {
      for (;;) {
        const next = this.queued.shift() ?? (this.closedReason !== null ? null : await new Promise<QmpEvent | null>((r) => this.waiters.push(r)));
        if (next === null) return;
        yield next;
      }
    } finally {
      this.iterating = false;
      this.queued = [];
    }
  }

  /** Closes the socket; pending commands reject with QmpClosedError. */
  close(): void {
    this.socket.destroy();
    this.onClose('closed by us');
  }

  private onData(text: string): void {
    this.buffered += text;
    let nl: number;
    while ((nl = this.buffered.indexOf('\n')) >= 0) {
      const line = this.buffered.slice(0, nl).trim();
      this.buffered = this.buffered.slice(nl + 1);
      if (line) this.onLine(line);
    }
    if (this.buffered.length > MAX_LINE) {
      this.log('error', 'qmp-bad-peer', { qmp: this.name, note: `${this.buffered.length} bytes without a newline` });
      this.socket.destroy();
      this.onClose('peer sent an over-long line');
    }
  }

  private onLine(line: string): void {
    let msg: Record<string, unknown>;
    try {
      msg = JSON.parse(line) as Record<string, unknown>;
      if (typeof msg !== 'object' || msg === null || Array.isArray(msg)) throw new Error('not an object');
    } catch {
      this.counters.badLines++;
      this.log('warn', 'qmp-bad-line', { qmp: this.name, line: line.slice(0, 200) });
      return;
    }
    if (typeof msg.event === 'string') {
      const ev: QmpEvent = {
        event: msg.event,
        data: (msg.data as Record<string, unknown>) ?? {},
        timestamp: (msg.timestamp as QmpEvent['timestamp']) ?? { seconds: 0, microseconds: 0 },
      };
      this.counters.events++;
      this.emit('event', ev);
      if (this.iterating) {
        const waiter = this.waiters.shift();
        if (waiter) waiter(ev); else this.queued.push(ev);
      }
      return;
    }
    const id = typeof msg.id === 'string' ? msg.id : undefined;
    const pending = id !== undefined ? this.pending.get(id) : undefined;
    if (!pending || id === undefined) {
      this.counters.badLines++;
      this.log('warn', 'qmp-unmatched-reply', { qmp: this.name, line: line.slice(0, 200) });
      return;
    }
    this.pending.delete(id);
    clearTimeout(pending.timer);
    if ('error' in msg) {
      const err = (msg.error ?? {}) as { class?: string; desc?: string };
      this.counters.errors++;
      pending.reject(new QmpCommandError(pending.command, err.class ?? 'GenericError', err.desc ?? 'no description', this.socketPath));
    } else {
      pending.resolve(msg.return);
    }
  }

  private onClose(reason: string): void {
    if (this.closedReason !== null) return;
    this.closedReason = this.buffered.trim() ? `${reason}, mid-message` : reason;
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      this.pending.delete(id);
      p.reject(new QmpClosedError(p.command, this.socketPath, this.closedReason));
    }
    for (const w of this.waiters.splice(0)) w(null);
    this.log(reason === 'closed by us' ? 'debug' : 'warn', 'qmp-closed', { qmp: this.name, reason: this.closedReason });
    this.emit('close', this.closedReason);
  }
}

/** Opens the socket and reads the greeting line; what follows it is handed on. */
function openAndGreet(socketPath: string, timeoutMs: number): Promise<{ socket: Socket; greeting: QmpGreeting; leftover: string }> {
  return new Promise((resolve, reject) => {
    const socket = connect(socketPath);
    let text = '';
    const fail = (err: Error) => {
      clearTimeout(timer);
      socket.destroy();
      reject(err);
    };
    const timer = setTimeout(() => fail(new QmpTimeoutError('greeting', timeoutMs, socketPath)), timeoutMs);
    const onData = (chunk: Buffer) => {
      text += chunk.toString('utf8');
      const nl = text.indexOf('\n');
      if (nl < 0) {
        if (text.length > MAX_LINE) fail(new QmpClosedError('greeting', socketPath, 'over-long greeting'));
        return;
      }
      let greeting: QmpGreeting | undefined;
      try {
        greeting = (JSON.parse(text.slice(0, nl)) as { QMP?: QmpGreeting }).QMP;
      } catch { /* handled below */ }
      if (!greeting) { fail(new QmpClosedError('greeting', socketPath, `not a QMP greeting: ${text.slice(0, nl).slice(0, 120)}`)); return; }
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('error', onError);
      socket.off('close', onEarlyClose);
      resolve({ socket, greeting, leftover: text.slice(nl + 1) });
    };
    const onError = (err: Error) => fail(err);
    const onEarlyClose = () => fail(new QmpClosedError('greeting', socketPath, 'closed before the greeting'));
    socket.on('data', onData);
    socket.on('error', onError);
    socket.on('close', onEarlyClose);
  });
}
