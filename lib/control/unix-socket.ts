/**
 * Listening on a UNIX stream socket path the way both shadowvm sockets (the
 * agent socket and the control socket) need it, with no window for another
 * local user:
 *
 * - Every directory on the path must be trustworthy: owned by root or by
 *   us, and not writable by other users unless the sticky bit stops them
 *   from renaming or deleting our entries (/tmp). Symbolic links on the way
 *   must be owned by root or by us, and lead to trustworthy directories. A
 *   directory that fails this is a `SocketPathError` (one line, exit 2):
 *   another user who owns or can write a directory on the path can replace
 *   the socket or read what we send.
 * - Missing directories are created one at a time with mode 0700 and
 *   checked again with `lstat` after creation (one that appeared in the
 *   meantime is judged like any existing one).
 * - The socket is born with its final mode: it is bound under umask 077 at
 *   a random hidden name in the same directory and then hard-linked to its
 *   path, so nobody can connect through a 0777 socket before a `chmod`, and
 *   the link fails instead of replacing a socket someone else put there.
 * - A socket file at the path that answers is another live process:
 *   `SocketInUseError`, left alone. One that does not answer (a crashed
 *   bridge) is removed, and only if it is still the same inode after the
 *   probe.
 * - At close, only the socket file this process made is removed (same
 *   device and inode as recorded at listen). libuv unlinks a pipe's bind
 *   path when the server closes; since that is the hidden temporary name,
 *   already gone, it can never delete another process's socket at the path.
 *
 * Peer credentials: Node cannot read SO_PEERCRED, so who may connect is
 * decided by the file system alone: the socket is 0600 and owned by the
 * bridge's user (root), in directories nobody else can write. A process
 * that can connect is therefore root or the bridge's own user.
 */
import { isMainThread } from 'node:worker_threads';
import { randomBytes } from 'node:crypto';
import { chmodSync, linkSync, lstatSync, mkdirSync, realpathSync, Stats, unlinkSync, chownSync } from 'node:fs';
import { connect, Server } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { UserFacingError } from '../errors';

/** Another process is listening on the socket path. */
export class SocketInUseError extends UserFacingError {
  constructor(readonly path: string, readonly what: string) {
    super(`${what} ${path}: socket already in use (another process is listening on it; stop it or choose another name)`);
    this.name = 'SocketInUseError';
  }
}

/** The socket path cannot be used: it is not a socket, a directory on it is not safe, or it cannot be made. */
export class SocketPathError extends UserFacingError {
  constructor(readonly path: string, readonly what: string, readonly detail: string) {
    super(`${what} ${path}: ${detail}`);
    this.name = 'SocketPathError';
  }
}

/** Whether something accepts connections on `path` (false when refused or absent). */
export function probeUnixSocket(path: string, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = connect(path);
    const timer = setTimeout(() => {
      // A listener that does not accept within the timeout (backlog full, stopped process) is still alive.
      sock.destroy();
      resolve(true);
    }, timeoutMs);
    sock.once('connect', () => {
      clearTimeout(timer);
      sock.destroy();
      resolve(true);
    });
    sock.once('error', () => {
      clearTimeout(timer);
      resolve(false);
    });
  });
}

// ───────────────────────── who may own what ─────────────────────────

function effectiveUid(): number {
  return process.geteuid?.() ?? 0;
}

/** Root, or the user this process runs as. */
function isTrustedOwner(uid: number): boolean {
  return uid === 0 || uid === effectiveUid();
}

function octal(mode: number): string {
  return (mode & 0o7777).toString(8).padStart(4, '0');
}

function ownerWords(): string {
  const euid = effectiveUid();
  return euid === 0 ? 'root' : `root or uid ${euid}`;
}

/** Why directory `p` (already known not to be a symbolic link) cannot hold our sockets, or null. */
function directoryProblem(p: string, st: Stats): string | null {
  if (!st.isDirectory()) return `${p} is not a directory`;
  if (!isTrustedOwner(st.uid)) return `directory ${p} is owned by uid ${st.uid}, not by ${ownerWords()}; refusing to use it`;
  const sticky = (st.mode & 0o1000) !== 0;
  if (!sticky && (st.mode & 0o002) !== 0) {
    return `directory ${p} is writable by every user (mode ${octal(st.mode)}, no sticky bit); refusing to use it`;
  }
  if (!sticky && (st.mode & 0o020) !== 0 && st.gid !== 0) {
    return `directory ${p} is writable by group ${st.gid} (mode ${octal(st.mode)}, no sticky bit); refusing to use it`;
  }
  return null;
}

class UntrustedPath extends Error {}

/**
 * Walks absolute path `abs` from `/`: every existing component must be a
 * trustworthy directory (or a symbolic link owned by a trusted user to
 * one). Returns the real path of the deepest existing directory and the
 * names still missing below it. Throws `UntrustedPath`.
 */
function walkDirectories(abs: string, depth = 0): { existing: string; missing: string[] } {
  if (depth > 8) throw new UntrustedPath(`too many levels of symbolic links under ${abs}`);
  const parts = abs.split('/').filter((p) => p.length > 0);
  let cur = '/';
  const rootProblem = directoryProblem('/', lstatSync('/'));
  if (rootProblem) throw new UntrustedPath(rootProblem);
  for (let i = 0; i < parts.length; i++) {
    const next = cur === '/' ? `/${parts[i]}` : `${cur}/${parts[i]}`;
    let st: Stats;
    try {
      st = lstatSync(next);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { existing: cur, missing: parts.slice(i) };
      throw new UntrustedPath(`cannot inspect ${next}: ${(e as Error).message}`);
    }
    if (st.isSymbolicLink()) {
      if (!isTrustedOwner(st.uid)) throw new UntrustedPath(`${next} is a symbolic link owned by uid ${st.uid}; refusing to follow it`);
      let target: string;
      try {
        target = realpathSync(next);
      } catch {
        throw new UntrustedPath(`${next} is a symbolic link to nowhere`);
      }
      const sub = walkDirectories(target, depth + 1);
      if (sub.missing.length > 0) throw new UntrustedPath(`${next} is a symbolic link to nowhere`);
      cur = sub.existing;
      continue;
    }
    const problem = directoryProblem(next, st);
    if (problem) throw new UntrustedPath(problem);
    cur = next;
  }
  return { existing: cur, missing: [] };
}

/**
 * Runs `fn` (which creates files) under umask 077. A worker thread may not
 * change the process's umask (the data-plane thread of `shadowvm run`), so
 * there the main thread must have set it for the whole process before
 * starting it; a wider one is refused rather than used.
 */
export function withUmask077<T>(fn: () => T): T {
  if (!isMainThread) {
    const current = process.umask();
    if ((current & 0o077) !== 0o077) throw new Error(`the process umask is ${current.toString(8).padStart(3, '0')}, not 077, and a worker thread cannot change it`);
    return fn();
  }
  const oldMask = process.umask(0o077);
  try {
    return fn();
  } finally {
    process.umask(oldMask);
  }
}

/**
 * Makes sure directory `dir` exists and can hold our sockets: checks every
 * existing directory on the way and creates the missing ones (mode
 * `dirMode`, umask 077), checking each again after creation.
 */
export function preparePrivateDirectory(dir: string, what: string, socketPath: string, dirMode = 0o700): void {
  const fail = (detail: string) => new SocketPathError(socketPath, what, detail);
  let walked: { existing: string; missing: string[] };
  try {
    walked = walkDirectories(resolve(dir));
  } catch (e) {
    if (e instanceof UntrustedPath) throw fail(e.message);
    throw fail(`cannot inspect its directory: ${(e as Error).message}`);
  }
  let cur = walked.existing;
  for (const name of walked.missing) {
    cur = join(cur, name);
    try {
      withUmask077(() => {
        mkdirSync(cur, { mode: dirMode });
        chmodSync(cur, dirMode);
      });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw fail(`cannot create its directory: ${(e as Error).message}`);
    }
    // Created by us, or by someone else in the meantime: judged the same way. Never followed if it is a link.
    const st = lstatSync(cur);
    if (st.isSymbolicLink()) throw fail(`${cur} appeared as a symbolic link while it was being created; refusing to use it`);
    const problem = directoryProblem(cur, st);
    if (problem) throw fail(problem);
  }
}

/**
 * Why a client should not talk to the socket at `path`, or null: the socket
 * or a directory on the way to it is owned by or writable by another user
 * (who could have put a fake bridge there). A missing socket is not a
 * problem here: connecting says so.
 */
export function untrustedSocketReason(path: string): string | null {
  const abs = resolve(path);
  let st: Stats;
  try {
    st = lstatSync(abs);
  } catch {
    return null;
  }
  if (st.isSymbolicLink()) {
    if (!isTrustedOwner(st.uid)) return `${abs} is a symbolic link owned by uid ${st.uid}`;
    try {
      return untrustedSocketReason(realpathSync(abs));
    } catch {
      return null;
    }
  }
  if (!st.isSocket()) return `${abs} is not a socket`;
  if (!isTrustedOwner(st.uid)) return `${abs} is owned by uid ${st.uid}, not by ${ownerWords()}`;
  try {
    walkDirectories(dirname(abs));
  } catch (e) {
    return (e as Error).message;
  }
  return null;
}

// ───────────────────────── listen / close ─────────────────────────

function listenOnce(server: Server, path: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (e: Error) => {
      server.off('listening', onListening);
      reject(e);
    };
    const onListening = () => {
      server.off('error', onError);
      resolve();
    };
    server.once('error', onError);
    server.once('listening', onListening);
    // The pipe is bound inside listen(), synchronously: the umask only has to cover this call.
    withUmask077(() => server.listen(path));
  });
}

export interface UnixListenOptions {
  /** Names the socket in errors: "agent socket", "control socket". */
  what: string;
  /** Default 0o600. */
  mode?: number;
  /** For a parent directory that has to be created; default 0o700. */
  dirMode?: number;
  /** Group of the socket file (chown before it appears at its path), e.g. a group of operators allowed to connect. */
  gid?: number;
  /** Group that may enter the socket's own directory (when this process owns it): it gets this group and read/search for it. */
  dirGid?: number;
}

/** What a listening socket needs at close: remove the file only if it is still ours. */
export interface UnixSocketIdentity {
  path: string;
  ino: number;
  dev: number;
}

function errnoOf(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException).code;
}

/** Removes a socket file nobody answers on; a live one is `SocketInUseError`, anything else `SocketPathError`. */
export async function clearStaleSocket(path: string, what: string): Promise<void> {
  let before: Stats;
  try {
    before = lstatSync(path);
  } catch (e) {
    if (errnoOf(e) === 'ENOENT') return;
    throw new SocketPathError(path, what, `cannot inspect it: ${(e as Error).message}`);
  }
  if (!before.isSocket()) throw new SocketPathError(path, what, 'exists and is not a socket; refusing to replace it');
  if (await probeUnixSocket(path)) throw new SocketInUseError(path, what);
  let after: Stats;
  try {
    after = lstatSync(path);
  } catch (e) {
    if (errnoOf(e) === 'ENOENT') return;
    throw new SocketPathError(path, what, `cannot inspect it: ${(e as Error).message}`);
  }
  // Replaced while we probed: whoever did it is alive.
  if (after.ino !== before.ino || after.dev !== before.dev) throw new SocketInUseError(path, what);
  try {
    unlinkSync(path);
  } catch (e) {
    if (errnoOf(e) !== 'ENOENT') throw new SocketPathError(path, what, `cannot remove the stale socket: ${(e as Error).message}`);
  }
}

/**
 * Makes `server` listen on `path` (see the header for how). Throws
 * `SocketInUseError` when another process answers there and
 * `SocketPathError` for anything else that makes the path unusable.
 */
export async function listenUnixSocket(server: Server, path: string, options: UnixListenOptions): Promise<UnixSocketIdentity> {
  const { what } = options;
  const abs = resolve(path);
  const dir = dirname(abs);
  preparePrivateDirectory(dir, what, path, options.dirMode ?? 0o700);
  if (options.dirGid !== undefined) {
    const st = lstatSync(dir);
    if (st.uid === (process.getuid?.() ?? 0)) {
      chownSync(dir, -1, options.dirGid);
      chmodSync(dir, (st.mode & 0o700) | 0o050);
    }
  }
  await clearStaleSocket(abs, what);

  let temp = '';
  for (let attempt = 0; ; attempt++) {
    temp = join(dir, `.${randomBytes(5).toString('hex')}.sock`);
    try {
      await listenOnce(server, temp);
      break;
    } catch (e) {
      if (errnoOf(e) === 'EADDRINUSE' && attempt < 3) continue;
      throw new SocketPathError(path, what, `cannot listen: ${(e as Error).message}`);
    }
  }
  let linked = false;
  try {
    chmodSync(temp, options.mode ?? 0o600);
    if (options.gid !== undefined) chownSync(temp, -1, options.gid);
    linkSync(temp, abs);
    linked = true;
  } catch (e) {
    // EEXIST: a socket appeared at the path after the stale check; whoever made it is alive.
    if (errnoOf(e) === 'EEXIST') throw new SocketInUseError(path, what);
    throw new SocketPathError(path, what, `cannot create the socket: ${(e as Error).message}`);
  } finally {
    try {
      unlinkSync(temp);
    } catch {
      // Gone already.
    }
    if (!linked) await closeServer(server);
  }
  const st = lstatSync(abs);
  return { path: abs, ino: st.ino, dev: st.dev };
}

/** Removes the socket file if it is still the one we created (another process may have replaced it). */
export function removeSocketFile(id: UnixSocketIdentity): void {
  try {
    const st = lstatSync(id.path);
    if (st.isSocket() && st.ino === id.ino && st.dev === id.dev) unlinkSync(id.path);
  } catch {
    // Already gone.
  }
}

/** Closes a server, resolving once it no longer listens. Open connections must be destroyed first, or this waits for them. */
export function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => {
    if (!server.listening) {
      resolve();
      return;
    }
    server.close(() => resolve());
  });
}

