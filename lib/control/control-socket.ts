/**
 * The control socket: newline-delimited JSON requests over a UNIX stream
 * socket (mode 0600, see unix-socket.ts), one reply line per request, in
 * order.
 *
 *   {"cmd":"status"}            → {"ok":true,"status":BridgeSnapshot}
 *   {"cmd":"checkpoint"}        → {"ok":true,"checkpoint":{requested,epoch,state}}
 *   {"cmd":"failover"}          → {"ok":true,"failover":{promoted,survivor?,why?,roles}}
 *   {"cmd":"flows","limit":N,"match":S} → {"ok":true,"flows":[FlowReport…]}
 *   anything else               → {"ok":false,"error":"…"}
 *
 * A request may carry an `id` (string or number); its reply repeats it.
 * The handlers come from the bridge; a handler that throws becomes an error
 * reply. Garbage never closes the socket or the bridge.
 *
 * The bridge's event loop also moves frames, so no client may hold it:
 * - one request per connection at a time, and one request started per
 *   event-loop turn across all connections; a `flows` reply is written in
 *   pieces of `FLOWS_PER_WRITE` flows, one piece per turn;
 * - `flows` returns at most `MAX_FLOWS_LIMIT` (1000) flows, the most recent
 *   ones; a larger `limit` is cut to it. `match` (a piece of the flow's key,
 *   such as `10.0.0.1:40000` or `:21 `) picks the most recent flows whose key
 *   holds it, among every flow the bridge keeps a report of, so an older
 *   connection is found however many flows came after it;
 * - reading stops while a request waits or a reply is not drained, so a
 *   pipelining client is held back by its own socket buffer; more than
 *   `maxQueuedRequests` requests already read and waiting on one
 *   connection close it (counted in `closedAbusive`, one log line);
 * - a reply the client does not read within `replyTimeoutMs` closes the
 *   connection (`closedSlow`); a connection silent for `idleTimeoutMs`
 *   is closed (`closedIdle`);
 * - at `maxConnections`, a new connection is admitted by closing the least
 *   recently active one, idle ones first (`evicted`): idle connections can
 *   never lock `shadowvm status` out;
 * - `close()` destroys every connection, so stopping never waits for a
 *   client.
 */
import { connect, createServer, Server, Socket } from 'node:net';
import type { FlowReport } from '../pipeline/shadow-flow';
import { ReplicationState } from '../replicate/replicator';
import { excerptOf, LineSplitter, SplitLine } from '../replicate/agent-protocol';
import { LogFn, noLog } from './logger';
import { refusePeer } from './peer';
import { BridgeSnapshot } from './snapshot';
import { closeServer, listenUnixSocket, removeSocketFile, untrustedSocketReason, UnixSocketIdentity } from './unix-socket';
import { UserFacingError } from '../errors';

export type ControlRequest =
  | { cmd: 'status'; id?: string | number }
  | { cmd: 'checkpoint'; id?: string | number }
  | { cmd: 'failover'; id?: string | number }
  | { cmd: 'flows'; limit?: number; match?: string; id?: string | number };
export type ControlCommand = ControlRequest['cmd'];

export interface ManualCheckpointResult {
  /** False when the request was coalesced into one in progress, or refused (no agent, failed over). */
  requested: boolean;
  epoch: number;
  state: ReplicationState;
  note?: string;
}

/** A failover asked for by an administrator (planned switchover, or a primary the detectors did not see die). */
export interface ManualFailoverResult {
  promoted: boolean;
  /** Port of the promoted replica, when promoted. */
  survivor?: string;
  /** Why not, when refused (no backup, stale backup) or deferred. */
  why?: string;
  /** Not yet: a checkpoint is in flight, and the failover follows its answer (`failover.checkpointWaitMs` at most). */
  deferred?: boolean;
  /** Each port and its role afterwards. */
  roles: { port: string; role: string }[];
}

export interface ControlHandlers {
  status(): BridgeSnapshot | Promise<BridgeSnapshot>;
  checkpoint(): ManualCheckpointResult | Promise<ManualCheckpointResult>;
  /** Absent: the bridge does not take failover requests (the command is answered with an error). */
  failover?(): ManualFailoverResult | Promise<ManualFailoverResult>;
  /** The most recent `limit` flows (whose key holds `match`, if given), oldest first. */
  flows(limit: number, match?: string): readonly FlowReport[] | Promise<readonly FlowReport[]>;
}

interface ReplyId { id?: string | number }
export interface StatusReply extends ReplyId { ok: true; status: BridgeSnapshot }
export interface CheckpointReply extends ReplyId { ok: true; checkpoint: ManualCheckpointResult }
export interface FlowsReply extends ReplyId { ok: true; flows: FlowReport[] }
export interface FailoverReply extends ReplyId { ok: true; failover: ManualFailoverResult }
export interface ControlErrorReply extends ReplyId { ok: false; error: string }
export type ControlReply = StatusReply | CheckpointReply | FailoverReply | FlowsReply | ControlErrorReply;

type ReplyFor<C extends ControlCommand> =
  (C extends 'status' ? StatusReply : C extends 'checkpoint' ? CheckpointReply : C extends 'failover' ? FailoverReply : FlowsReply) | ControlErrorReply;

export const DEFAULT_FLOWS_LIMIT = 100;
/** The most flows one `flows` reply carries (a bigger `limit` is cut to this): a reply stays around a megabyte or less. */
export const MAX_FLOWS_LIMIT = 1000;
/** The longest `match` a `flows` request may carry (a flow key is shorter). */
export const MAX_MATCH_LENGTH = 128;
/** Flows serialized per write (and per event-loop turn) of a `flows` reply. */
export const FLOWS_PER_WRITE = 100;
const MAX_REQUEST_BYTES = 64 * 1024;

/** Defaults of the per-connection bounds (see the header). */
export const CONTROL_SOCKET_LIMITS = {
  maxConnections: 32,
  maxQueuedRequests: 32,
  idleTimeoutMs: 30_000,
  replyTimeoutMs: 10_000,
} as const;

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
    case 'failover':
      return withId({ cmd: obj.cmd });
    case 'flows': {
      const { limit, match } = obj;
      if (limit !== undefined && (typeof limit !== 'number' || !Number.isSafeInteger(limit) || limit < 1)) {
        throw new ControlRequestError(`flows: "limit" must be a positive integer, got ${JSON.stringify(limit)}`, excerptOf(line));
      }
      if (match !== undefined && (typeof match !== 'string' || match.length < 1 || match.length > MAX_MATCH_LENGTH)) {
        throw new ControlRequestError(`flows: "match" must be a string of 1 to ${MAX_MATCH_LENGTH} characters, got ${excerptOf(JSON.stringify(match))}`, excerptOf(line));
      }
      return withId({ cmd: 'flows' as const, ...(limit !== undefined ? { limit } : {}), ...(match !== undefined ? { match } : {}) });
    }
    case undefined:
      throw new ControlRequestError('missing "cmd" (one of status, checkpoint, failover, flows)', excerptOf(line));
    default:
      throw new ControlRequestError(`unknown cmd ${JSON.stringify(obj.cmd)} (one of status, checkpoint, failover, flows)`, excerptOf(line));
  }
}

export interface ControlSocketOptions {
  path: string;
  handlers: ControlHandlers;
  log?: LogFn;
  /** Connections at once; a new one beyond this closes the least recently active one. Default 32. */
  maxConnections?: number;
  /** Requests read and waiting on one connection; one more closes it. Default 32. */
  maxQueuedRequests?: number;
  /** A connection with no traffic for this long is closed. Default 30 s. */
  idleTimeoutMs?: number;
  /** A reply not drained to the client within this long closes the connection. Default 10 s. */
  replyTimeoutMs?: number;
  /**
   * A group whose members may use the socket too (operators who are not
   * root): the socket gets this group and mode 0660, its directory (when
   * the bridge creates it) mode 0750 with this group, and the peer check
   * lets members in. Absent: root and the bridge's own user only.
   */
  group?: { gid: number; name: string };
}

export interface ControlSocketCounters {
  connections: number;
  requests: number;
  /** Requests answered with `ok: false`. */
  errors: number;
  /** Closed for queueing more than `maxQueuedRequests` requests. */
  closedAbusive: number;
  /** Closed because a reply was not read within `replyTimeoutMs`. */
  closedSlow: number;
  /** Closed after `idleTimeoutMs` without traffic. */
  closedIdle: number;
  /** Closed to admit a new connection at `maxConnections`. */
  evicted: number;
  /** Refused at once: the peer (SO_PEERCRED) is neither root nor the bridge's user. */
  refusedPeer: number;
}

/** One accepted client. */
class ControlConnection {
  readonly splitter = new LineSplitter(MAX_REQUEST_BYTES);
  /** Requests read and not yet started. */
  readonly queue: SplitLine[] = [];
  /** A request is being answered (handler or reply write). */
  busy = false;
  /** Waiting in the server's ready list. */
  ready = false;
  closed = false;
  /** The client has finished sending (half close): answer what it sent, then end. */
  peerEnded = false;
  lastActiveMs: number;

  constructor(readonly socket: Socket, readonly id: number, nowMs: number) {
    this.lastActiveMs = nowMs;
  }

  get idle(): boolean {
    return !this.busy && this.queue.length === 0;
  }
}

export class ControlSocket {
  readonly counters: ControlSocketCounters = { connections: 0, requests: 0, errors: 0, closedAbusive: 0, closedSlow: 0, closedIdle: 0, evicted: 0, refusedPeer: 0 };
  private readonly server: Server;
  private readonly log: LogFn;
  private readonly open = new Set<ControlConnection>();
  /** Connections with a request to start, in turn order. */
  private readonly readyList: ControlConnection[] = [];
  private turnScheduled = false;
  private identity: UnixSocketIdentity | null = null;
  private closing = false;
  private nextId = 1;
  private readonly limits: { maxConnections: number; maxQueuedRequests: number; idleTimeoutMs: number; replyTimeoutMs: number };

  constructor(readonly options: ControlSocketOptions) {
    this.log = options.log ?? noLog;
    this.limits = {
      maxConnections: options.maxConnections ?? CONTROL_SOCKET_LIMITS.maxConnections,
      maxQueuedRequests: options.maxQueuedRequests ?? CONTROL_SOCKET_LIMITS.maxQueuedRequests,
      idleTimeoutMs: options.idleTimeoutMs ?? CONTROL_SOCKET_LIMITS.idleTimeoutMs,
      replyTimeoutMs: options.replyTimeoutMs ?? CONTROL_SOCKET_LIMITS.replyTimeoutMs,
    };
    // Half-open: a client may send its requests and close its side; it still gets every reply.
    this.server = createServer({ allowHalfOpen: true }, (socket) => this.accept(socket));
    this.server.on('error', (e) => this.log('error', 'control-socket-error', { path: options.path, error: e }));
  }

  /** Open connections now. */
  get connectionCount(): number {
    return this.open.size;
  }

  /** Starts listening; `SocketInUseError` if another process answers on the path, `SocketPathError` for an unsafe path. */
  async listen(): Promise<void> {
    if (this.identity) return;
    const group = this.options.group;
    this.identity = await listenUnixSocket(this.server, this.options.path, group
      ? { what: 'control socket', mode: 0o660, dirMode: 0o750, gid: group.gid, dirGid: group.gid }
      : { what: 'control socket' });
    this.log('info', 'control-socket-listening', { path: this.options.path });
  }

  /** Stops listening, destroys every connection (nobody can hold the stop up) and removes the socket file if it is still ours. */
  async close(): Promise<void> {
    this.closing = true;
    for (const c of [...this.open]) this.drop(c);
    this.readyList.length = 0;
    await closeServer(this.server);
    if (this.identity) removeSocketFile(this.identity);
    this.identity = null;
  }

  private accept(socket: Socket): void {
    socket.on('error', () => {});
    if (this.closing) {
      socket.destroy();
      return;
    }
    const refused = refusePeer(socket, undefined, this.options.group?.gid);
    if (refused) {
      this.counters.refusedPeer++;
      this.log('warn', 'control-peer-refused', { why: refused });
      socket.destroy();
      return;
    }
    if (this.open.size >= this.limits.maxConnections) this.evictOne();
    this.counters.connections++;
    const c = new ControlConnection(socket, this.nextId++, Date.now());
    this.open.add(c);
    socket.setTimeout(this.limits.idleTimeoutMs);
    socket.on('timeout', () => {
      if (c.busy) return; // a reply in flight has its own deadline
      this.counters.closedIdle++;
      this.closeFor(c, 'control-connection-idle', { idleMs: this.limits.idleTimeoutMs });
    });
    socket.on('close', () => this.forget(c));
    socket.on('end', () => {
      c.peerEnded = true;
      if (c.idle) socket.end();
    });
    socket.on('data', (chunk: Buffer) => this.onData(c, chunk));
  }

  /** Makes room: the least recently active connection goes, preferring one with nothing to do. */
  private evictOne(): void {
    let victim: ControlConnection | null = null;
    for (const c of this.open) {
      if (!victim || (c.idle && !victim.idle) || (c.idle === victim.idle && c.lastActiveMs < victim.lastActiveMs)) victim = c;
    }
    if (!victim) return;
    this.counters.evicted++;
    this.closeFor(victim, 'control-connection-evicted', { why: `${this.limits.maxConnections} connections open`, idle: victim.idle });
  }

  private onData(c: ControlConnection, chunk: Buffer): void {
    if (c.closed) return;
    c.lastActiveMs = Date.now();
    for (const piece of c.splitter.push(chunk)) c.queue.push(piece);
    if (c.queue.length > this.limits.maxQueuedRequests) {
      this.counters.closedAbusive++;
      this.closeFor(c, 'control-connection-abusive', { why: `more than ${this.limits.maxQueuedRequests} requests waiting on one connection`, queued: c.queue.length });
      return;
    }
    if (c.queue.length > 0) {
      // Read no more until this connection's requests are answered: the kernel buffer holds the rest back.
      c.socket.pause();
      this.markReady(c);
    }
  }

  private markReady(c: ControlConnection): void {
    if (c.ready || c.busy || c.closed || c.queue.length === 0) return;
    c.ready = true;
    this.readyList.push(c);
    this.scheduleTurn();
  }

  private scheduleTurn(): void {
    if (this.turnScheduled || this.readyList.length === 0) return;
    this.turnScheduled = true;
    setImmediate(() => {
      this.turnScheduled = false;
      this.startOne();
      this.scheduleTurn();
    });
  }

  /** Starts the next waiting request of the next ready connection: one per event-loop turn. */
  private startOne(): void {
    for (;;) {
      const c = this.readyList.shift();
      if (!c) return;
      c.ready = false;
      if (c.closed || c.busy) continue;
      const piece = c.queue.shift();
      if (!piece) continue;
      c.busy = true;
      void this.serve(c, piece).then(() => {
        c.busy = false;
        if (c.closed) return;
        c.lastActiveMs = Date.now();
        if (c.queue.length > 0) this.markReady(c);
        else if (c.peerEnded) c.socket.end();
        else c.socket.resume();
      });
      return;
    }
  }

  private async serve(c: ControlConnection, piece: SplitLine): Promise<void> {
    const reply: ControlReply = piece.kind === 'overlong'
      ? { ok: false, error: `request longer than ${MAX_REQUEST_BYTES} bytes` }
      : await this.answer(piece.line);
    this.counters.requests++;
    if (!reply.ok) this.counters.errors++;
    if (c.closed) return;
    if ('flows' in reply) await this.writeFlows(c, reply);
    else await this.write(c, `${JSON.stringify(reply)}\n`);
  }

  /** A flows reply, a piece per event-loop turn, each piece drained before the next is made. */
  private async writeFlows(c: ControlConnection, reply: FlowsReply): Promise<void> {
    const { flows, ...head } = reply;
    const empty = JSON.stringify({ ...head, flows: [] });
    const opening = empty.slice(0, -2); // `…"flows":[`
    let text = opening;
    for (let i = 0; i < flows.length; i += FLOWS_PER_WRITE) {
      const part = flows.slice(i, i + FLOWS_PER_WRITE).map((f) => JSON.stringify(f)).join(',');
      text += i === 0 ? part : `,${part}`;
      if (!(await this.write(c, text))) return;
      text = '';
      await new Promise<void>((resolve) => setImmediate(resolve));
      if (c.closed) return;
    }
    await this.write(c, `${text}]}\n`);
  }

  /** Writes and waits until the socket has taken it; false if the connection is gone (or was closed for not reading). */
  private write(c: ControlConnection, text: string): Promise<boolean> {
    if (c.closed) return Promise.resolve(false);
    if (c.socket.write(text)) return Promise.resolve(true);
    return new Promise<boolean>((resolve) => {
      const done = (ok: boolean) => {
        clearTimeout(timer);
        c.socket.off('drain', onDrain);
        c.socket.off('close', onClose);
        resolve(ok);
      };
      const onDrain = () => done(true);
      const onClose = () => done(false);
      const timer = setTimeout(() => {
        this.counters.closedSlow++;
        this.closeFor(c, 'control-connection-slow', { why: `reply not read within ${this.limits.replyTimeoutMs} ms`, unsentBytes: c.socket.writableLength });
        done(false);
      }, this.limits.replyTimeoutMs);
      timer.unref();
      c.socket.on('drain', onDrain);
      c.socket.on('close', onClose);
    });
  }

  private closeFor(c: ControlConnection, event: string, fields: Record<string, unknown>): void {
    if (c.closed) return;
    this.log('warn', event, { connection: c.id, path: this.options.path, ...fields });
    this.drop(c);
  }

  private drop(c: ControlConnection): void {
    this.forget(c);
    c.socket.destroy();
  }

  private forget(c: ControlConnection): void {
    if (c.closed) return;
    c.closed = true;
    c.queue.length = 0;
    c.splitter.reset();
    this.open.delete(c);
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
        case 'failover':
          if (!h.failover) return { ok: false, ...id, error: 'this bridge does not take failover requests' };
          return { ok: true, ...id, failover: await h.failover() };
        case 'flows': {
          const limit = Math.min(req.limit ?? DEFAULT_FLOWS_LIMIT, MAX_FLOWS_LIMIT);
          const flows = await h.flows(limit, req.match);
          return { ok: true, ...id, flows: flows.length > limit ? flows.slice(-limit) : [...flows] };
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
export class ControlSocketError extends UserFacingError {
  constructor(readonly path: string, readonly detail: string) {
    super(`control socket ${path}: ${detail}`);
    this.name = 'ControlSocketError';
  }
}

/**
 * Sends one request and resolves with its reply (an `ok: false` reply is a
 * reply, not an exception). Throws `ControlSocketError` when nobody listens,
 * on timeout, when the answer is not a reply, and, before connecting, when
 * the socket or a directory on its path is owned or writable by a user other
 * than root and the caller.
 */
export function queryControlSocket<R extends ControlRequest>(path: string, request: R, timeoutMs = 5000): Promise<ReplyFor<R['cmd']>> {
  return new Promise((resolve, reject) => {
    // Whoever owns or can write the socket or a directory on its path could be serving fake figures.
    const untrusted = untrustedSocketReason(path);
    if (untrusted) {
      reject(new ControlSocketError(path, `refusing to talk to it: ${untrusted}`));
      return;
    }
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
