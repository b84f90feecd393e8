/**
 * Sync agent protocol v1 (DESIGN.md, "Sync agent protocol v1"): message
 * types, a validating parser and a line splitter.
 *
 * In:  bytes read from the agent socket, in chunks of any size.
 * Out: complete lines (CRLF or LF), then typed messages; malformed lines
 *      become `AgentProtocolError`s that carry the excerpt and the reason,
 *      so the reader can answer with an `error` message and carry on.
 *
 * Unknown `type`s are not errors (a newer peer may send more): they parse to
 * `{ type: 'unknown' }` and the reader logs and ignores them. Fields a
 * message does not define are ignored for the same reason.
 */
import { CHECKPOINT_REASONS, CheckpointReason } from './replicator';

/**
 * The version this side speaks. 2 adds `port` to `checkpoint-done` (the
 * epoch fence of agents that make each new backup on a fresh interface) and
 * `backup-attached`. 3 gives `port` a meaning when it names the interface the
 * backup already runs behind: the same VM stayed the backup (a COLO
 * secondary), and the agent promises it has been silent since before the
 * checkpoint began and stays silent until `backup-attached`; the bridge then
 * reads that interface through a fresh socket, so what the backup said
 * before the checkpoint, still unread, is dropped (see `checkpoint-done`).
 * Version 1 and 2 peers are still accepted: nothing they send or are sent
 * changed meaning (a v2 agent naming the same interface is not fenced).
 */
export const AGENT_PROTOCOL_VERSION = 3;
export const SUPPORTED_AGENT_PROTOCOL_VERSIONS: readonly number[] = [1, 2, 3];
/** Longest line either side accepts, without its newline. */
export const MAX_AGENT_LINE_BYTES = 64 * 1024;

export type AgentRole = 'bridge' | 'agent';
export const AGENT_ROLES: readonly AgentRole[] = ['bridge', 'agent'];
/** What the agent knows of each VM. */
export type VmLiveness = 'up' | 'down' | 'paused';
export const VM_LIVENESS: readonly VmLiveness[] = ['up', 'down', 'paused'];

/** Both directions, first message on a connection. */
export interface HelloMessage {
  type: 'hello';
  /** One of SUPPORTED_AGENT_PROTOCOL_VERSIONS. */
  version: number;
  role: AgentRole;
  name: string;
}

/** Bridge → agent: make the backup an exact copy of the primary. */
export interface CheckpointMessage {
  type: 'checkpoint';
  epoch: number;
  reason: CheckpointReason;
  /** The flow that triggered it, for the agent's log. */
  flow?: string;
}

/** Agent → bridge: the checkpoint `epoch` finished. */
export interface CheckpointDoneMessage {
  type: 'checkpoint-done';
  epoch: number;
  ms: number;
  /** State moved, in bytes. */
  bytes: number;
  pages?: number;
  /**
   * (v2) The interface the backup now runs behind, when the agent made the
   * new backup on a fresh one (a full copy into a new VM). The bridge moves
   * the backup's slot to it before it applies the checkpoint: frames the
   * old backup sent, still queued on the old interface, are never read, so
   * they can never be compared against the new backup's stream.
   *
   * (v3) The interface the backup already runs behind: the backup VM was
   * overwritten in place (a COLO checkpoint). The agent sends it only once
   * everything the backup said in its old state has reached the interface,
   * and keeps the backup's output held from then until `backup-attached`.
   * The bridge reopens its port on the interface before it applies the
   * checkpoint: the old socket, with whatever the old state said and the
   * bridge had not read yet, is closed unread.
   */
  port?: string;
}

/** Agent → bridge: the checkpoint `epoch` could not be made. */
export interface CheckpointFailedMessage {
  type: 'checkpoint-failed';
  epoch: number;
  error: string;
}

/** Agent → bridge, periodically: the agent is alive and this is what it sees. */
export interface HeartbeatMessage {
  type: 'heartbeat';
  primary: VmLiveness;
  backup: VmLiveness;
}

export interface PrimaryDownMessage {
  type: 'primary-down';
  reason: string;
}

export interface BackupDownMessage {
  type: 'backup-down';
  reason: string;
}

/** Bridge → agent: the backup has been promoted. */
export interface FailoverMessage {
  type: 'failover';
  epoch: number;
  /** The port (tap) of the promoted replica. */
  survivor?: string;
}

/** Bridge → agent: build a new backup from the (new) primary. */
export interface ReprotectMessage {
  type: 'reprotect';
  epoch: number;
  /**
   * The port (tap) of the dead replica, where the new backup goes. The agent
   * answers `checkpoint-done` (or `checkpoint-failed`) with this epoch once
   * the new backup runs.
   */
  backup?: string;
}

/**
 * (v2) Bridge → agent: the backup's slot now reads interface `port` (after a
 * `checkpoint-done` that named it; v3: through a fresh socket, also when the
 * interface did not change). An agent that kept the new backup's output held
 * until now, so that nothing it said could be missed, lets it go.
 */
export interface BackupAttachedMessage {
  type: 'backup-attached';
  epoch: number;
  port: string;
}

/**
 * Both directions: the reply to a line the receiver could not accept
 * (DESIGN: "malformed lines get an `error` reply"). Never answered in turn.
 */
export interface ErrorMessage {
  type: 'error';
  error: string;
  /** The beginning of the offending line, if there was one. */
  line?: string;
}

/** A well-formed message of a type this version does not know: log and ignore. */
export interface UnknownMessage {
  type: 'unknown';
  /** The `type` field as sent. */
  unknownType: string;
  raw: Record<string, unknown>;
}

export type AgentMessage =
  | HelloMessage
  | CheckpointMessage
  | CheckpointDoneMessage
  | CheckpointFailedMessage
  | HeartbeatMessage
  | PrimaryDownMessage
  | BackupDownMessage
  | FailoverMessage
  | ReprotectMessage
  | BackupAttachedMessage
  | ErrorMessage;

export type ParsedAgentMessage = AgentMessage | UnknownMessage;
export type AgentMessageType = AgentMessage['type'];

export type AgentProtocolErrorKind = 'bad-json' | 'not-an-object' | 'missing-field' | 'bad-field' | 'bad-version' | 'line-too-long';

const EXCERPT_CHARS = 120;

export function excerptOf(line: string): string {
  return line.length <= EXCERPT_CHARS ? line : `${line.slice(0, EXCERPT_CHARS)}…`;
}

/** A line that is not a valid protocol v1 message. */
export class AgentProtocolError extends Error {
  /** The beginning of the offending line. */
  readonly excerpt: string;

  constructor(readonly kind: AgentProtocolErrorKind, readonly why: string, line: string) {
    const excerpt = excerptOf(line);
    super(`agent protocol: ${why}: ${JSON.stringify(excerpt)}`);
    this.name = 'AgentProtocolError';
    this.excerpt = excerpt;
  }
}

// ───────────────────────── parsing ─────────────────────────

type Fields = Record<string, unknown>;

/** Reads the fields of one message, throwing with the line as context. */
class FieldReader {
  constructor(private readonly obj: Fields, private readonly line: string, private readonly type: string) {}

  private value(name: string): unknown {
    const v = this.obj[name];
    if (v === undefined) throw new AgentProtocolError('missing-field', `${this.type}: missing field "${name}"`, this.line);
    return v;
  }

  private bad(name: string, expected: string, v: unknown): never {
    throw new AgentProtocolError('bad-field', `${this.type}: field "${name}" must be ${expected}, got ${JSON.stringify(v)}`, this.line);
  }

  string(name: string): string {
    const v = this.value(name);
    return typeof v === 'string' ? v : this.bad(name, 'a string', v);
  }

  optionalString(name: string): string | undefined {
    return this.obj[name] === undefined ? undefined : this.string(name);
  }

  /** A non-negative integer no larger than 2^53 − 1 (epochs, byte and page counts). */
  count(name: string): number {
    const v = this.value(name);
    return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? v : this.bad(name, 'a non-negative integer', v);
  }

  optionalCount(name: string): number | undefined {
    return this.obj[name] === undefined ? undefined : this.count(name);
  }

  /** A non-negative finite number (durations may be fractional). */
  amount(name: string): number {
    const v = this.value(name);
    return typeof v === 'number' && Number.isFinite(v) && v >= 0 ? v : this.bad(name, 'a non-negative number', v);
  }

  oneOf<T extends string>(name: string, allowed: readonly T[]): T {
    const v = this.value(name);
    return typeof v === 'string' && (allowed as readonly string[]).includes(v) ? (v as T) : this.bad(name, `one of ${allowed.join(', ')}`, v);
  }
}

/**
 * Parses one line (without its newline) into a message, or throws
 * `AgentProtocolError` saying what is wrong with it.
 */
export function parseAgentMessage(line: string): ParsedAgentMessage {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch (e) {
    throw new AgentProtocolError('bad-json', `not JSON (${(e as Error).message})`, line);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new AgentProtocolError('not-an-object', 'a message must be a JSON object', line);
  }
  const obj = value as Fields;
  if (obj.type === undefined) throw new AgentProtocolError('missing-field', 'missing field "type"', line);
  if (typeof obj.type !== 'string') throw new AgentProtocolError('bad-field', `field "type" must be a string, got ${JSON.stringify(obj.type)}`, line);
  const type = obj.type;
  const f = new FieldReader(obj, line, type);
  switch (type) {
    case 'hello': {
      const version = obj.version;
      if (version === undefined) throw new AgentProtocolError('missing-field', 'hello: missing field "version"', line);
      if (typeof version !== 'number' || !SUPPORTED_AGENT_PROTOCOL_VERSIONS.includes(version)) {
        throw new AgentProtocolError('bad-version', `hello: protocol version ${JSON.stringify(version)} is not supported (this side speaks ${SUPPORTED_AGENT_PROTOCOL_VERSIONS.join(' and ')})`, line);
      }
      return { type, version, role: f.oneOf('role', AGENT_ROLES), name: f.string('name') };
    }
    case 'checkpoint': {
      const msg: CheckpointMessage = { type, epoch: f.count('epoch'), reason: f.oneOf('reason', CHECKPOINT_REASONS) };
      const flow = f.optionalString('flow');
      if (flow !== undefined) msg.flow = flow;
      return msg;
    }
    case 'checkpoint-done': {
      const msg: CheckpointDoneMessage = { type, epoch: f.count('epoch'), ms: f.amount('ms'), bytes: f.count('bytes') };
      const pages = f.optionalCount('pages');
      if (pages !== undefined) msg.pages = pages;
      const port = f.optionalString('port');
      if (port !== undefined) {
        if (!/^[A-Za-z0-9_.:-]{1,15}$/.test(port)) throw new AgentProtocolError('bad-field', `checkpoint-done: field "port" must be an interface name, got ${JSON.stringify(port)}`, line);
        msg.port = port;
      }
      return msg;
    }
    case 'checkpoint-failed':
      return { type, epoch: f.count('epoch'), error: f.string('error') };
    case 'heartbeat':
      return { type, primary: f.oneOf('primary', VM_LIVENESS), backup: f.oneOf('backup', VM_LIVENESS) };
    case 'primary-down':
    case 'backup-down':
      return { type, reason: f.string('reason') };
    case 'failover': {
      const msg: FailoverMessage = { type, epoch: f.count('epoch') };
      const survivor = f.optionalString('survivor');
      if (survivor !== undefined) msg.survivor = survivor;
      return msg;
    }
    case 'reprotect': {
      const msg: ReprotectMessage = { type, epoch: f.count('epoch') };
      const backup = f.optionalString('backup');
      if (backup !== undefined) msg.backup = backup;
      return msg;
    }
    case 'backup-attached':
      return { type, epoch: f.count('epoch'), port: f.string('port') };
    case 'error': {
      const msg: ErrorMessage = { type, error: f.string('error') };
      const excerpt = f.optionalString('line');
      if (excerpt !== undefined) msg.line = excerpt;
      return msg;
    }
    default:
      return { type: 'unknown', unknownType: type, raw: obj };
  }
}

/** One message as a line, newline included. */
export function encodeAgentMessage(msg: AgentMessage): string {
  return `${JSON.stringify(msg)}\n`;
}

/** The `error` reply to a line that could not be accepted. */
export function errorReplyFor(err: AgentProtocolError): ErrorMessage {
  return { type: 'error', error: err.why, line: err.excerpt };
}

/** DESIGN: the agent socket of the bridge named `name`. */
export function defaultAgentSocketPath(name: string): string {
  return `/run/shadowvm/${name}/agent.sock`;
}

// ───────────────────────── line splitting ─────────────────────────

export type SplitLine =
  | { kind: 'line'; line: string }
  /** A line longer than the limit: what was read of it is dropped, up to its newline. */
  | { kind: 'overlong'; excerpt: string };

const NEWLINE = 0x0a;
const CR = 0x0d;

/**
 * Cuts a byte stream into lines. Chunks may end anywhere, even inside a
 * UTF-8 sequence: bytes are kept until their newline arrives. A line longer
 * than `maxLineBytes` is reported once, as soon as it is known to be too
 * long, and the rest of it is skipped up to the next newline; what follows
 * is read normally. Blank lines are skipped.
 *
 * Memory: at most `maxLineBytes` + one chunk is held.
 */
export class LineSplitter {
  private parts: Buffer[] = [];
  private partBytes = 0;
  /** Inside an overlong line: drop bytes until the next newline. */
  private discarding = false;

  constructor(readonly maxLineBytes = MAX_AGENT_LINE_BYTES) {}

  /** Bytes of an unfinished line waiting for its newline. */
  get pendingBytes(): number {
    return this.partBytes;
  }

  push(chunk: Buffer): SplitLine[] {
    const out: SplitLine[] = [];
    let start = 0;
    while (start < chunk.length) {
      const nl = chunk.indexOf(NEWLINE, start);
      const end = nl < 0 ? chunk.length : nl;
      this.take(chunk.subarray(start, end), out);
      if (nl < 0) break;
      this.endLine(out);
      start = nl + 1;
    }
    return out;
  }

  /** Forgets an unfinished line (the connection ended before its newline). */
  reset(): void {
    this.parts = [];
    this.partBytes = 0;
    this.discarding = false;
  }

  private take(piece: Buffer, out: SplitLine[]): void {
    if (piece.length === 0) return;
    if (this.discarding) return;
    // A trailing CR is part of a CRLF ending, not of the line: allow one byte for it.
    if (this.partBytes + piece.length > this.maxLineBytes + 1) {
      const head = Buffer.concat([...this.parts, piece.subarray(0, Math.min(piece.length, EXCERPT_CHARS * 4))]);
      out.push({ kind: 'overlong', excerpt: excerptOf(head.toString('utf8')) });
      this.discarding = true;
      this.parts = [];
      this.partBytes = 0;
      return;
    }
    // Copy: the reader may reuse the chunk's memory after `push` returns.
    this.parts.push(Buffer.from(piece));
    this.partBytes += piece.length;
  }

  private endLine(out: SplitLine[]): void {
    if (this.discarding) {
      this.discarding = false;
      return;
    }
    let bytes = this.parts.length === 1 ? this.parts[0] : Buffer.concat(this.parts, this.partBytes);
    this.parts = [];
    this.partBytes = 0;
    if (bytes.length > 0 && bytes[bytes.length - 1] === CR) bytes = bytes.subarray(0, bytes.length - 1);
    if (bytes.length > this.maxLineBytes) {
      out.push({ kind: 'overlong', excerpt: excerptOf(bytes.subarray(0, EXCERPT_CHARS * 4).toString('utf8')) });
      return;
    }
    const line = bytes.toString('utf8');
    if (line.trim().length === 0) return;
    out.push({ kind: 'line', line });
  }
}
