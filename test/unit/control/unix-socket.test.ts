/**
 * How the bridge's UNIX sockets are made and removed: no window in which a
 * socket is connectable by others, no directory another user could swap
 * things in, and never a socket file removed that another process made.
 * (The cases that need a second real user are in
 * test/integration/hostile-sockets.test.ts.)
 */
import { chmodSync, existsSync, mkdirSync, readdirSync, statSync, symlinkSync, unlinkSync } from 'node:fs';
import { createServer, Server } from 'node:net';
import { join } from 'node:path';
import {
  closeServer,
  listenUnixSocket,
  probeUnixSocket,
  removeSocketFile,
  SocketInUseError,
  SocketPathError,
  untrustedSocketReason,
} from '../../../lib/control/unix-socket';
import { makeStaleSocket, tempDir } from '../agents/socket-helpers';

let tmp: ReturnType<typeof tempDir>;
let servers: Server[];

beforeEach(() => {
  tmp = tempDir('unix');
  servers = [];
});

afterEach(async () => {
  for (const s of servers) await closeServer(s);
  tmp.remove();
});

function server(): Server {
  const s = createServer((c) => {
    c.on('error', () => {});
    c.end('hello\n');
  });
  servers.push(s);
  return s;
}

/** Another program listening at `path` the plain way (bind, no checks). */
function plainListener(path: string): Promise<Server> {
  const s = server();
  return new Promise((resolve, reject) => {
    s.once('error', reject);
    s.listen(path, () => resolve(s));
  });
}

describe('listenUnixSocket', () => {
  it('creates missing directories 0700 and a 0600 socket even under umask 000, and leaves no temporary name behind', async () => {
    const path = join(tmp.dir, 'run', 'svm', 'control.sock');
    const old = process.umask(0);
    try {
      await listenUnixSocket(server(), path, { what: 'control socket' });
    } finally {
      process.umask(old);
    }
    expect(statSync(path).isSocket()).toBe(true);
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(statSync(join(tmp.dir, 'run')).mode & 0o777).toBe(0o700);
    expect(statSync(join(tmp.dir, 'run', 'svm')).mode & 0o777).toBe(0o700);
    expect(readdirSync(join(tmp.dir, 'run', 'svm'))).toEqual(['control.sock']);
    expect(await probeUnixSocket(path)).toBe(true);
  });

  it('listens in a sticky world-writable directory such as /tmp, where others cannot replace its socket', async () => {
    const dir = join(tmp.dir, 'sticky');
    mkdirSync(dir);
    chmodSync(dir, 0o1777);
    const path = join(dir, 'agent.sock');
    await listenUnixSocket(server(), path, { what: 'agent socket' });
    expect(statSync(path).mode & 0o777).toBe(0o600);
  });

  it('refuses a directory on the path that everyone may write without the sticky bit', async () => {
    const dir = join(tmp.dir, 'open');
    mkdirSync(dir);
    chmodSync(dir, 0o777);
    const p = listenUnixSocket(server(), join(dir, 'sub', 'control.sock'), { what: 'control socket' });
    await expect(p).rejects.toBeInstanceOf(SocketPathError);
    await expect(listenUnixSocket(server(), join(dir, 'control.sock'), { what: 'control socket' })).rejects.toThrow(/writable by every user \(mode 0777, no sticky bit\)/);
    expect(existsSync(join(dir, 'sub'))).toBe(false);
  });

  it('refuses a socket directory that is a file', async () => {
    const file = join(tmp.dir, 'plain');
    makeStaleSocket(file);
    await expect(listenUnixSocket(server(), join(file, 'control.sock'), { what: 'control socket' })).rejects.toThrow(/is not a directory/);
  });

  it('follows a symbolic link of its own user to a safe directory', async () => {
    const real = join(tmp.dir, 'real');
    mkdirSync(real, { mode: 0o700 });
    symlinkSync(real, join(tmp.dir, 'link'));
    await listenUnixSocket(server(), join(tmp.dir, 'link', 'control.sock'), { what: 'control socket' });
    expect(statSync(join(real, 'control.sock')).isSocket()).toBe(true);
  });

  it('refuses, and leaves in place, a live listener of any kind at the path', async () => {
    const path = join(tmp.dir, 'control.sock');
    await plainListener(path);
    const ino = statSync(path).ino;
    await expect(listenUnixSocket(server(), path, { what: 'control socket' })).rejects.toBeInstanceOf(SocketInUseError);
    expect(statSync(path).ino).toBe(ino);
    expect(await probeUnixSocket(path)).toBe(true);
  });

  it('replaces a stale socket nobody answers on', async () => {
    const path = join(tmp.dir, 'control.sock');
    makeStaleSocket(path);
    await listenUnixSocket(server(), path, { what: 'control socket' });
    expect(await probeUnixSocket(path)).toBe(true);
  });

  it('never removes, at close, a socket that another process has put at its path', async () => {
    const path = join(tmp.dir, 'control.sock');
    const ours = server();
    const id = await listenUnixSocket(ours, path, { what: 'control socket' });
    // Someone removes our socket and listens at the same path.
    unlinkSync(path);
    await plainListener(path);
    const theirs = statSync(path).ino;
    await closeServer(ours); // before: libuv unlinked the bind path here, which was theirs by now
    removeSocketFile(id);
    expect(existsSync(path)).toBe(true);
    expect(statSync(path).ino).toBe(theirs);
    expect(await probeUnixSocket(path)).toBe(true);
  });

  it('removes its own socket at close', async () => {
    const path = join(tmp.dir, 'control.sock');
    const ours = server();
    const id = await listenUnixSocket(ours, path, { what: 'control socket' });
    await closeServer(ours);
    removeSocketFile(id);
    expect(existsSync(path)).toBe(false);
  });
});

describe('untrustedSocketReason', () => {
  it('trusts a socket of its own user in safe directories, and a missing one', async () => {
    const path = join(tmp.dir, 'control.sock');
    await listenUnixSocket(server(), path, { what: 'control socket' });
    expect(untrustedSocketReason(path)).toBeNull();
    expect(untrustedSocketReason(join(tmp.dir, 'none.sock'))).toBeNull();
  });

  it('distrusts a socket in a directory everyone may write, and a path that is not a socket', async () => {
    const dir = join(tmp.dir, 'open');
    mkdirSync(dir);
    await plainListener(join(dir, 'control.sock'));
    chmodSync(dir, 0o777);
    expect(untrustedSocketReason(join(dir, 'control.sock'))).toMatch(/writable by every user/);
    expect(untrustedSocketReason(tmp.dir)).toMatch(/is not a socket/);
  });
});
