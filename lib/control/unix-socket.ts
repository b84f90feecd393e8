/**
 * Listening on a UNIX stream socket path the way both shadowvm sockets (the
 * agent socket and the control socket) need it: parent directory created
 * 0700, the socket itself 0600, a stale socket file left by a crashed
 * bridge replaced, and a live one (another bridge with the same name)
 * refused rather than stolen.
 */
import { chmodSync, lstatSync, mkdirSync, unlinkSync } from 'node:fs';
import { connect, Server } from 'node:net';
import { dirname } from 'node:path';

/** Another process is listening on the socket path. */
export class SocketInUseError extends Error {
  constructor(readonly path: string, readonly what: string) {
    super(`${what} ${path}: socket already in use (another process is listening on it; stop it or choose another name)`);
    this.name = 'SocketInUseError';
  }
}

/** The socket path cannot be used: it is not a socket, or the directory cannot be made. */
export class SocketPathError extends Error {
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
    server.listen(path);
  });
}

export interface UnixListenOptions {
  /** Names the socket in errors: "agent socket", "control socket". */
  what: string;
  /** Default 0o600. */
  mode?: number;
  /** For a parent directory that has to be created; default 0o700. */
  dirMode?: number;
}

/** What a listening socket needs at close: remove the file only if it is still ours. */
export interface UnixSocketIdentity {
  path: string;
  ino: number;
  dev: number;
}

/**
 * Makes `server` listen on `path`. A socket file nobody answers on is
 * removed first; a live one is a `SocketInUseError`; a file that is not a
 * socket is a `SocketPathError` (never deleted).
 */
export async function listenUnixSocket(server: Server, path: string, options: UnixListenOptions): Promise<UnixSocketIdentity> {
  const { what } = options;
  try {
    mkdirSync(dirname(path), { recursive: true, mode: options.dirMode ?? 0o700 });
  } catch (e) {
    throw new SocketPathError(path, what, `cannot create its directory: ${(e as Error).message}`);
  }
  try {
    await listenOnce(server, path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EADDRINUSE') {
      throw new SocketPathError(path, what, `cannot listen: ${(e as Error).message}`);
    }
    let isSocket = false;
    try {
      isSocket = lstatSync(path).isSocket();
    } catch {
      // Gone in the meantime: just try again below.
      isSocket = true;
    }
    if (!isSocket) throw new SocketPathError(path, what, 'exists and is not a socket; refusing to replace it');
    if (await probeUnixSocket(path)) throw new SocketInUseError(path, what);
    try {
      unlinkSync(path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
        throw new SocketPathError(path, what, `cannot remove the stale socket: ${(err as Error).message}`);
      }
    }
    try {
      await listenOnce(server, path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EADDRINUSE') throw new SocketInUseError(path, what);
      throw new SocketPathError(path, what, `cannot listen: ${(err as Error).message}`);
    }
  }
  // The socket exists with the umask's mode until this chmod; the 0700 directory keeps others out meanwhile.
  chmodSync(path, options.mode ?? 0o600);
  const st = lstatSync(path);
  return { path, ino: st.ino, dev: st.dev };
}

/** Removes the socket file if it is still the one we created (another bridge may have replaced it). */
export function removeSocketFile(id: UnixSocketIdentity): void {
  try {
    const st = lstatSync(id.path);
    if (st.isSocket() && st.ino === id.ino && st.dev === id.dev) unlinkSync(id.path);
  } catch {
    // Already gone (libuv unlinks a pipe's path when the server closes).
  }
}

/** Closes a server, resolving once it no longer listens. */
export function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => {
    if (!server.listening) {
      resolve();
      return;
    }
    server.close(() => resolve());
  });
}
