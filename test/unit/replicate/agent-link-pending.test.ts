/**
 * Who becomes the agent: only a connection that says hello, quickly. A
 * silent or babbling connection can never keep the real agent out.
 * Issue 7, the agent-socket rows.
 */
import { connect, Socket } from 'node:net';
import { join } from 'node:path';
import { runLabAgent, LabAgent } from '../../../lib/agents/lab-agent';
import { AgentLink, AgentLinkOptions, MAX_PENDING_ERRORS } from '../../../lib/replicate/agent-client';
import { HelloMessage } from '../../../lib/replicate/agent-protocol';
import { LineClient, sleep, tempDir, waitFor } from '../agents/socket-helpers';

const HELLO = { type: 'hello', version: 1, role: 'agent', name: 'raw' };

let tmp: ReturnType<typeof tempDir>;
let path: string;
let link: AgentLink | null;
let agents: LabAgent[];
let clients: LineClient[];
let stopMute: (() => void) | null;

beforeEach(() => {
  tmp = tempDir('pend');
  path = join(tmp.dir, 'agent.sock');
  link = null;
  agents = [];
  clients = [];
  stopMute = null;
});

afterEach(async () => {
  stopMute?.();
  for (const c of clients) c.close();
  for (const a of agents) await a.stop();
  await link?.close();
  tmp.remove();
});

async function startLink(opts: Partial<AgentLinkOptions> = {}) {
  const hellos: HelloMessage[] = [];
  const gone: string[] = [];
  link = new AgentLink({ socketPath: path, name: 'br0', ...opts }, {
    connected: (h) => hellos.push(h),
    disconnected: (why) => gone.push(why),
  });
  await link.listen();
  return { link, hellos, gone };
}

async function client(): Promise<LineClient> {
  const c = await LineClient.connect(path);
  clients.push(c);
  expect(await c.next()).toMatchObject({ type: 'hello', role: 'bridge' });
  return c;
}

/** A client that connects, says nothing, and reconnects the moment it is dropped. */
function muteReconnector(): void {
  let stopped = false;
  let socket: Socket | null = null;
  const again = () => {
    if (stopped) return;
    socket = connect(path);
    socket.on('error', () => {});
    socket.on('close', () => { if (!stopped) setImmediate(again); });
  };
  again();
  stopMute = () => {
    stopped = true;
    socket?.destroy();
  };
}

describe('AgentLink: pending connections and the agent slot', () => {
  it('lets the real agent in while a silent client keeps reconnecting', async () => {
    const { hellos } = await startLink();
    muteReconnector();
    await sleep(50);
    agents.push(runLabAgent({ socketPath: path, name: 'real', heartbeatMs: 100, reconnectInitialMs: 20, reconnectMaxMs: 200 }));
    // Before: the silent client held the only slot until the heartbeat timeout, then took it again at once.
    await waitFor('the real agent to be connected', () => link!.connected, 3000);
    expect(link!.agent?.name).toBe('real');
    expect(hellos.map((h) => h.name)).toEqual(['real']);
  });

  it('makes the first connection to say hello the agent, even after a silent one, and closes the rest', async () => {
    const { hellos } = await startLink();
    const silent = await client();
    const agent = await client();
    agent.send(HELLO);
    await waitFor('the agent', () => hellos.length === 1);
    expect(link!.connected).toBe(true);
    expect(await silent.next()).toMatchObject({ type: 'error', error: expect.stringContaining('said hello first') });
    await silent.whenClosed();
    expect(agent.closed).toBe(false);
  });

  it('closes a connection that has not said hello within the hello timeout, however much else it sends', async () => {
    const { hellos } = await startLink({ helloTimeoutMs: 200 });
    const c = await client();
    // Messages of unknown type are not errors, and before hello they do not keep the connection alive.
    const chatter = setInterval(() => c.send({ type: 'telemetry', cpu: 1 }), 40);
    try {
      await c.whenClosed(2000);
    } finally {
      clearInterval(chatter);
    }
    expect(link!.counters.helloTimeouts).toBe(1);
    expect(hellos).toEqual([]);
  });

  it(`closes a connection that makes more than ${MAX_PENDING_ERRORS} protocol errors before its hello`, async () => {
    await startLink({ helloTimeoutMs: 60_000 });
    const c = await client();
    for (let i = 0; i <= MAX_PENDING_ERRORS; i++) c.send('not json\n');
    await c.whenClosed();
    expect(link!.counters.protocolErrors).toBe(MAX_PENDING_ERRORS + 1);
  });

  it('closes the oldest pending connection when too many wait for their hello, so a new one always gets in', async () => {
    const { hellos } = await startLink({ maxPendingConnections: 2, helloTimeoutMs: 60_000 });
    const first = await client();
    await client();
    const third = await client();
    await first.whenClosed();
    expect(link!.counters.pendingEvicted).toBe(1);
    third.send(HELLO);
    await waitFor('the third to be the agent', () => hellos.length === 1);
  });

  it('does not count a connection as the agent before its hello', async () => {
    await startLink();
    await client();
    await sleep(50);
    expect(link!.connected).toBe(false);
    expect(link!.snapshot().connected).toBe(false);
    expect(link!.sendCheckpoint({ epoch: 1, reason: 'manual' })).toBe(false);
  });

  it('drops an agent that leaves more than maxOutputBytes of our messages unread', async () => {
    const { gone } = await startLink({ maxOutputBytes: 4096 });
    const s = connect(path);
    s.on('error', () => {});
    await new Promise<void>((r) => s.once('connect', () => r()));
    s.write(`${JSON.stringify(HELLO)}\n`);
    s.pause();
    try {
      await waitFor('the agent', () => link!.connected);
      let sent = 0;
      while (link!.sendCheckpoint({ epoch: ++sent, reason: 'manual' }) && sent < 200_000) { /* fill the socket buffers */ }
      expect(sent).toBeLessThan(200_000);
      await waitFor('the disconnect', () => gone.length === 1);
      expect(gone[0]).toMatch(/unread/);
    } finally {
      s.destroy();
    }
  });

  it('closes pending connections when the link closes', async () => {
    await startLink();
    const c = await client();
    await link!.close();
    await c.whenClosed();
  });
});
