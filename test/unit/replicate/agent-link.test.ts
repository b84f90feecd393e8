import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { SocketInUseError, SocketPathError } from '../../../lib/control/unix-socket';
import { runLabAgent, LabAgent } from '../../../lib/agents/lab-agent';
import { AgentLink, AgentLinkListener } from '../../../lib/replicate/agent-client';
import { CheckpointDoneMessage, CheckpointFailedMessage, HeartbeatMessage, HelloMessage } from '../../../lib/replicate/agent-protocol';
import { DEFAULT_REPLICATOR_CONFIG, ReplicationState, Replicator } from '../../../lib/replicate/replicator';
import { LineClient, makeStaleSocket, sleep, tempDir, waitFor } from '../agents/socket-helpers';

/** Everything the link reports, in order. */
class Recorder implements AgentLinkListener {
  readonly events: [string, unknown][] = [];
  connected(hello: HelloMessage): void { this.events.push(['connected', hello]); }
  disconnected(why: string): void { this.events.push(['disconnected', why]); }
  checkpointDone(msg: CheckpointDoneMessage): void { this.events.push(['checkpointDone', msg]); }
  checkpointFailed(msg: CheckpointFailedMessage): void { this.events.push(['checkpointFailed', msg]); }
  heartbeat(msg: HeartbeatMessage): void { this.events.push(['heartbeat', msg]); }
  primaryDown(msg: unknown): void { this.events.push(['primaryDown', msg]); }
  backupDown(msg: unknown): void { this.events.push(['backupDown', msg]); }

  of(name: string): unknown[] {
    return this.events.filter(([n]) => n === name).map(([, v]) => v);
  }

  async next(name: string, timeoutMs = 3000): Promise<unknown> {
    const seen = this.of(name).length;
    await waitFor(`event ${name}`, () => this.of(name).length > seen, timeoutMs);
    return this.of(name)[seen];
  }
}

const HELLO = { type: 'hello', version: 1, role: 'agent', name: 'raw' };

let tmp: ReturnType<typeof tempDir>;
let path: string;
let link: AgentLink | null;
let agents: LabAgent[];
let clients: LineClient[];

beforeEach(() => {
  tmp = tempDir('agent');
  path = join(tmp.dir, 'run', 'agent.sock');
  link = null;
  agents = [];
  clients = [];
});

afterEach(async () => {
  for (const c of clients) c.close();
  for (const a of agents) await a.stop();
  await link?.close();
  tmp.remove();
});

async function startLink(opts: { heartbeatTimeoutMs?: number; maxLineBytes?: number } = {}): Promise<{ link: AgentLink; rec: Recorder }> {
  const rec = new Recorder();
  link = new AgentLink({ socketPath: path, name: 'br0', ...opts }, rec);
  await link.listen();
  return { link, rec };
}

async function rawClient(sayHello = true): Promise<LineClient> {
  const c = await LineClient.connect(path);
  clients.push(c);
  expect(await c.next()).toEqual({ type: 'hello', version: 3, role: 'bridge', name: 'br0' });
  if (sayHello) c.send(HELLO);
  return c;
}

function labAgent(opts: Partial<Parameters<typeof runLabAgent>[0]> = {}): LabAgent {
  const a = runLabAgent({ socketPath: path, name: 'lab', heartbeatMs: 50, reconnectInitialMs: 20, reconnectMaxMs: 100, ...opts });
  agents.push(a);
  return a;
}

describe('AgentLink socket', () => {
  it('listens on a 0600 socket in a 0700 directory it creates, and removes the socket on close', async () => {
    const { link } = await startLink();
    expect(statSync(path).isSocket()).toBe(true);
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(statSync(join(tmp.dir, 'run')).mode & 0o777).toBe(0o700);
    await link.close();
    expect(existsSync(path)).toBe(false);
  });

  it('replaces a stale socket file that nobody answers on', async () => {
    mkdirSync(dirname(path), { mode: 0o700 });
    makeStaleSocket(path);
    expect(statSync(path).isSocket()).toBe(true);
    const { rec } = await startLink();
    expect(statSync(path).mode & 0o777).toBe(0o600);
    await rawClient();
    await rec.next('connected');
  });

  it('refuses a socket another live bridge is listening on, and leaves that bridge alone', async () => {
    const first = await startLink();
    const second = new AgentLink({ socketPath: path, name: 'br1' });
    await expect(second.listen()).rejects.toBeInstanceOf(SocketInUseError);
    await expect(second.listen()).rejects.toThrow(/socket already in use/);
    await rawClient();
    await first.rec.next('connected');
  });

  it('refuses to replace a path that is not a socket', async () => {
    const file = join(tmp.dir, 'not-a-socket');
    writeFileSync(file, 'keep me');
    path = file;
    const l = new AgentLink({ socketPath: file, name: 'br0' });
    await expect(l.listen()).rejects.toBeInstanceOf(SocketPathError);
    expect(readFileSync(file, 'utf8')).toBe('keep me');
  });
});

describe('AgentLink with a raw client', () => {
  it('says hello first and reports the agent connected once it says hello', async () => {
    const { link, rec } = await startLink();
    const c = await rawClient(false);
    await sleep(20);
    expect(link.connected).toBe(false);
    c.send(HELLO);
    expect(await rec.next('connected')).toEqual(HELLO);
    expect(link.connected).toBe(true);
    expect(link.agent?.name).toBe('raw');
    expect(link.snapshot()).toMatchObject({ connected: true, name: 'raw', messagesIn: 1, messagesOut: 1 });
  });

  it('answers a malformed line with an error and keeps the link up', async () => {
    const { link, rec } = await startLink();
    const c = await rawClient();
    await rec.next('connected');
    c.send('this is not json\n');
    const reply = await c.next();
    expect(reply).toMatchObject({ type: 'error', line: 'this is not json' });
    expect(String(reply.error)).toMatch(/not JSON/);
    c.send('{"type":"heartbeat","primary":"up","backup":"sideways"}\r\n');
    expect(await c.next()).toMatchObject({ type: 'error', error: expect.stringContaining('"backup"') });
    c.send({ type: 'heartbeat', primary: 'up', backup: 'up' });
    expect(await rec.next('heartbeat')).toEqual({ type: 'heartbeat', primary: 'up', backup: 'up' });
    expect(link.connected).toBe(true);
    expect(link.counters.protocolErrors).toBe(2);
    expect(link.lastHeartbeat).toEqual({ type: 'heartbeat', primary: 'up', backup: 'up' });
  });

  it('answers an overlong line with an error, skips it, and reads the next line', async () => {
    const { link, rec } = await startLink({ maxLineBytes: 1024 });
    const c = await rawClient();
    await rec.next('connected');
    c.send(`{"type":"heartbeat","pad":"${'x'.repeat(5000)}`);
    expect(await c.next()).toMatchObject({ type: 'error', error: expect.stringContaining('longer than 1024 bytes') });
    c.send(`${'y'.repeat(3000)}"}\n{"type":"primary-down","reason":"gone"}\n`);
    expect(await rec.next('primaryDown')).toEqual({ type: 'primary-down', reason: 'gone' });
    expect(link.counters.protocolErrors).toBe(1);
  });

  it('ignores a message of an unknown type without replying', async () => {
    const { link, rec } = await startLink();
    const c = await rawClient();
    await rec.next('connected');
    c.send({ type: 'telemetry', cpu: 3 });
    c.send({ type: 'backup-down', reason: 'qmp closed' });
    expect(await rec.next('backupDown')).toEqual({ type: 'backup-down', reason: 'qmp closed' });
    expect(c.received).toHaveLength(1); // only the bridge's hello
    expect(link.counters.unknownMessages).toBe(1);
    expect(link.counters.protocolErrors).toBe(0);
  });

  it('rejects messages before hello and messages that only the bridge sends', async () => {
    const { link, rec } = await startLink();
    const c = await rawClient(false);
    c.send({ type: 'heartbeat', primary: 'up', backup: 'up' });
    expect(await c.next()).toMatchObject({ type: 'error', error: expect.stringContaining('before hello') });
    c.send(HELLO);
    await rec.next('connected');
    c.send({ type: 'checkpoint', epoch: 1, reason: 'manual' });
    expect(await c.next()).toMatchObject({ type: 'error', error: expect.stringContaining('from the bridge to the agent') });
    expect(rec.of('heartbeat')).toEqual([]);
    expect(link.counters.protocolErrors).toBe(2);
  });

  it('never answers an error message with an error', async () => {
    const { link, rec } = await startLink();
    const c = await rawClient();
    await rec.next('connected');
    c.send({ type: 'error', error: 'I did not like your line' });
    c.send({ type: 'heartbeat', primary: 'up', backup: 'up' });
    await rec.next('heartbeat');
    expect(c.received).toHaveLength(1);
    expect(link.counters.protocolErrors).toBe(0);
  });

  it('closes a connection whose hello speaks another protocol version', async () => {
    const { rec } = await startLink();
    const c = await rawClient(false);
    c.send({ ...HELLO, version: 4 });
    expect(await c.next()).toMatchObject({ type: 'error', error: expect.stringContaining('version 4 is not supported') });
    await c.whenClosed();
    expect(rec.of('connected')).toEqual([]);
  });

  it('refuses a second agent with an error while the first stays connected', async () => {
    const { link, rec } = await startLink();
    const first = await rawClient();
    await rec.next('connected');
    const second = await LineClient.connect(path);
    clients.push(second);
    expect(await second.next()).toMatchObject({ type: 'error', error: expect.stringContaining('agent "raw" is already connected') });
    await second.whenClosed();
    expect(link.connected).toBe(true);
    expect(link.counters.connectionsRefused).toBe(1);
    first.send({ type: 'heartbeat', primary: 'up', backup: 'down' });
    expect(await rec.next('heartbeat')).toMatchObject({ backup: 'down' });
  });

  it('reports the agent gone when it closes its socket, and accepts the next one', async () => {
    const { link, rec } = await startLink();
    const c = await rawClient();
    await rec.next('connected');
    c.close();
    expect(await rec.next('disconnected')).toBe('agent closed the connection');
    expect(link.connected).toBe(false);
    expect(link.sendCheckpoint({ epoch: 1, reason: 'manual' })).toBe(false);
    await rawClient();
    await rec.next('connected');
    expect(link.connected).toBe(true);
  });

  it('treats an agent that stays silent past the heartbeat timeout as gone', async () => {
    const { link, rec } = await startLink({ heartbeatTimeoutMs: 150 });
    const c = await rawClient();
    await rec.next('connected');
    const t0 = Date.now();
    expect(await rec.next('disconnected')).toMatch(/no message from the agent for 150 ms/);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(100);
    await c.whenClosed();
    expect(link.counters.heartbeatTimeouts).toBe(1);
    expect(link.connected).toBe(false);
  });

  it('closes a connection that never says hello after the heartbeat timeout, freeing the slot', async () => {
    const { rec } = await startLink({ heartbeatTimeoutMs: 100 });
    const mute = await rawClient(false);
    await mute.whenClosed();
    expect(rec.of('disconnected')).toEqual([]);
    await rawClient();
    await rec.next('connected');
  });

  it('sends checkpoint, failover and reprotect to the agent', async () => {
    const { link, rec } = await startLink();
    const c = await rawClient();
    await rec.next('connected');
    expect(link.sendCheckpoint({ epoch: 4, reason: 'queue', flow: 'tcp a > b' })).toBe(true);
    expect(link.sendFailover(4)).toBe(true);
    expect(link.sendReprotect(5)).toBe(true);
    expect(await c.next()).toEqual({ type: 'checkpoint', epoch: 4, reason: 'queue', flow: 'tcp a > b' });
    expect(await c.next()).toEqual({ type: 'failover', epoch: 4 });
    expect(await c.next()).toEqual({ type: 'reprotect', epoch: 5 });
    expect(link.counters.messagesOut).toBe(4);
  });

  it('reports the agent disconnected when the bridge closes', async () => {
    const { link, rec } = await startLink();
    const c = await rawClient();
    await rec.next('connected');
    await link.close();
    expect(rec.of('disconnected')).toEqual(['bridge closing']);
    await c.whenClosed();
    expect(existsSync(path)).toBe(false);
  });
});

describe('AgentLink with the lab agent', () => {
  it('answers a checkpoint with checkpoint-done for the same epoch', async () => {
    const { rec, link } = await startLink();
    const agent = labAgent({ delayMs: 30, bytesPerCheckpoint: 4096 });
    expect(await rec.next('connected')).toMatchObject({ role: 'agent', name: 'lab' });
    await waitFor('the agent to see the bridge hello', () => agent.connected);
    link.sendCheckpoint({ epoch: 42, reason: 'mismatch', flow: 'tcp 10.0.0.1:4000 > 10.0.0.2:80' });
    const done = (await rec.next('checkpointDone')) as CheckpointDoneMessage;
    expect(done).toMatchObject({ type: 'checkpoint-done', epoch: 42, bytes: 4096 });
    expect(done.ms).toBeGreaterThanOrEqual(25);
    expect(agent.stats).toMatchObject({ checkpoints: 1, done: 1, failed: 0 });
  });

  it('answers with checkpoint-failed in failure mode', async () => {
    const { rec, link } = await startLink();
    const agent = labAgent({ failFraction: 1, failError: 'lab: told to fail' });
    await rec.next('connected');
    await waitFor('the agent session', () => agent.connected);
    link.sendCheckpoint({ epoch: 7, reason: 'manual' });
    expect(await rec.next('checkpointFailed')).toEqual({ type: 'checkpoint-failed', epoch: 7, error: 'lab: told to fail' });
  });

  it('fails the fraction of checkpoints its random source picks', async () => {
    const { rec, link } = await startLink();
    const draws = [0.1, 0.9, 0.2, 0.7];
    const agent = labAgent({ failFraction: 0.5, random: () => draws.shift()! });
    await rec.next('connected');
    await waitFor('the agent session', () => agent.connected);
    for (let epoch = 1; epoch <= 4; epoch++) link.sendCheckpoint({ epoch, reason: 'periodic' });
    await waitFor('four answers', () => rec.of('checkpointDone').length + rec.of('checkpointFailed').length === 4);
    expect((rec.of('checkpointFailed') as CheckpointFailedMessage[]).map((m) => m.epoch)).toEqual([1, 3]);
    expect((rec.of('checkpointDone') as CheckpointDoneMessage[]).map((m) => m.epoch)).toEqual([2, 4]);
  });

  it('keeps the link alive with heartbeats that say both VMs are up', async () => {
    const { rec, link } = await startLink({ heartbeatTimeoutMs: 200 });
    labAgent({ heartbeatMs: 50 });
    await rec.next('connected');
    await sleep(500);
    expect(rec.of('disconnected')).toEqual([]);
    expect(link.connected).toBe(true);
    expect(rec.of('heartbeat').length).toBeGreaterThanOrEqual(5);
    expect(rec.of('heartbeat')[0]).toEqual({ type: 'heartbeat', primary: 'up', backup: 'up' });
  });

  it('reconnects when the bridge restarts on the same socket', async () => {
    const first = await startLink();
    const agent = labAgent();
    await first.rec.next('connected');
    await first.link.close();
    await waitFor('the agent to notice', () => !agent.connected);
    const second = await startLink();
    await second.rec.next('connected');
    await waitFor('the new session', () => agent.connected);
    expect(agent.stats.sessions).toBe(2);
  });

  it('drives the replicator back to COMPARING through a real checkpoint', async () => {
    const states: ReplicationState[] = [];
    let nowUs = 0;
    let replicator: Replicator | null = null;
    const rec = new Recorder();
    link = new AgentLink({ socketPath: path, name: 'br0' }, {
      connected: (h) => { rec.connected(h); replicator!.agentConnected(true, nowUs); },
      disconnected: () => replicator!.agentConnected(false, nowUs),
      checkpointDone: (m) => { rec.checkpointDone(m); replicator!.done(m.epoch, nowUs, m.ms); },
      checkpointFailed: (m) => replicator!.failed(m.epoch, m.error, nowUs),
    });
    replicator = new Replicator(DEFAULT_REPLICATOR_CONFIG, {
      sendCheckpoint: (req) => link!.sendCheckpoint(req),
      checkpointDone: () => {},
      stateChanged: (_from, to) => states.push(to),
    }, nowUs, false);
    await link.listen();
    labAgent({ delayMs: 10 });
    await rec.next('connected');
    await waitFor('the reconnect checkpoint', () => replicator!.state === 'COMPARING');
    nowUs = 1_000_000;
    expect(replicator.request('mismatch', 'tcp a > b', nowUs)).toBe(true);
    await waitFor('the mismatch checkpoint', () => replicator!.completed === 2);
    expect(replicator.state).toBe('COMPARING');
    expect(states).toEqual(['CHECKPOINTING', 'COMPARING', 'CHECKPOINTING', 'COMPARING']);
    expect((rec.of('checkpointDone') as CheckpointDoneMessage[]).map((m) => m.epoch)).toEqual([1, 2]);
  });
});
