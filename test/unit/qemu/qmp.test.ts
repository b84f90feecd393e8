/** The QMP client against a scripted QMP server on a real UNIX socket. */
import { createServer, Server, Socket } from 'node:net';
import { join } from 'node:path';
import { QmpClient, QmpClosedError, QmpCommandError, QmpEvent, QmpTimeoutError } from '../../../lib/qemu/qmp';
import { tempDir } from '../agents/socket-helpers';

const GREETING = '{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian"}, "capabilities": ["oob"]}}\n';

type Reply = (cmd: { execute: string; arguments?: Record<string, unknown>; id?: string }, socket: Socket) => void;

/** Speaks QMP like QEMU: greeting, then one JSON object per line; `reply` decides each answer. */
class FakeQmp {
  readonly commands: string[] = [];
  socket: Socket | null = null;
  private readonly server: Server;

  constructor(readonly path: string, private reply: Reply, private readonly greeting = GREETING) {
    this.server = createServer((s) => {
      this.socket = s;
      s.on('error', () => {});
      s.write(this.greeting);
      let buf = '';
      s.setEncoding('utf8');
      s.on('data', (d: string) => {
        buf += d;
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const cmd = JSON.parse(buf.slice(0, nl));
          buf = buf.slice(nl + 1);
          this.commands.push(cmd.execute);
          if (cmd.execute === 'qmp_capabilities') s.write(`{"return": {}, "id": ${JSON.stringify(cmd.id)}}\n`);
          else this.reply(cmd, s);
        }
      });
    });
  }

  setReply(reply: Reply): void {
    this.reply = reply;
  }

  listen(): Promise<void> {
    return new Promise((r) => this.server.listen(this.path, () => r()));
  }

  close(): Promise<void> {
    this.socket?.destroy();
    return new Promise((r) => this.server.close(() => r()));
  }
}

function event(name: string, data: Record<string, unknown> = {}): string {
  return `${JSON.stringify({ event: name, data, timestamp: { seconds: 1, microseconds: 2 } })}\n`;
}

describe('QmpClient', () => {
  let tmp: ReturnType<typeof tempDir>;
  let server: FakeQmp;
  let client: QmpClient | null = null;

  beforeEach(() => {
    tmp = tempDir('qmp');
  });

  afterEach(async () => {
    client?.close();
    client = null;
    await server?.close();
    tmp.remove();
  });

  async function start(reply: Reply, greeting?: string): Promise<QmpClient> {
    server = new FakeQmp(join(tmp.dir, 'qmp.sock'), reply, greeting);
    await server.listen();
    client = await QmpClient.connect(server.path, { timeoutMs: 2000 });
    return client;
  }

  test('reads the greeting and leaves negotiation mode before the first command', async () => {
    const c = await start((cmd, s) => s.write(`{"return": {"status": "running", "running": true}, "id": "${cmd.id}"}\n`));
    expect(c.greeting.version.qemu).toEqual({ major: 7, minor: 2, micro: 22 });
    expect(await c.execute('query-status')).toEqual({ status: 'running', running: true });
    expect(server.commands).toEqual(['qmp_capabilities', 'query-status']);
  });

  test('matches answers to commands by id when they come back out of order', async () => {
    const held: Array<{ id?: string; execute: string }> = [];
    const c = await start((cmd, s) => {
      held.push(cmd);
      if (held.length === 2) {
        for (const h of held.reverse()) s.write(`{"return": "${h.execute}", "id": "${h.id}"}\n`);
      }
    });
    const [a, b] = await Promise.all([c.execute('first'), c.execute('second')]);
    expect([a, b]).toEqual(['first', 'second']);
  });

  test('rejects an error answer with the command, the class and the description', async () => {
    const c = await start((cmd, s) => s.write(`{"error": {"class": "GenericError", "desc": "Migration is not finalized yet"}, "id": "${cmd.id}"}\n`));
    const err = (await c.execute('cont').catch((e: unknown) => e)) as Error;
    expect(err).toBeInstanceOf(QmpCommandError);
    expect(err.message).toMatch(/QMP cont on .*qmp\.sock failed: GenericError: Migration is not finalized yet/);
    expect(c.counters.errors).toBe(1);
  });

  test('delivers events that come between a command and its answer, to listeners and to the iterator', async () => {
    const c = await start((cmd, s) => s.write(event('STOP') + event('MIGRATION', { status: 'active' }) + `{"return": {}, "id": "${cmd.id}"}\n` + event('RESUME')));
    const seen: string[] = [];
    c.on('event', (ev: QmpEvent) => seen.push(ev.event));
    const iterated: QmpEvent[] = [];
    const reading = (async () => {
      for await (const ev of c.events()) {
        iterated.push(ev);
        if (iterated.length === 3) return;
      }
    })();
    const resumed = c.waitForEvent('RESUME', 2000);
    await c.execute('stop');
    await resumed;
    await reading;
    expect(seen).toEqual(['STOP', 'MIGRATION', 'RESUME']);
    expect(iterated.map((e) => e.event)).toEqual(['STOP', 'MIGRATION', 'RESUME']);
    expect(iterated[1].data).toEqual({ status: 'active' });
  });

  test('times a silent command out with a clear error and still answers the next one', async () => {
    const c = await start((cmd, s) => {
      if (cmd.execute !== 'hang') s.write(`{"return": 7, "id": "${cmd.id}"}\n`);
    });
    const started = Date.now();
    const err = (await c.execute('hang', undefined, { timeoutMs: 100 }).catch((e: unknown) => e)) as Error;
    expect(err).toBeInstanceOf(QmpTimeoutError);
    expect(err.message).toMatch(/QMP hang on .*: no answer within 100 ms/);
    expect(Date.now() - started).toBeLessThan(1000);
    expect(await c.execute('query-x')).toBe(7);
  });

  test('rejects every pending command when the socket closes in the middle of an answer', async () => {
    const c = await start((cmd, s) => {
      if (cmd.execute === 'b') s.end('{"return": {"half');
    });
    const closed = new Promise<string>((r) => c.once('close', r));
    const results = await Promise.allSettled([c.execute('a'), c.execute('b')]);
    for (const r of results) {
      expect(r.status).toBe('rejected');
      expect((r as PromiseRejectedResult).reason).toBeInstanceOf(QmpClosedError);
    }
    expect(await closed).toMatch(/mid-message/);
    expect(c.closed).toBe(true);
    await expect(c.execute('c')).rejects.toThrow(/QMP c on .*: connection closed/);
    await expect(c.waitForEvent('STOP', 1000)).rejects.toBeInstanceOf(QmpClosedError);
  });

  test('ends the event iterator when QEMU goes away, after the events it sent', async () => {
    const c = await start((cmd, s) => s.end(event('SHUTDOWN', { guest: true })));
    const seen: string[] = [];
    const reading = (async () => {
      for await (const ev of c.events()) seen.push(ev.event);
    })();
    await expect(c.execute('quit')).rejects.toBeInstanceOf(QmpClosedError);
    await reading;
    expect(seen).toEqual(['SHUTDOWN']);
  });

  test('skips a garbage line and still matches the answer after it', async () => {
    const c = await start((cmd, s) => s.write(`this is not json\n[1,2]\n{"return": "ok", "id": "${cmd.id}"}\n`));
    expect(await c.execute('query-status')).toBe('ok');
    expect(c.counters.badLines).toBe(2);
  });

  test('connect keeps trying while the socket does not exist yet', async () => {
    const path = join(tmp.dir, 'late.sock');
    const connecting = QmpClient.connect(path, { timeoutMs: 3000 });
    await new Promise((r) => setTimeout(r, 150));
    server = new FakeQmp(path, () => {});
    await server.listen();
    client = await connecting;
    expect(client.greeting.capabilities).toEqual(['oob']);
  });

  test('connect stops retrying at once when its signal is aborted (QEMU died during start-up)', async () => {
    server = new FakeQmp(join(tmp.dir, 'unused.sock'), () => {});
    await server.listen();
    const gaveUp = new AbortController();
    const started = Date.now();
    const connecting = QmpClient.connect(join(tmp.dir, 'never.sock'), { timeoutMs: 5000, signal: gaveUp.signal });
    setTimeout(() => gaveUp.abort('QEMU exited'), 100);
    await expect(connecting).rejects.toThrow(/abandoned: QEMU exited/);
    expect(Date.now() - started).toBeLessThan(1000);
  });

  test('connect fails with a clear error when the peer does not speak QMP', async () => {
    server = new FakeQmp(join(tmp.dir, 'qmp.sock'), () => {}, 'SSH-2.0-OpenSSH\n');
    await server.listen();
    await expect(QmpClient.connect(server.path, { timeoutMs: 1000 })).rejects.toThrow(/not a QMP greeting: SSH-2.0/);
  });

  test('connect gives up after its timeout when nothing listens', async () => {
    server = new FakeQmp(join(tmp.dir, 'unused.sock'), () => {});
    await server.listen();
    await expect(QmpClient.connect(join(tmp.dir, 'absent.sock'), { timeoutMs: 200 })).rejects.toThrow(/no QMP greeting within 200 ms/);
  });
});
