import { mkdirSync, statSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import {
  ControlHandlers,
  ControlSocket,
  ControlSocketError,
  parseControlRequest,
  queryControlSocket,
} from '../../../lib/control/control-socket';
import { SocketInUseError } from '../../../lib/control/unix-socket';
import { FlowReport } from '../../../lib/pipeline/shadow-flow';
import { LineClient, makeStaleSocket, sleep, tempDir } from '../agents/socket-helpers';
import { sampleSnapshot } from './sample-snapshot';

const flow = (i: number): FlowReport => ({
  key: `tcp 10.0.0.1:${40000 + i} > 10.0.0.2:80`, protocol: 'tcp', releasedFrames: i, releasedBytes: i * 100, matchedBytes: i * 100, mismatches: 0, mismatchList: [],
});

let tmp: ReturnType<typeof tempDir>;
let path: string;
let control: ControlSocket | null;
let clients: LineClient[];
let epoch: number;

const handlers: ControlHandlers = {
  status: () => sampleSnapshot(),
  checkpoint: () => ({ requested: true, epoch: ++epoch, state: 'CHECKPOINTING' }),
  flows: (limit) => Array.from({ length: 10 }, (_, i) => flow(i)).slice(-limit),
};

beforeEach(() => {
  tmp = tempDir('ctl');
  path = join(tmp.dir, 'lab', 'control.sock');
  control = null;
  clients = [];
  epoch = 0;
});

afterEach(async () => {
  for (const c of clients) c.close();
  await control?.close();
  tmp.remove();
});

async function start(h: ControlHandlers = handlers): Promise<ControlSocket> {
  control = new ControlSocket({ path, handlers: h });
  await control.listen();
  return control;
}

async function raw(): Promise<LineClient> {
  const c = await LineClient.connect(path);
  clients.push(c);
  return c;
}

describe('ControlSocket', () => {
  it('answers status, checkpoint and flows through queryControlSocket', async () => {
    await start();
    const status = await queryControlSocket(path, { cmd: 'status' });
    expect(status).toEqual({ ok: true, status: sampleSnapshot() });
    expect(await queryControlSocket(path, { cmd: 'checkpoint' })).toEqual({ ok: true, checkpoint: { requested: true, epoch: 1, state: 'CHECKPOINTING' } });
    const flows = await queryControlSocket(path, { cmd: 'flows', limit: 3 });
    expect(flows.ok && flows.flows.map((f) => f.releasedFrames)).toEqual([7, 8, 9]);
    expect(control!.counters).toMatchObject({ requests: 3, errors: 0 });
  });

  it('listens on a 0600 socket and removes it on close', async () => {
    const c = await start();
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(statSync(dirname(path)).mode & 0o777).toBe(0o700);
    await c.close();
    control = null;
    expect(existsSync(path)).toBe(false);
  });

  it('answers garbage with an error and keeps the connection for the next request', async () => {
    await start();
    const c = await raw();
    c.send('hello?\n');
    expect(await c.next()).toMatchObject({ ok: false, error: expect.stringContaining('not JSON') });
    c.send('[1]\n');
    expect(await c.next()).toMatchObject({ ok: false, error: expect.stringContaining('JSON object') });
    c.send({ cmd: 'reboot' });
    expect(await c.next()).toMatchObject({ ok: false, error: 'unknown cmd "reboot" (one of status, checkpoint, failover, flows)' });
    c.send({ cmd: 'flows', limit: -2 });
    expect(await c.next()).toMatchObject({ ok: false, error: expect.stringContaining('positive integer') });
    c.send(`{"cmd":"status","pad":"${'x'.repeat(70_000)}"}\n`);
    expect(await c.next()).toMatchObject({ ok: false, error: expect.stringContaining('longer than') });
    c.send('{"cmd":"checkpoint","id":"a1"}\r\n');
    expect(await c.next()).toEqual({ ok: true, id: 'a1', checkpoint: { requested: true, epoch: 1, state: 'CHECKPOINTING' } });
    expect(control!.counters).toMatchObject({ requests: 6, errors: 5 });
  });

  it('answers requests in order even when an earlier handler is slower', async () => {
    await start({
      ...handlers,
      status: async () => {
        await sleep(50);
        return sampleSnapshot();
      },
    });
    const c = await raw();
    c.send('{"cmd":"status","id":1}\n{"cmd":"checkpoint","id":2}\n');
    expect((await c.next()).id).toBe(1);
    expect((await c.next()).id).toBe(2);
  });

  it('turns a handler that throws into an error reply', async () => {
    await start({ ...handlers, checkpoint: () => { throw new Error('no sync agent connected'); } });
    expect(await queryControlSocket(path, { cmd: 'checkpoint', id: 7 })).toEqual({ ok: false, id: 7, error: 'checkpoint failed: no sync agent connected' });
    expect((await queryControlSocket(path, { cmd: 'status' })).ok).toBe(true);
  });

  it('replaces a stale socket and refuses a live one', async () => {
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    makeStaleSocket(path);
    await start();
    const other = new ControlSocket({ path, handlers });
    await expect(other.listen()).rejects.toBeInstanceOf(SocketInUseError);
    expect((await queryControlSocket(path, { cmd: 'status' })).ok).toBe(true);
  });
});

describe('queryControlSocket', () => {
  it('says no bridge is listening when the socket is absent', async () => {
    const q = queryControlSocket(join(tmp.dir, 'none.sock'), { cmd: 'status' });
    await expect(q).rejects.toBeInstanceOf(ControlSocketError);
    await expect(queryControlSocket(join(tmp.dir, 'none.sock'), { cmd: 'status' })).rejects.toThrow(/no bridge is listening/);
  });

  it('gives up after its timeout when nothing answers', async () => {
    await start({ ...handlers, status: () => new Promise(() => {}) });
    await expect(queryControlSocket(path, { cmd: 'status' }, 100)).rejects.toThrow(/no reply within 100 ms/);
  });
});

describe('parseControlRequest', () => {
  it('reads the three commands and an optional id', () => {
    expect(parseControlRequest('{"cmd":"status"}')).toEqual({ cmd: 'status' });
    expect(parseControlRequest('{"cmd":"flows"}')).toEqual({ cmd: 'flows' });
    expect(parseControlRequest('{"cmd":"flows","limit":5,"id":"x"}')).toEqual({ cmd: 'flows', limit: 5, id: 'x' });
    expect(parseControlRequest('{"cmd":"flows","match":"10.0.0.1:4"}')).toEqual({ cmd: 'flows', match: '10.0.0.1:4' });
    expect(() => parseControlRequest('{"cmd":"flows","match":7}')).toThrow('"match" must be a string of 1 to 128 characters');
    expect(() => parseControlRequest(JSON.stringify({ cmd: 'flows', match: 'x'.repeat(129) }))).toThrow('"match" must be a string');
    expect(() => parseControlRequest('{"cmd":"status","id":{}}')).toThrow(/"id"/);
    expect(() => parseControlRequest('{}')).toThrow(/missing "cmd"/);
  });
});
