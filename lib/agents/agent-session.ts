/**
 * The agent's side of the bridge connection, shared by every sync agent:
 * connect to the bridge's agent socket, say hello, send heartbeats, split
 * and parse lines, answer malformed ones with `error`, and reconnect with
 * back-off (doubling from `reconnectInitialMs` to `reconnectMaxMs`) whenever
 * the bridge is absent or goes away. What a message means is the agent's.
 *
 *   bridge ◄──hello, heartbeat, answers── AgentSession ◄── the agent (handler)
 *   bridge ──checkpoint, failover, reprotect──► AgentSession ──► handler.message
 */
import { connect, Socket } from 'node:net';
import { LogFn } from '../control/logger';
import {
  AgentMessage,
  AgentProtocolError,
  encodeAgentMessage,
  errorReplyFor,
  LineSplitter,
  ParsedAgentMessage,
  parseAgentMessage,
  VmLiveness,
} from '../replicate/agent-protocol';

export interface AgentSessionOptions {
  socketPath: string;
  /** Sent in hello. */
  name: string;
  /** The protocol version this agent speaks (the lab agent: 1). */
  version: number;
  heartbeatMs: number;
  reconnectInitialMs: number;
  reconnectMaxMs: number;
  /** Prefix of this agent's log events, e.g. "lab-agent". */
  logPrefix: string;
  log: LogFn;
}

export interface AgentSessionHandler {
  /** A bridge → agent message (checkpoint, failover, reprotect), after the bridge said hello. */
  message(msg: ParsedAgentMessage): void;
  /** What the heartbeat reports now. */
  liveness(): { primary: VmLiveness; backup: VmLiveness };
  /** The bridge said hello on a new connection. */
  sessionStarted?(): void;
  /** The connection is gone (answers to its requests have nowhere to go). */
  sessionEnded?(): void;
}

export interface AgentSessionStats {
  sessions: number;
  connectAttempts: number;
  heartbeats: number;
  protocolErrors: number;
  /** `error` messages the bridge sent us. */
  errorsFromBridge: number;
}

export class AgentSession {
  readonly stats: AgentSessionStats = { sessions: 0, connectAttempts: 0, heartbeats: 0, protocolErrors: 0, errorsFromBridge: 0 };
  private socket: Socket | null = null;
  private bridgeSaidHello = false;
  private bridgeHelloVersion = 0;
  private stopped = false;
  private reconnectDelayMs: number;
  private reconnectTimer: NodeJS.Timeout | null = null;
  private heartbeatTimer: NodeJS.Timeout | null = null;
  private closedSocket: Promise<void> = Promise.resolve();

  constructor(private readonly o: AgentSessionOptions, private readonly handler: AgentSessionHandler) {
    this.reconnectDelayMs = o.reconnectInitialMs;
    this.connect();
  }

  /** The protocol version the bridge said it speaks on the current connection (0: no hello yet). */
  get bridgeVersion(): number {
    return this.bridgeSaidHello ? this.bridgeHelloVersion : 0;
  }

  /** Whether the bridge has said hello on the current connection. */
  get connected(): boolean {
    return this.socket !== null && this.bridgeSaidHello;
  }

  /** Sends a message if connected; false if it could not be sent. */
  send(msg: AgentMessage): boolean {
    const s = this.socket;
    if (!s || s.destroyed || !s.writable) return false;
    s.write(encodeAgentMessage(msg));
    return true;
  }

  /** Sends a heartbeat now (e.g. right after a VM's state changed). */
  heartbeat(): void {
    if (!this.connected) return;
    this.stats.heartbeats++;
    const l = this.handler.liveness();
    this.send({ type: 'heartbeat', primary: l.primary, backup: l.backup });
  }

  /** Rejects a message as the protocol says: an `error` reply and a log line. */
  reject(e: AgentProtocolError): void {
    this.stats.protocolErrors++;
    this.o.log('warn', `${this.o.logPrefix}-protocol-error`, { kind: e.kind, why: e.why, line: e.excerpt });
    this.send(errorReplyFor(e));
  }

  /** Disconnects and stops reconnecting. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    const closed = this.closedSocket;
    this.socket?.end();
    this.socket?.destroy();
    await closed;
  }

  private connect(): void {
    if (this.stopped) return;
    this.stats.connectAttempts++;
    const socket = connect(this.o.socketPath);
    this.socket = socket;
    this.closedSocket = new Promise((resolve) => socket.once('close', () => resolve()));
    const splitter = new LineSplitter();
    socket.on('connect', () => {
      this.o.log('info', `${this.o.logPrefix}-connected`, { path: this.o.socketPath });
      this.send({ type: 'hello', version: this.o.version, role: 'agent', name: this.o.name });
      this.heartbeatTimer = setInterval(() => this.heartbeat(), this.o.heartbeatMs);
    });
    socket.on('data', (chunk: Buffer) => {
      for (const piece of splitter.push(chunk)) {
        if (piece.kind === 'overlong') {
          this.reject(new AgentProtocolError('line-too-long', 'line too long; skipped', piece.excerpt));
          continue;
        }
        try {
          this.receive(parseAgentMessage(piece.line));
        } catch (e) {
          if (!(e instanceof AgentProtocolError)) throw e;
          this.reject(e);
          if (e.kind === 'bad-version') socket.destroy();
        }
      }
    });
    socket.on('error', (e: NodeJS.ErrnoException) => {
      // ENOENT / ECONNREFUSED: the bridge is not (yet) there; the back-off handles it.
      this.o.log(this.bridgeSaidHello ? 'warn' : 'debug', `${this.o.logPrefix}-socket-error`, { path: this.o.socketPath, code: e.code, error: e });
    });
    socket.on('close', () => this.onClose(socket));
  }

  private onClose(socket: Socket): void {
    if (this.socket !== socket) return;
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = null;
    const hadSession = this.bridgeSaidHello;
    this.socket = null;
    this.bridgeSaidHello = false;
    this.handler.sessionEnded?.();
    if (this.stopped) return;
    if (hadSession) {
      this.o.log('warn', `${this.o.logPrefix}-disconnected`, { path: this.o.socketPath });
      this.reconnectDelayMs = this.o.reconnectInitialMs;
    }
    const delay = this.reconnectDelayMs;
    this.reconnectDelayMs = Math.min(this.reconnectDelayMs * 2, this.o.reconnectMaxMs);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      this.connect();
    }, delay);
  }

  private receive(msg: ParsedAgentMessage): void {
    switch (msg.type) {
      case 'hello':
        if (msg.role !== 'bridge') {
          this.reject(new AgentProtocolError('bad-field', `hello: expected role "bridge", got "${msg.role}"`, JSON.stringify(msg)));
          this.socket?.destroy();
          return;
        }
        this.bridgeSaidHello = true;
        this.bridgeHelloVersion = msg.version;
        this.stats.sessions++;
        this.o.log('info', `${this.o.logPrefix}-session`, { bridge: msg.name, version: msg.version });
        this.handler.sessionStarted?.();
        this.heartbeat();
        return;
      case 'error':
        this.stats.errorsFromBridge++;
        this.o.log('warn', `${this.o.logPrefix}-bridge-error`, { error: msg.error, line: msg.line });
        return;
      case 'unknown':
        this.o.log('info', `${this.o.logPrefix}-unknown-message`, { type: msg.unknownType });
        return;
      case 'checkpoint':
      case 'failover':
      case 'reprotect':
      case 'backup-attached':
        if (!this.bridgeSaidHello) {
          this.reject(new AgentProtocolError('bad-field', `${msg.type} before hello`, JSON.stringify(msg)));
          return;
        }
        this.handler.message(msg);
        return;
      default:
        this.reject(new AgentProtocolError('bad-field', `${msg.type} goes from the agent to the bridge, not the other way`, JSON.stringify(msg)));
    }
  }
}
