import { createServer, Server, Socket } from 'node:net';
import { join } from 'node:path';
import { LabAgent, LabAgentOptionError, runLabAgent } from '../../../lib/agents/lab-agent';
import { AgentLink } from '../../../lib/replicate/agent-client';
import { sleep, tempDir, waitFor } from './socket-helpers';

/** A hand-made bridge: records the agent's lines and lets the test write anything back. */
class FakeBridge {
  readonly lines: Record<string, unknown>[] = [];
  connections = 0;
  socket: Socket | null = null;
  private readonly server: Server;

  constructor(readonly path: string, private readonly sayHello = true) {
    this.server = createServer((s) => {
      this.connections++;
      this.socket = s;
      let buf = '';
      s.setEncoding('utf8');
      s.on('data', (d: string) => {
        buf += d;
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          this.lines.push(JSON.parse(buf.slice(0, nl)));
          buf = buf.slice(nl + 1);
        }
      });
      s.on('error', () => {});
      if (this.sayHello) s.write('{"type":"hello","version":1,"role":"bridge","name":"fake"}\n');
    });
  }

  listen(): Promise<void> {
    return new Promise((r) => this.server.listen(this.path, () => r()));
  }

  of(type: string): Record<string, unknown>[] {
    return this.lines.filter((l) => l.type === type);
  }

  close(): Promise<void> {
    this.socket?.destroy();
    return new Promise((r) => this.server.close(() => r()));
  }
}

let tmp: ReturnType<typeof tempDir>;
let path: string;
let agent: LabAgent | null;
let bridge: FakeBridge | null;

beforeEach(() => {
  tmp = tempDir('lab');
  path = join(tmp.dir, 'agent.sock');
  agent = null;
  bridge = null;
});

afterEach(async () => {
  await agent?.stop();
  await bridge?.close();
  tmp.remove();
});

describe('runLabAgent', () => {
  it('keeps trying with back-off until the bridge appears, then says hello', async () => {
    agent = runLabAgent({ socketPath: path, reconnectInitialMs: 10, reconnectMaxMs: 40, heartbeatMs: 1000 });
    await sleep(200);
    const attempts = agent.stats.connectAttempts;
    // 10 + 20 + 40 + 40 + … ms: a handful of attempts, not a busy loop.
    expect(attempts).toBeGreaterThanOrEqual(3);
    expect(attempts).toBeLessThanOrEqual(10);
    bridge = new FakeBridge(path);
    await bridge.listen();
    await waitFor('hello', () => bridge!.of('hello').length === 1);
    expect(bridge.of('hello')[0]).toEqual({ type: 'hello', version: 1, role: 'agent', name: 'lab-agent' });
    await waitFor('the session', () => agent!.connected);
    expect(agent.stats.sessions).toBe(1);
  });

  it('reports what setLiveness says in its heartbeats, and sends primary-down on request', async () => {
    bridge = new FakeBridge(path);
    await bridge.listen();
    agent = runLabAgent({ socketPath: path, heartbeatMs: 20 });
    await waitFor('a heartbeat', () => bridge!.of('heartbeat').length > 0);
    expect(bridge.of('heartbeat')[0]).toEqual({ type: 'heartbeat', primary: 'up', backup: 'up' });
    agent.setLiveness('down', 'up');
    await waitFor('a heartbeat with the primary down', () => bridge!.of('heartbeat').some((h) => h.primary === 'down'));
    expect(agent.reportDown('primary', 'killed by the test')).toBe(true);
    await waitFor('primary-down', () => bridge!.of('primary-down').length === 1);
    expect(bridge.of('primary-down')[0]).toEqual({ type: 'primary-down', reason: 'killed by the test' });
  });

  it('answers malformed lines from the bridge with an error and stays connected', async () => {
    bridge = new FakeBridge(path);
    await bridge.listen();
    agent = runLabAgent({ socketPath: path, heartbeatMs: 1000 });
    await waitFor('the session', () => agent!.connected);
    bridge.socket!.write('{"type":"checkpoint","epoch":"soon"}\n');
    await waitFor('an error reply', () => bridge!.of('error').length === 1);
    expect(bridge.of('error')[0]).toMatchObject({ error: expect.stringContaining('"epoch"'), line: '{"type":"checkpoint","epoch":"soon"}' });
    bridge.socket!.write('{"type":"checkpoint","epoch":3,"reason":"manual"}\n');
    await waitFor('the answer', () => bridge!.of('checkpoint-done').length === 1);
    expect(bridge.of('checkpoint-done')[0]).toMatchObject({ epoch: 3, bytes: 0 });
    expect(agent.stats.protocolErrors).toBe(1);
    expect(agent.connected).toBe(true);
  });

  it('drops answers still pending when the bridge goes away', async () => {
    bridge = new FakeBridge(path);
    await bridge.listen();
    agent = runLabAgent({ socketPath: path, delayMs: 100, reconnectInitialMs: 1000, reconnectMaxMs: 1000 });
    await waitFor('the session', () => agent!.connected);
    bridge.socket!.write('{"type":"checkpoint","epoch":1,"reason":"manual"}\n');
    await waitFor('the checkpoint to arrive', () => agent!.stats.checkpoints === 1);
    bridge.socket!.destroy();
    await sleep(150);
    expect(agent.stats.done).toBe(0);
  });

  it('stops reconnecting once stopped', async () => {
    agent = runLabAgent({ socketPath: path, reconnectInitialMs: 10, reconnectMaxMs: 10 });
    await sleep(50);
    await agent.stop();
    const attempts = agent.stats.connectAttempts;
    await sleep(60);
    expect(agent.stats.connectAttempts).toBe(attempts);
  });

  it('backs off after being refused as a second agent, and takes over when the first leaves', async () => {
    const link = new AgentLink({ socketPath: path, name: 'br0' });
    await link.listen();
    try {
      const first = runLabAgent({ socketPath: path, name: 'first', heartbeatMs: 50 });
      await waitFor('the first agent', () => link.agent?.name === 'first');
      agent = runLabAgent({ socketPath: path, name: 'second', heartbeatMs: 50, reconnectInitialMs: 10, reconnectMaxMs: 50 });
      await waitFor('a refusal', () => link.counters.connectionsRefused >= 1);
      expect(agent.connected).toBe(false);
      await first.stop();
      await waitFor('the second agent', () => link.agent?.name === 'second');
      expect(agent.stats.errorsFromBridge).toBeGreaterThanOrEqual(1);
    } finally {
      await agent?.stop();
      agent = null;
      await link.close();
    }
  });

  it.each([
    [{ delayMs: -1 }, 'delayMs'],
    [{ failFraction: 1.5 }, 'failFraction'],
    [{ heartbeatMs: 0 }, 'heartbeatMs'],
    [{ reconnectInitialMs: 500, reconnectMaxMs: 100 }, 'reconnectInitialMs'],
    [{ bytesPerCheckpoint: 1.5 }, 'bytesPerCheckpoint'],
  ])('rejects bad options %j', (opts, option) => {
    expect(() => runLabAgent({ socketPath: path, ...opts })).toThrow(LabAgentOptionError);
    try {
      runLabAgent({ socketPath: path, ...opts });
    } catch (e) {
      expect((e as LabAgentOptionError).option).toBe(option);
    }
  });
});
