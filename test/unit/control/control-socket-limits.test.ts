/**
 * The control socket under a client that pipelines, does not read, or just
 * holds connections: the event loop (which moves the bridge's frames) keeps
 * turning, memory stays bounded, `status` stays answerable, and stopping
 * never waits for a client. Issue 7, control-socket rows.
 */
import { connect, Socket } from 'node:net';
import { join } from 'node:path';
import { ControlHandlers, ControlSocket, MAX_FLOWS_LIMIT, queryControlSocket } from '../../../lib/control/control-socket';
import { FlowReport } from '../../../lib/pipeline/shadow-flow';
import { LineClient, sleep, tempDir, waitFor } from '../agents/socket-helpers';
import { LoopLagMeter, rssMiB } from './loop-lag';
import { sampleSnapshot } from './sample-snapshot';

/** A flow report of about a kilobyte, like a flow with a few mismatches on record. */
const bigFlow = (i: number): FlowReport => ({
  key: `tcp 10.0.0.1:${i} > 10.0.0.2:80 ${'x'.repeat(1000)}`, protocol: 'tcp', releasedFrames: i, releasedBytes: i, matchedBytes: i, mismatches: 0, mismatchList: [],
});

/** Stands for the snapshot of a busy bridge: a couple of milliseconds of work per call. */
function costlyStatus(ms: number) {
  return () => {
    const until = performance.now() + ms;
    while (performance.now() < until) { /* busy, like a big snapshot */ }
    return sampleSnapshot();
  };
}

const handlers: ControlHandlers = {
  status: () => sampleSnapshot(),
  checkpoint: () => ({ requested: true, epoch: 1, state: 'CHECKPOINTING' }),
  flows: (limit) => Array.from({ length: Math.min(limit, 100_000) }, (_, i) => bigFlow(i)),
};

let tmp: ReturnType<typeof tempDir>;
let path: string;
let control: ControlSocket | null;
let sockets: Socket[];
let logged: { event: string; fields?: Record<string, unknown> }[];

beforeEach(() => {
  tmp = tempDir('ctll');
  path = join(tmp.dir, 'control.sock');
  control = null;
  sockets = [];
  logged = [];
});

afterEach(async () => {
  for (const s of sockets) s.destroy();
  await control?.close();
  tmp.remove();
});

async function start(options: Partial<ConstructorParameters<typeof ControlSocket>[0]> = {}): Promise<ControlSocket> {
  control = new ControlSocket({ path, handlers, log: (_level, event, fields) => logged.push({ event, fields }), ...options });
  await control.listen();
  return control;
}

/** A client that writes `text` and never reads a byte of the replies. */
function nonReader(text: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect(path);
    sockets.push(s);
    s.pause();
    s.on('error', () => {});
    s.once('connect', () => {
      s.write(text);
      resolve(s);
    });
    s.once('error', reject);
  });
}

/** Resolves once the server has closed `s` (the client reads again to see the end). */
function closedByServer(s: Socket): Promise<void> {
  if (s.destroyed) return Promise.resolve();
  const p = new Promise<void>((r) => s.once('close', () => r()));
  s.on('data', () => {});
  s.resume();
  return p;
}

describe('ControlSocket under hostile clients', () => {
  it('answers status on a fresh connection while 1,000 status requests are pipelined unread on another, and closes the abuser', async () => {
    await start({ handlers: { ...handlers, status: costlyStatus(2) } });
    const lag = new LoopLagMeter();
    const abuser = await nonReader('{"cmd":"status"}\n'.repeat(1000));
    const status = await queryControlSocket(path, { cmd: 'status' });
    expect(status.ok).toBe(true);
    await waitFor('the abuser to be closed', () => control!.counters.closedAbusive === 1);
    await closedByServer(abuser);
    await sleep(50);
    expect(lag.stop()).toBeLessThan(200); // before: 1,000 × 2 ms in one go, about 2 s
    expect(logged.map((l) => l.event)).toContain('control-connection-abusive');
  });

  it('still answers a client that pipelines a few requests and reads them, in order', async () => {
    await start();
    const c = await LineClient.connect(path);
    try {
      c.send(Array.from({ length: 20 }, (_, i) => `{"cmd":"status","id":${i}}\n`).join(''));
      for (let i = 0; i < 20; i++) expect((await c.next()).id).toBe(i);
      expect(control!.counters.closedAbusive).toBe(0);
    } finally {
      c.close();
    }
  });

  it('answers every request of a client that closes its sending side right after writing them', async () => {
    await start();
    const s = connect(path);
    sockets.push(s);
    let text = '';
    s.setEncoding('utf8');
    s.on('data', (d: string) => { text += d; });
    const closedNow = new Promise<void>((r) => s.once('close', () => r()));
    s.once('connect', () => s.end('{"cmd":"status","id":1}\n{"cmd":"flows","limit":2,"id":2}\n'));
    await closedNow;
    expect(text.trim().split('\n').map((l) => JSON.parse(l).id)).toEqual([1, 2]);
  });

  it(`cuts flows to ${MAX_FLOWS_LIMIT}, the most recent, however large the limit`, async () => {
    const all = Array.from({ length: 100_000 }, (_, i) => ({ ...bigFlow(i), key: `tcp 10.0.0.1:${i} > 10.0.0.2:80` }));
    await start({ handlers: { ...handlers, flows: () => all } });
    const reply = await queryControlSocket(path, { cmd: 'flows', limit: 100_000, id: 'f' });
    expect(reply.ok).toBe(true);
    if (!reply.ok) return;
    expect(reply.id).toBe('f');
    expect(reply.flows).toHaveLength(MAX_FLOWS_LIMIT);
    expect(reply.flows[MAX_FLOWS_LIMIT - 1].releasedFrames).toBe(99_999);
    const none = await queryControlSocket(path, { cmd: 'flows', limit: 1 });
    expect(none.ok && none.flows.map((f) => f.releasedFrames)).toEqual([99_999]);
  });

  it('keeps memory and the event loop bounded when huge flows requests are pipelined and never read, and drops the non-reader', async () => {
    await start({ replyTimeoutMs: 500 });
    const rss0 = rssMiB();
    let rssMax = rss0;
    const sampler = setInterval(() => { rssMax = Math.max(rssMax, rssMiB()); }, 20);
    const lag = new LoopLagMeter();
    const abuser = await nonReader('{"cmd":"flows","limit":100000}\n'.repeat(30));
    // The first reply (about a megabyte) fills the socket buffers; nothing more is read or made until it drains.
    const status = await queryControlSocket(path, { cmd: 'status' });
    expect(status.ok).toBe(true);
    await waitFor('the non-reader to be dropped', () => control!.counters.closedSlow === 1, 5000);
    clearInterval(sampler);
    expect(lag.stop()).toBeLessThan(200); // before: 30 replies of 100,000 flows rendered in one go
    expect(rssMax - rss0).toBeLessThan(150); // before: about 3 GB of reply text
    expect(logged.map((l) => l.event)).toContain('control-connection-slow');
    await closedByServer(abuser);
  });

  it('admits shadowvm status when 32 idle connections are open, by closing the least recently active one', async () => {
    await start();
    const idle: LineClient[] = [];
    for (let i = 0; i < 32; i++) idle.push(await LineClient.connect(path));
    try {
      await waitFor('32 connections', () => control!.connectionCount === 32);
      const status = await queryControlSocket(path, { cmd: 'status' });
      expect(status.ok).toBe(true); // before: "too many control connections"
      expect(control!.counters.evicted).toBe(1);
      await idle[0].whenClosed();
      expect(idle.slice(1).every((c) => !c.closed)).toBe(true);
    } finally {
      for (const c of idle) c.close();
    }
  });

  it('closes a connection that stays idle past the idle timeout', async () => {
    await start({ idleTimeoutMs: 150 });
    const c = await LineClient.connect(path);
    c.send({ cmd: 'status' });
    expect((await c.next()).ok).toBe(true);
    await c.whenClosed(2000);
    expect(control!.counters.closedIdle).toBe(1);
  });

  it('closes, without waiting, while 40 clients hold connections with requests they never read', async () => {
    await start();
    const holders: Socket[] = [];
    for (let i = 0; i < 40; i++) holders.push(await nonReader('{"cmd":"status"}\n'));
    await sleep(100);
    const c = control!;
    control = null;
    // Before: the connections refused beyond 32 were never destroyed, and close() waited for them forever.
    let timer: NodeJS.Timeout | undefined;
    const outcome = await Promise.race([
      c.close().then(() => 'closed'),
      new Promise((r) => { timer = setTimeout(() => r('still waiting'), 3000); }),
    ]);
    clearTimeout(timer);
    expect(outcome).toBe('closed');
    await Promise.all(holders.map(closedByServer));
  });
});
