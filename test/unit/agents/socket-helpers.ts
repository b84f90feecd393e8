/** Real UNIX sockets in a temporary directory, for the agent link, lab agent and control socket tests. */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** A fresh directory (short path: UNIX socket paths are limited to 107 bytes). */
export function tempDir(prefix: string): { dir: string; remove(): void } {
  const dir = mkdtempSync(join(tmpdir(), `svm-${prefix}-`));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Polls until `cond` holds; fails the test with `what` after `timeoutMs`. */
export async function waitFor(what: string, cond: () => boolean, timeoutMs = 3000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Leaves a socket file nobody listens on, the way a killed bridge does. */
export function makeStaleSocket(path: string): void {
  const script = `require('net').createServer().listen(${JSON.stringify(path)}, () => process.exit(0))`;
  const r = spawnSync(process.execPath, ['-e', script]);
  if (r.status !== 0) throw new Error(`could not leave a stale socket: ${r.stderr}`);
}

/** A raw newline-JSON client: what a hand-written or broken peer looks like. */
export class LineClient {
  readonly received: unknown[] = [];
  closed = false;
  private buf = '';
  private waiters: (() => void)[] = [];

  private constructor(readonly socket: Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (s: string) => {
      this.buf += s;
      let nl: number;
      while ((nl = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, nl);
        this.buf = this.buf.slice(nl + 1);
        this.received.push(JSON.parse(line));
      }
      this.wake();
    });
    socket.on('error', () => {});
    socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
  }

  static connect(path: string): Promise<LineClient> {
    return new Promise((resolve, reject) => {
      const s = connect(path);
      s.once('connect', () => resolve(new LineClient(s)));
      s.once('error', reject);
    });
  }

  send(line: string | object): void {
    this.socket.write(typeof line === 'string' ? line : `${JSON.stringify(line)}\n`);
  }

  /** The next message not yet taken, waiting for it if need be. */
  async next(timeoutMs = 3000): Promise<Record<string, unknown>> {
    const until = Date.now() + timeoutMs;
    while (this.taken >= this.received.length) {
      if (this.closed) throw new Error('connection closed while waiting for a message');
      if (Date.now() > until) throw new Error('timed out waiting for a message');
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.max(1, until - Date.now()));
        this.waiters.push(() => { clearTimeout(t); r(); });
      });
    }
    return this.received[this.taken++] as Record<string, unknown>;
  }

  /** Waits until the other side closes the connection. */
  async whenClosed(timeoutMs = 3000): Promise<void> {
    await waitFor('the connection to close', () => this.closed, timeoutMs);
  }

  close(): void {
    this.socket.destroy();
  }

  private taken = 0;

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }
}
