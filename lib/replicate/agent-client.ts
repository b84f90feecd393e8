/**
 * AgentLink: the bridge's end of sync agent protocol v1.
 *
 *   replicator ──checkpoint / failover / reprotect──► AgentLink ──► agent socket
 *   listener   ◄──connected, checkpointDone, heartbeat, …── AgentLink ◄── agent
 *
 * The bridge listens and the agent connects, so either can restart without
 * the other (DESIGN: default `/run/shadowvm/<name>/agent.sock`, mode 0600,
 * in a directory only root can write: see unix-socket.ts for why that is
 * the peer check).
 *
 * Who is the agent:
 * - Only a connection that has said a valid `hello` is the agent; one that
 *   has not is *pending*. Pending connections never block anyone: up to
 *   `maxPendingConnections` wait side by side (a new one beyond that closes
 *   the oldest pending), each must say hello within `helloTimeoutMs`
 *   (default 1 s, not extended by other lines) or is closed, and the first
 *   to say hello becomes the agent (the other pending ones are closed).
 * - While an agent is connected, a new connection gets an `error` message
 *   and is closed: one agent at a time. The agent keeps the slot only while
 *   it talks: silent for `heartbeatTimeoutMs`, it counts as gone and the
 *   slot is free for the next one.
 * - An agent (or pending peer) that leaves more than `maxOutputBytes` of
 *   our messages unread is closed.
 *
 * Malformed lines get an `error` reply and are counted; the link stays up
 * (a pending peer is closed after `MAX_PENDING_ERRORS` of them). An `error`
 * message is never answered (two peers must not ping-pong).
 *
 * Counts: messages in/out, protocol errors, unknown types, connections
 * accepted and refused, hello and heartbeat timeouts, pending connections
 * evicted.
 */
import { createServer, Server, Socket } from 'node:net';
import { closeServer, listenUnixSocket, removeSocketFile, UnixSocketIdentity } from '../control/unix-socket';
import { LogFn, noLog } from '../control/logger';
import { refusePeer } from '../control/peer';
import type { AgentSnapshot } from '../control/snapshot';
import {
  AGENT_PROTOCOL_VERSION,
  AgentMessage,
  AgentProtocolError,
  BackupDownMessage,
  CheckpointDoneMessage,
  CheckpointMessage,
  CheckpointFailedMessage,
  encodeAgentMessage,
  errorReplyFor,
  excerptOf,
  HeartbeatMessage,
  HelloMessage,
  LineSplitter,
  MAX_AGENT_LINE_BYTES,
  ParsedAgentMessage,
  parseAgentMessage,
  PrimaryDownMessage,
} from './agent-protocol';
import { CheckpointReason } from './replicator';

export interface AgentLinkOptions {
  socketPath: string;
  /** The bridge's name, sent in its `hello`. */
  name: string;
  /** No message for this long: the agent counts as gone. Default 3000 ms. */
  heartbeatTimeoutMs?: number;
  /** A connection that has not said hello this long after connecting is closed. Default 1000 ms. */
  helloTimeoutMs?: number;
  /** Connections waiting for their hello at once; one more closes the oldest. Default 4. */
  maxPendingConnections?: number;
  /** Our messages left unread by a peer beyond which it is closed. Default 1 MiB. */
  maxOutputBytes?: number;
  maxLineBytes?: number;
  log?: LogFn;
}

/** What the link tells the bridge. Every method is optional. */
export interface AgentLinkListener {
  /** An agent said `hello`: checkpoints can be sent. */
  connected(hello: HelloMessage): void;
  /** The connected agent went away (socket closed, silent, or wrong version). */
  disconnected(why: string): void;
  checkpointDone(msg: CheckpointDoneMessage): void;
  checkpointFailed(msg: CheckpointFailedMessage): void;
  heartbeat(msg: HeartbeatMessage): void;
  primaryDown(msg: PrimaryDownMessage): void;
  backupDown(msg: BackupDownMessage): void;
}

export interface AgentLinkCounters {
  messagesIn: number;
  messagesOut: number;
  /** Malformed, overlong or out-of-place lines from the agent. */
  protocolErrors: number;
  unknownMessages: number;
  connectionsAccepted: number;
  connectionsRefused: number;
  heartbeatTimeouts: number;
  /** Connections closed for not saying hello within `helloTimeoutMs`. */
  helloTimeouts: number;
  /** Pending connections closed to make room for a newer one. */
  pendingEvicted: number;
  /** Refused at once: the peer (SO_PEERCRED) is neither root nor the bridge's user. */
  refusedPeer: number;
}

/** What the bridge uses of an agent link: the UNIX socket's (AgentLink), or a data-plane worker's relay to it (dataplane/relay-agent-link.ts). */
export interface AgentLinkLike {
  readonly counters: AgentLinkCounters;
  /** The connected agent's hello, if any. */
  readonly agent: HelloMessage | null;
  listen(): Promise<void>;
  close(): Promise<void>;
  snapshot(): AgentSnapshot;
  sendCheckpoint(req: { epoch: number; reason: CheckpointReason; flow?: string }): boolean;
  sendFailover(epoch: number, survivor?: string): boolean;
  sendBackupAttached(epoch: number, port: string): boolean;
  sendReprotect(epoch: number, backup?: string): boolean;
}

/** The link is used before `listen()` or after `close()`. */
export class AgentLinkStateError extends Error {
  constructor(readonly socketPath: string, readonly detail: string) {
    super(`agent link ${socketPath}: ${detail}`);
    this.name = 'AgentLinkStateError';
  }
}

const DEFAULT_HEARTBEAT_TIMEOUT_MS = 3000;
const DEFAULT_HELLO_TIMEOUT_MS = 1000;
const DEFAULT_MAX_PENDING = 4;
const DEFAULT_MAX_OUTPUT_BYTES = 1 << 20;
/** Protocol errors a peer may make before its hello; one more closes it. */
export const MAX_PENDING_ERRORS = 4;

/** One accepted connection: pending until it says hello, then the agent. */
class AgentSession {
  readonly splitter: LineSplitter;
  hello: HelloMessage | null = null;
  closed = false;
  /** Before hello: the hello deadline (fixed). After: the heartbeat timeout (refreshed by every message). */
  timer: NodeJS.Timeout | null = null;
  errorsBeforeHello = 0;

  constructor(readonly socket: Socket, readonly id: number, maxLineBytes: number) {
    this.splitter = new LineSplitter(maxLineBytes);
  }
}

export class AgentLink implements AgentLinkLike {
  readonly counters: AgentLinkCounters = {
    messagesIn: 0,
    messagesOut: 0,
    protocolErrors: 0,
    unknownMessages: 0,
    connectionsAccepted: 0,
    connectionsRefused: 0,
    heartbeatTimeouts: 0,
    helloTimeouts: 0,
    pendingEvicted: 0,
    refusedPeer: 0,
  };
  /** The last heartbeat of the connected agent. */
  lastHeartbeat: HeartbeatMessage | null = null;

  private readonly server: Server;
  private readonly listener: Partial<AgentLinkListener>;
  private readonly log: LogFn;
  private readonly heartbeatTimeoutMs: number;
  private readonly helloTimeoutMs: number;
  private readonly maxPending: number;
  private readonly maxOutputBytes: number;
  private readonly maxLineBytes: number;
  /** The agent: a connection that said hello. */
  private session: AgentSession | null = null;
  /** Connections that have not said hello yet, oldest first. */
  private readonly pending = new Set<AgentSession>();
  /** Connections refused as second agents, until they are gone. */
  private readonly refused = new Set<Socket>();
  private identity: UnixSocketIdentity | null = null;
  private nextSessionId = 1;
  private closing = false;

  constructor(readonly options: AgentLinkOptions, listener: Partial<AgentLinkListener> = {}) {
    this.listener = listener;
    this.log = options.log ?? noLog;
    this.heartbeatTimeoutMs = options.heartbeatTimeoutMs ?? DEFAULT_HEARTBEAT_TIMEOUT_MS;
    this.helloTimeoutMs = options.helloTimeoutMs ?? DEFAULT_HELLO_TIMEOUT_MS;
    this.maxPending = options.maxPendingConnections ?? DEFAULT_MAX_PENDING;
    this.maxOutputBytes = options.maxOutputBytes ?? DEFAULT_MAX_OUTPUT_BYTES;
    this.maxLineBytes = options.maxLineBytes ?? MAX_AGENT_LINE_BYTES;
    this.server = createServer((socket) => this.accept(socket));
    this.server.on('error', (e) => this.log('error', 'agent-socket-error', { path: options.socketPath, error: e }));
  }

  get socketPath(): string {
    return this.options.socketPath;
  }

  /** Whether an agent has said hello and is still there. */
  get connected(): boolean {
    return this.session !== null && this.session.hello !== null && !this.session.closed;
  }

  /** The connected agent's hello (its name), if any. */
  get agent(): HelloMessage | null {
    return this.connected ? this.session!.hello : null;
  }

  /** The link's part of a BridgeSnapshot. */
  snapshot(): AgentSnapshot {
    const c = this.counters;
    const hello = this.agent;
    return {
      connected: hello !== null,
      ...(hello ? { name: hello.name } : {}),
      messagesIn: c.messagesIn,
      messagesOut: c.messagesOut,
      protocolErrors: c.protocolErrors,
      heartbeatTimeouts: c.heartbeatTimeouts,
    };
  }

  /** Starts listening. Throws `SocketInUseError` if another bridge is listening on the path. */
  async listen(): Promise<void> {
    if (this.closing) throw new AgentLinkStateError(this.socketPath, 'closed');
    if (this.identity) return;
    this.identity = await listenUnixSocket(this.server, this.socketPath, { what: 'agent socket' });
    this.log('info', 'agent-socket-listening', { path: this.socketPath });
  }

  /** Stops listening, drops the agent (a `disconnected` event if one was connected) and every other connection, and removes the socket file if it is still ours. */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    if (this.session) this.endSession(this.session, 'bridge closing');
    for (const s of [...this.pending]) this.endSession(s, 'bridge closing');
    for (const socket of this.refused) socket.destroy();
    await closeServer(this.server);
    if (this.identity) removeSocketFile(this.identity);
    this.identity = null;
  }

  /** Asks the agent for a checkpoint. False if no agent is connected (the replicator's timeout then applies). */
  sendCheckpoint(req: { epoch: number; reason: CheckpointReason; flow?: string }): boolean {
    const msg: CheckpointMessage = { type: 'checkpoint', epoch: req.epoch, reason: req.reason };
    if (req.flow !== undefined) msg.flow = req.flow;
    return this.sendToAgent(msg);
  }

  sendFailover(epoch: number, survivor?: string): boolean {
    return this.sendToAgent(survivor === undefined ? { type: 'failover', epoch } : { type: 'failover', epoch, survivor });
  }

  /** (v2) The backup slot reads `port` now; v1 agents are not told (they never move the backup). */
  sendBackupAttached(epoch: number, port: string): boolean {
    const hello = this.session?.hello;
    if (!hello || hello.version < 2) return false;
    return this.sendToAgent({ type: 'backup-attached', epoch, port });
  }

  sendReprotect(epoch: number, backup?: string): boolean {
    return this.sendToAgent(backup === undefined ? { type: 'reprotect', epoch } : { type: 'reprotect', epoch, backup });
  }

  private sendToAgent(msg: AgentMessage): boolean {
    const s = this.session;
    if (!s || !s.hello || s.closed) {
      this.log('warn', 'agent-not-connected', { dropped: msg.type, epoch: (msg as { epoch?: number }).epoch });
      return false;
    }
    this.send(s, msg);
    return !s.closed;
  }

  private send(s: AgentSession, msg: AgentMessage): void {
    if (s.closed || s.socket.destroyed) return;
    if (s.socket.writableLength > this.maxOutputBytes) {
      this.endSession(s, `more than ${this.maxOutputBytes} bytes of our messages unread`);
      return;
    }
    s.socket.write(encodeAgentMessage(msg));
    this.counters.messagesOut++;
  }

  // ───────────────────────── connections ─────────────────────────

  private accept(socket: Socket): void {
    if (this.closing) {
      socket.destroy();
      return;
    }
    const refusedPeer = refusePeer(socket);
    if (refusedPeer) {
      this.counters.refusedPeer++;
      this.log('warn', 'agent-peer-refused', { why: refusedPeer });
      socket.on('error', () => {});
      socket.destroy();
      return;
    }
    if (this.session) {
      this.counters.connectionsRefused++;
      const current = this.session.hello ? `agent "${this.session.hello.name}"` : 'another connection';
      this.log('warn', 'agent-refused', { why: `${current} is already connected` });
      socket.on('error', () => {});
      socket.end(encodeAgentMessage({ type: 'error', error: `${current} is already connected to this bridge; one agent at a time` }));
      this.counters.messagesOut++;
      // Read and drop what it says, so its close is seen; do not wait long for a peer that never closes.
      socket.resume();
      this.refused.add(socket);
      const timer = setTimeout(() => socket.destroy(), 1000);
      socket.on('close', () => {
        clearTimeout(timer);
        this.refused.delete(socket);
      });
      return;
    }
    if (this.pending.size >= this.maxPending) {
      const oldest = this.pending.values().next().value as AgentSession;
      this.counters.pendingEvicted++;
      this.endSession(oldest, `closed to make room: ${this.maxPending} connections were waiting for their hello`);
    }
    this.counters.connectionsAccepted++;
    const s = new AgentSession(socket, this.nextSessionId++, this.maxLineBytes);
    this.pending.add(s);
    socket.setNoDelay?.(true);
    socket.on('data', (chunk: Buffer) => this.onData(s, chunk));
    socket.on('error', (e) => this.log('warn', 'agent-socket-error', { session: s.id, error: e }));
    socket.on('close', () => this.endSession(s, 'agent closed the connection'));
    s.timer = setTimeout(() => this.onNoHello(s), this.helloTimeoutMs);
    s.timer.unref();
    this.send(s, { type: 'hello', version: AGENT_PROTOCOL_VERSION, role: 'bridge', name: this.options.name });
  }

  private onNoHello(s: AgentSession): void {
    if (s.closed || s.hello) return;
    this.counters.helloTimeouts++;
    this.log('warn', 'agent-hello-timeout', { session: s.id, helloTimeoutMs: this.helloTimeoutMs });
    this.endSession(s, `no hello within ${this.helloTimeoutMs} ms`);
  }

  private onSilence(s: AgentSession): void {
    if (s.closed) return;
    this.counters.heartbeatTimeouts++;
    this.endSession(s, `no message from the agent for ${this.heartbeatTimeoutMs} ms`);
  }

  private endSession(s: AgentSession, why: string): void {
    if (s.closed) return;
    s.closed = true;
    if (s.timer) clearTimeout(s.timer);
    s.splitter.reset();
    s.socket.destroy();
    this.pending.delete(s);
    if (this.session === s) this.session = null;
    if (s.hello) {
      this.lastHeartbeat = null;
      this.log('warn', 'agent-disconnected', { agent: s.hello.name, why });
      this.emit('disconnected', why);
    } else {
      this.log('info', 'agent-connection-closed', { session: s.id, why });
    }
  }

  /** A pending connection said hello: it becomes the agent, unless another one did first. */
  private promote(s: AgentSession, hello: HelloMessage): void {
    if (this.session) {
      const current = this.session.hello ? `agent "${this.session.hello.name}"` : 'another agent';
      this.counters.connectionsRefused++;
      this.send(s, { type: 'error', error: `${current} is already connected to this bridge; one agent at a time` });
      this.endSession(s, `${current} is already connected`);
      return;
    }
    this.pending.delete(s);
    this.session = s;
    s.hello = hello;
    if (s.timer) clearTimeout(s.timer);
    s.timer = setTimeout(() => this.onSilence(s), this.heartbeatTimeoutMs);
    s.timer.unref();
    this.log('info', 'agent-connected', { agent: hello.name, session: s.id });
    for (const other of [...this.pending]) {
      this.counters.connectionsRefused++;
      this.send(other, { type: 'error', error: `agent "${hello.name}" said hello first; one agent at a time` });
      this.endSession(other, `agent "${hello.name}" said hello first`);
    }
    this.emit('connected', hello);
  }

  /** A throwing listener is a bug in the bridge; it must not take the link (and the other lines of this read) down with it. */
  private emit<K extends keyof AgentLinkListener>(event: K, ...args: Parameters<AgentLinkListener[K]>): void {
    const fn = this.listener[event] as ((...a: Parameters<AgentLinkListener[K]>) => void) | undefined;
    if (!fn) return;
    try {
      fn.apply(this.listener, args);
    } catch (e) {
      this.log('error', 'agent-listener-failed', { event, error: e });
    }
  }

  private onData(s: AgentSession, chunk: Buffer): void {
    for (const piece of s.splitter.push(chunk)) {
      if (s.closed) return;
      if (piece.kind === 'overlong') {
        this.reject(s, new AgentProtocolError('line-too-long', `line longer than ${this.maxLineBytes} bytes; skipped up to its newline`, piece.excerpt));
        continue;
      }
      let msg;
      try {
        msg = parseAgentMessage(piece.line);
      } catch (e) {
        if (!(e instanceof AgentProtocolError)) throw e;
        if (e.kind === 'bad-version') {
          this.reject(s, e);
          this.endSession(s, e.why);
          return;
        }
        this.reject(s, e);
        continue;
      }
      this.counters.messagesIn++;
      // Only the agent's messages keep it alive; a pending peer's deadline does not move.
      if (s.hello) s.timer?.refresh();
      this.dispatch(s, msg, piece.line);
    }
  }

  private reject(s: AgentSession, e: AgentProtocolError): void {
    this.counters.protocolErrors++;
    this.log('warn', 'agent-protocol-error', { kind: e.kind, why: e.why, line: e.excerpt });
    this.send(s, errorReplyFor(e));
    if (!s.hello && ++s.errorsBeforeHello > MAX_PENDING_ERRORS) this.endSession(s, `${s.errorsBeforeHello} protocol errors before hello`);
  }

  private dispatch(s: AgentSession, msg: ParsedAgentMessage, line: string): void {
    if (msg.type === 'unknown') {
      this.counters.unknownMessages++;
      this.log('info', 'agent-unknown-message', { type: msg.unknownType });
      return;
    }
    if (msg.type === 'error') {
      this.log('warn', 'agent-reported-error', { error: msg.error, line: msg.line });
      return;
    }
    if (msg.type === 'hello') {
      if (msg.role !== 'agent') {
        this.reject(s, new AgentProtocolError('bad-field', `hello: role must be "agent" on the agent socket, got "${msg.role}"`, line));
        this.endSession(s, 'peer is not an agent');
        return;
      }
      if (s.hello) {
        this.log('info', 'agent-repeated-hello', { agent: msg.name });
        return;
      }
      this.promote(s, msg);
      return;
    }
    if (!s.hello) {
      this.reject(s, new AgentProtocolError('bad-field', `${msg.type} before hello: say hello first`, line));
      return;
    }
    switch (msg.type) {
      case 'checkpoint-done':
        this.emit('checkpointDone', msg);
        return;
      case 'checkpoint-failed':
        this.emit('checkpointFailed', msg);
        return;
      case 'heartbeat':
        this.lastHeartbeat = msg;
        this.emit('heartbeat', msg);
        return;
      case 'primary-down':
        this.log('warn', 'agent-primary-down', { reason: msg.reason });
        this.emit('primaryDown', msg);
        return;
      case 'backup-down':
        this.log('warn', 'agent-backup-down', { reason: msg.reason });
        this.emit('backupDown', msg);
        return;
      case 'checkpoint':
      case 'failover':
      case 'reprotect':
        this.reject(s, new AgentProtocolError('bad-field', `${msg.type} goes from the bridge to the agent, not the other way`, excerptOf(line)));
        return;
    }
  }
}
