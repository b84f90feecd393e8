/**
 * The control socket: newline-delimited JSON requests over a UNIX stream
 * socket (mode 0600), one reply line per request, in order.
 *
 *   {"cmd":"status"}            → {"ok":true,"status":BridgeSnapshot}
 *   {"cmd":"checkpoint"}        → {"ok":true,"checkpoint":{requested,epoch,state}}
 *   {"cmd":"flows","limit":N}   → {"ok":true,"flows":[FlowReport…]}
 *   anything else               → {"ok":false,"error":"…"}
 *
 * A request may carry an `id` (string or number); its reply repeats it.
 * The handlers come from the bridge; a handler that throws becomes an error
 * reply. Garbage never closes the socket or the bridge.
 */
import { connect, createServer, Server, Socket } from 'node:net';
import type { FlowReport } from '../pipeline/shadow-flow';
import { ReplicationState } from '../replicate/replicator';
import { excerptOf, LineSplitter } from '../replicate/agent-protocol';
import { LogFn, noLog } from './logger';
import { BridgeSnapshot } from './snapshot';
import { closeServer, listenUnixSocket, removeSocketFile, UnixSocketIdentity } from './unix-socket';

export type ControlRequest =
  | { cmd: 'status'; id?: string | number }
  | { cmd: 'checkpoint'; id?: string | number }
  | { cmd: 'flows'; limit?: number; id?: string | number };
export type ControlCommand = ControlRequest['cmd'];

export interface ManualCheckpointResult {
  /** False when the request was coalesced into one in progress, or refused (no agent, failed over). */
  requested: boolean;
  epoch: number;
  state: ReplicationState;
  note?: string;
}

export interface ControlHandlers {
  status(): BridgeSnapshot | Promise<BridgeSnapshot>;
  checkpoint(): ManualCheckpointResult | Promise<ManualCheckpointResult>;
  /** The most recent `limit` flows. */
  flows(limit: number): readonly FlowReport[] | Promise<readonly FlowReport[]>;
}

interface ReplyId { id?: string | number }
export interface StatusReply extends ReplyId { ok: true; status: BridgeSnapshot }
export interface CheckpointReply extends ReplyId { ok: true; checkpoint: ManualCheckpointResult }
export interface FlowsReply extends ReplyId { ok: true; flows: FlowReport[] }
export interface ControlErrorReply extends ReplyId { ok: false; error: string }
export type ControlReply = StatusReply | CheckpointReply | FlowsReply | ControlErrorReply;

type ReplyFor<C extends ControlCommand> =
  (C extends 'status' ? StatusReply : C extends 'checkpoint' ? CheckpointReply : FlowsReply) | ControlErrorReply;

export const DEFAULT_FLOWS_LIMIT = 100;
export const MAX_FLOWS_LIMIT = 100_000;
const MAX_REQUEST_BYTES = 64 * 1024;
const MAX_CONNECTIONS = 32;

/** Where the control socket of the bridge named `name` lives by default (beside the agent socket). */
export function defaultControlSocketPath(name: string): string {
  return `/run/shadowvm/${name}/control.sock`;
}

/** A request line the control socket cannot accept, and why. */
export class ControlRequestError extends Error {
  constructor(readonly why: string, readonly excerpt: string) {
    super(why);
    this.name = 'ControlRequestError';
  }
}

/** Reads one request line; throws `ControlRequestError`. */
export function parseControlRequest(line: string): ControlRequest {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch (e) {
    throw new ControlRequestError(`not JSON (${(e as Error).message})`, excerptOf(line));
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new ControlRequestError('a request must be a JSON object like {"cmd":"status"}', excerptOf(line));
  }
  const obj = value as Record<string, unknown>;
  const id = obj.id;
  if (id !== undefined && typeof id !== 'string' && typeof id !== 'number') {
    throw new ControlRequestError('"id" must be a string or a number', excerptOf(line));
  }
  const withId = <T extends object>(r: T): T & { id?: string | number } => (id === undefined ? r : { ...r, id });
  switch (obj.cmd) {
    case 'status':
    case 'checkpoint':
      return withId({ cmd: obj.cmd });
    case 'flows': {
      const limit = obj.limit;
      if (limit === undefined) return withId({ cmd: 'flows' as const });
      if (typeof limit !== 'number' || !Number.isSafeInteger(limit) || limit < 1) {
        throw new ControlRequestError(`flows: "limit" must be a positive integer, got ${JSON.stringify(limit)}`, excerptOf(line));
      }
      return withId({ cmd: 'flows' as const, limit });
    }
    case undefined:
      throw new ControlRequestError('missing "cmd" (one of status, checkpoint, flows)', excerptOf(line));
    default:
      throw new ControlRequestError(`unknown cmd ${JSON.stringify(obj.cmd)} (one of status, checkpoint, flows)`, excerptOf(line));
  }
}

export interface ControlSocketOptions {
  path: string;
  handlers: ControlHandlers;
  log?: LogFn;
}

export interface ControlSocketCounters {
  connections: number;
  requests: number;
  /** Requests answered with `ok: false`. */
  errors: number;
}

export class ControlSocket {
  readonly counters: ControlSocketCounters = { connections: 0, requests: 0, errors: 0 };
  private readonly server: Server;
  private readonly log: LogFn;
  private readonly open = new Set<Socket>();
  private identity: UnixSocketIdentity | null = null;

  constructor(readonly options: ControlSocketOptions) {
    this.log = options.log ?? noLog;
    this.server = createServer((socket) => this.accept(socket));
    this.server.on('error', (e) => this.log('error', 'control-socket-error', { path: options.path, error: e }));
  }

  /** Starts listening; `SocketInUseError` if another bridge answers on the path. */
  async listen(): Promise<void> {
    if (this.identity) return;
    this.identity = await listenUnixSocket(this.server, this.options.path, { what: 'control socket' });
    this.log('info', 'control-socket-listening', { path: this.options.path });
  }

  async close(): Promise<void> {
    for (const s of this.open) s.destroy();
    await closeServer(this.server);
    if (this.identity) removeSocketFile(this.identity);
    this.identity = null;
  }

  private accept(socket: Socket): void {
    socket.on('error', () => {});
    if (this.open.size >= MAX_CONNECTIONS) {
      socket.end(`${JSON.stringify({ ok: false, error: 'too many control connections' })}\n`);
      return;
    }
    this.counters.connections++;
    this.open.add(socket);
    socket.on('close', () => this.open.delete(socket));
    const splitter = new LineSplitter(MAX_REQUEST_BYTES);
    // Replies go out in request order even when a handler is asynchronous.
    let queue: Promise<void> = Promise.resolve();
    socket.on('data', (chunk: Buffer) => {
      for (const piece of splitter.push(chunk)) {
        const job = piece.kind === 'overlong'
          ? () => Promise.resolve<ControlReply>({ ok: false, error: `request longer than ${MAX_REQUEST_BYTES} bytes` })
          : () => this.answer(piece.line);
        queue = queue.then(job).then((reply) => {
          this.counters.requests++;
          if (!reply.ok) this.counters.errors++;
          if (!socket.destroyed) socket.write(`${JSON.stringify(reply)}\n`);
        });
      }
    });
  }

  private async answer(line: string): Promise<ControlReply> {
    let req: ControlRequest;
    try {
      req = parseControlRequest(line);
    } catch (e) {
      const why = e instanceof ControlRequestError ? e.why : String(e);
      this.log('warn', 'control-bad-request', { why, line: excerptOf(line) });
      return { ok: false, error: why };
    }
    const id = req.id === undefined ? {} : { id: req.id };
    try {
      const h = this.options.handlers;
      switch (req.cmd) {
        case 'status':
          return { ok: true, ...id, status: await h.status() };
        case 'checkpoint':
          return { ok: true, ...id, checkpoint: await h.checkpoint() };
        case 'flows': {
          const limit = Math.min(req.limit ?? DEFAULT_FLOWS_LIMIT, MAX_FLOWS_LIMIT);
          return { ok: true, ...id, flows: [...(await h.flows(limit))].slice(-limit) };
        }
      }
    } catch (e) {
      this.log('warn', 'control-handler-failed', { cmd: req.cmd, error: e });
      return { ok: false, ...id, error: `${req.cmd} failed: ${(e as Error).message ?? String(e)}` };
    }
  }
}

// ───────────────────────── client ─────────────────────────

/** The control socket could not be reached or did not answer. */
export class ControlSocketError extends Error {
  constructor(readonly path: string, readonly detail: string) {
    super(`control socket ${path}: ${detail}`);
    this.name = 'ControlSocketError';
  }
}

/**
 * Sends one request and resolves with its reply (an `ok: false` reply is a
 * reply, not an exception). Throws `ControlSocketError` when nobody listens,
 * on timeout, or when the answer is not a reply.
 */
export function queryControlSocket<R extends ControlRequest>(path: string, request: R, timeoutMs = 5000): Promise<ReplyFor<R['cmd']>> {
  return new Promise((resolve, reject) => {
    const socket = connect(path);
    const splitter = new LineSplitter(16 << 20);
    let settled = false;
    const finish = (err: Error | null, reply?: ReplyFor<R['cmd']>) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      if (err) reject(err);
      else resolve(reply!);
    };
    const timer = setTimeout(() => finish(new ControlSocketError(path, `no reply within ${timeoutMs} ms`)), timeoutMs);
    socket.on('connect', () => socket.write(`${JSON.stringify(request)}\n`));
    socket.on('data', (chunk: Buffer) => {
      for (const piece of splitter.push(chunk)) {
        if (piece.kind === 'overlong') return finish(new ControlSocketError(path, 'reply too long'));
        let reply: unknown;
        try {
          reply = JSON.parse(piece.line);
        } catch {
          return finish(new ControlSocketError(path, `reply is not JSON: ${excerptOf(piece.line)}`));
        }
        if (typeof reply !== 'object' || reply === null || typeof (reply as { ok?: unknown }).ok !== 'boolean') {
          return finish(new ControlSocketError(path, `reply has no "ok": ${excerptOf(piece.line)}`));
        }
        return finish(null, reply as ReplyFor<R['cmd']>);
      }
    });
    socket.on('error', (e: NodeJS.ErrnoException) => {
      const detail = e.code === 'ENOENT' || e.code === 'ECONNREFUSED'
        ? 'no bridge is listening here (is it running, and under this name?)'
        : e.code === 'EACCES' ? 'permission denied (the socket is mode 0600: run as the bridge\'s user)' : e.message;
      finish(new ControlSocketError(path, detail));
    });
    socket.on('close', () => finish(new ControlSocketError(path, 'closed without a reply')));
  });
}
