/**
 * The metrics server under scrapers that pipeline, do not read, or hold
 * connections: rendering stays rare, memory bounded, the event loop free,
 * and a real scrape is still answered. Issue 7, the `/metrics` row.
 */
import { request } from 'node:http';
import { connect, Socket } from 'node:net';
import { MetricsServer, parseRequestHead, startMetricsServer } from '../../../lib/control/metrics';
import { BridgeSnapshot } from '../../../lib/control/snapshot';
import { sleep, waitFor } from '../agents/socket-helpers';
import { LoopLagMeter, rssMiB } from './loop-lag';
import { sampleSnapshot } from './sample-snapshot';

/** A loaded bridge's snapshot: thousands of series (the issue saw 2,858 ethertype series), about 300 KB of text. */
function bigSnapshot(): BridgeSnapshot {
  const s = sampleSnapshot();
  for (let i = 0; i < 3000; i++) s.policyActions[`ethertype-0x${(0x9000 + i).toString(16)}/forward-primary`] = i;
  return s;
}

function get(port: number, path = '/metrics'): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode!, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

let server: MetricsServer | null;
let sockets: Socket[];
let logged: string[];

beforeEach(() => {
  server = null;
  sockets = [];
  logged = [];
});

afterEach(async () => {
  for (const s of sockets) s.destroy();
  await server?.close();
});

async function start(snapshot: () => BridgeSnapshot, options: Parameters<typeof startMetricsServer>[3] = {}): Promise<MetricsServer> {
  server = await startMetricsServer('127.0.0.1', 0, snapshot, { log: (_l, event) => logged.push(event), ...options });
  return server;
}

/** Sends `text` and never reads a byte. */
function nonReader(port: number, text: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1');
    sockets.push(s);
    s.pause();
    s.once('connect', () => {
      s.write(text);
      resolve(s);
    });
    s.once('error', reject);
  });
}

const GET = 'GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n';

describe('startMetricsServer under hostile scrapers', () => {
  it('stays responsive and bounded while 4 clients pipeline 2,000 scrapes each and never read', async () => {
    let snapshots = 0;
    const srv = await start(() => { snapshots++; return bigSnapshot(); });
    expect((await get(srv.port)).status).toBe(200);
    const rss0 = rssMiB();
    let rssMax = rss0;
    const sampler = setInterval(() => { rssMax = Math.max(rssMax, rssMiB()); }, 20);
    const lag = new LoopLagMeter();
    for (let i = 0; i < 4; i++) await nonReader(srv.port, GET.repeat(2000));
    await sleep(300);
    const fresh = await get(srv.port);
    expect(fresh.status).toBe(200);
    expect(fresh.body).toMatch(/^shadowvm_flows 12$/m);
    await waitFor('the pipeliners to be dropped', () => srv.counters.closedAbusive === 4);
    await sleep(100);
    clearInterval(sampler);
    expect(lag.stop()).toBeLessThan(200); // before: every pipelined request rendered its own 300 KB text at once
    expect(rssMax - rss0).toBeLessThan(100); // before: thousands of copies of the text held for clients that never read
    expect(snapshots).toBeLessThanOrEqual(3); // rendered at most once per cacheMs (1 s)
    expect(logged).toContain('metrics-client-dropped');
  });

  it('drops a client that reads none of its responses once it stops making progress', async () => {
    const srv = await start(bigSnapshot, { idleTimeoutMs: 300 });
    // A few requests (below the read-ahead bound), each answered with 300 KB: the socket buffers fill and stay full.
    await nonReader(srv.port, GET.repeat(40));
    await waitFor('the non-reader to be dropped', () => srv.counters.closedIdle === 1, 3000);
    expect(srv.counters.scrapes).toBeGreaterThan(0);
    expect((await get(srv.port)).status).toBe(200);
  });

  it('answers pipelined scrapes one after another to a client that reads them', async () => {
    const srv = await start(sampleSnapshot);
    const s = connect(srv.port, '127.0.0.1');
    sockets.push(s);
    let text = '';
    s.setEncoding('utf8');
    s.on('data', (d: string) => { text += d; });
    s.write(GET.repeat(3));
    await waitFor('three responses', () => (text.match(/^HTTP\/1\.1 200 OK\r$/gm) ?? []).length === 3);
    expect(srv.counters.closedAbusive).toBe(0);
  });

  it('admits a scrape when every connection slot is held by an idle client, by closing the least recently active one', async () => {
    const srv = await start(sampleSnapshot, { maxConnections: 4 });
    for (let i = 0; i < 4; i++) await nonReader(srv.port, '');
    await sleep(50);
    expect((await get(srv.port)).status).toBe(200);
    expect(srv.counters.evicted).toBe(1);
  });

  it('closes an idle connection after the idle timeout', async () => {
    const srv = await start(sampleSnapshot, { idleTimeoutMs: 150 });
    const s = await nonReader(srv.port, 'GET /metr');
    const gone = new Promise<void>((r) => s.once('close', () => r()));
    s.resume();
    await gone;
    expect(srv.counters.closedIdle).toBe(1);
  });

  it('refuses a request head longer than 8 KiB and a request that is not HTTP', async () => {
    const srv = await start(sampleSnapshot);
    const reply = (text: string) => new Promise<string>((resolve) => {
      const s = connect(srv.port, '127.0.0.1');
      sockets.push(s);
      let got = '';
      s.setEncoding('utf8');
      s.on('data', (d: string) => { got += d; });
      s.on('close', () => resolve(got));
      s.write(text);
    });
    expect(await reply(`GET /metrics HTTP/1.1\r\nX-Pad: ${'a'.repeat(9000)}\r\n\r\n`)).toMatch(/^HTTP\/1\.1 431 /);
    expect(await reply('hello there\r\n\r\n')).toMatch(/^HTTP\/1\.1 400 /);
    expect((await get(srv.port)).status).toBe(200);
  });

  it('reads request heads the way scrapers write them', () => {
    expect(parseRequestHead('GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nUser-Agent: Prometheus/2.48.0')).toEqual({ method: 'GET', path: '/metrics', keepAlive: true, hasBody: false });
    expect(parseRequestHead('GET /metrics HTTP/1.1\r\nConnection: close')).toMatchObject({ keepAlive: false });
    expect(parseRequestHead('GET /metrics HTTP/1.0')).toMatchObject({ keepAlive: false });
    expect(parseRequestHead('GET /metrics HTTP/1.0\r\nConnection: Keep-Alive')).toMatchObject({ keepAlive: true });
    expect(parseRequestHead('POST /metrics HTTP/1.1\r\nContent-Length: 3')).toMatchObject({ method: 'POST', hasBody: true });
    expect(parseRequestHead('POST /metrics HTTP/1.1\r\nContent-Length: 0')).toMatchObject({ hasBody: false });
    expect(parseRequestHead('GET /metrics HTTP/2.0')).toBeNull();
    expect(parseRequestHead('GET /metrics HTTP/1.1\r\nno colon here')).toBeNull();
  });
});
