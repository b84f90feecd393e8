/**
 * The bridge as a whole, on in-memory ports, with a sync agent that speaks
 * the real protocol over a UNIX socket: a client's connection through a
 * protected pair, a mismatch settled by a checkpoint, and what happens when
 * a checkpoint fails or times out (DEGRADED). Time is the bridge's
 * injectable clock: the test moves it and waits for the bridge's own tick
 * to see it, never for real time to pass.
 */
import { join } from 'node:path';
import { Bridge } from '../../lib/bridge';
import { MemoryPort } from '../../lib/io/memory';
import { makePipelineConfig, PipelineConfig } from '../../lib/pipeline';
import { queryControlSocket } from '../../lib/control/control-socket';
import { DEFAULT_REPLICATOR_CONFIG } from '../../lib/replicate';
import { C, P, B, SYN_OPTS, ackOf, fromClient, fromVm, seqOf } from '../support/pipeline-harness';
import { LineClient, tempDir, waitFor } from './agents/socket-helpers';

const FLOW = 'tcp 10.77.0.1:40000 > 10.77.0.2:80';
const REQUEST = 'GET /index.html HTTP/1.1\r\nHost: vm\r\n\r\n';
const REPLICATOR = { ...DEFAULT_REPLICATOR_CONFIG, checkpointTimeoutMs: 500, retryInitialMs: 1000, retryMaxMs: 4000 };

interface LogLine { level: string; event: string; fields: Record<string, unknown> }

async function rig(partial: Partial<PipelineConfig> = {}) {
  const tmp = tempDir('bridge');
  const clock = { us: 1_000_000 };
  const uplink = new MemoryPort('up0');
  const primary = new MemoryPort('p0');
  const backup = new MemoryPort('b0');
  const logs: LogLine[] = [];
  const socket = join(tmp.dir, 'agent.sock');
  const bridge = new Bridge({ uplink, primary, backup }, {
    name: 'unit',
    config: makePipelineConfig({ resync: 'copy', replicator: REPLICATOR, ...partial }),
    agentSocket: socket,
    clockUs: () => clock.us,
    log: (level, event, fields) => logs.push({ level, event, fields: fields ?? {} }),
  });
  await bridge.start();
  const ticks = jest.spyOn(bridge.pipeline, 'tick');
  const agent = await LineClient.connect(socket);
  expect(await agent.next()).toMatchObject({ type: 'hello', role: 'bridge', name: 'unit' });
  agent.send({ type: 'hello', version: 2, role: 'agent', name: 'stub-agent' });
  // Without an agent the bridge ran DEGRADED; the first agent gets a checkpoint at once.
  const first = await agent.next() as { type: string; epoch: number };
  expect(first.type).toBe('checkpoint');
  agent.send({ type: 'checkpoint-done', epoch: first.epoch, ms: 1, bytes: 0 });
  await waitFor('COMPARING', () => bridge.pipeline.state === 'COMPARING');
  return {
    bridge, uplink, primary, backup, agent, clock, logs,
    last: (port: MemoryPort) => port.sent[port.sent.length - 1],
    /** Moves the bridge's clock and waits until its own timer has ticked twice at the new time. */
    advance: async (ms: number) => {
      clock.us += ms * 1000;
      const target = ticks.mock.calls.length + 2;
      await waitFor('two ticks of the bridge', () => ticks.mock.calls.length >= target);
    },
    close: async () => { agent.close(); await bridge.stop(); tmp.remove(); },
  };
}

type Rig = Awaited<ReturnType<typeof rig>>;

/** The client opens a connection and sends a request; both replicas take part in the handshake. */
function connectAndRequest(r: Rig): { request: Buffer; synAck: Buffer } {
  r.uplink.inject([fromClient({ seq: C, flags: 'S', options: SYN_OPTS })]);
  const synAck = fromVm({ seq: P, ack: C + 1, flags: 'SA', options: { ...SYN_OPTS, ts: [7000, 111] } });
  r.primary.inject([synAck]);
  r.backup.inject([fromVm({ seq: B, ack: C + 1, flags: 'SA', options: { ...SYN_OPTS, ts: [99000, 111] } })]);
  r.uplink.inject([fromClient({ seq: C + 1, ack: P + 1, flags: 'A' })]);
  const request = fromClient({ seq: C + 1, ack: P + 1, flags: 'PA', payload: REQUEST });
  r.uplink.inject([request]);
  return { request, synAck };
}

const AFTER_REQUEST = C + 1 + REQUEST.length;

/** Both replicas answer; returns the primary's frame. */
function answer(r: Rig, primaryText: string, backupText: string, backupSeq = B + 1): Buffer {
  const fromPrimary = fromVm({ seq: P + 1, ack: AFTER_REQUEST, flags: 'PA', payload: primaryText });
  r.primary.inject([fromPrimary]);
  r.backup.inject([fromVm({ seq: backupSeq, ack: AFTER_REQUEST, flags: 'PA', payload: backupText })]);
  return fromPrimary;
}

describe('Bridge on in-memory ports', () => {
  it('carries a client\'s connection through both replicas and releases the primary\'s answer byte for byte once the backup said the same', async () => {
    const r = await rig();
    try {
      r.uplink.inject([fromClient({ seq: C, flags: 'S', options: SYN_OPTS })]);
      expect(r.primary.sent).toHaveLength(1);
      expect(r.backup.sent).toHaveLength(1);
      const synAck = fromVm({ seq: P, ack: C + 1, flags: 'SA', options: { ...SYN_OPTS, ts: [7000, 111] } });
      r.primary.inject([synAck]);
      expect(r.uplink.sent).toHaveLength(0); // the backup has not answered yet
      r.backup.inject([fromVm({ seq: B, ack: C + 1, flags: 'SA', options: { ...SYN_OPTS, ts: [99000, 111] } })]);
      expect(r.uplink.sent).toEqual([synAck]);

      r.uplink.inject([fromClient({ seq: C + 1, ack: P + 1, flags: 'A' })]);
      const request = fromClient({ seq: C + 1, ack: P + 1, flags: 'PA', payload: REQUEST });
      r.uplink.inject([request]);
      expect(r.last(r.primary)).toEqual(request);
      const toBackup = r.last(r.backup);
      expect(ackOf(toBackup)).toBe(B + 1); // in the backup's sequence space
      expect(toBackup.subarray(toBackup.length - REQUEST.length).toString('latin1')).toBe(REQUEST);

      const body = 'HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello';
      const fromPrimary = fromVm({ seq: P + 1, ack: AFTER_REQUEST, flags: 'PA', payload: body });
      r.primary.inject([fromPrimary]);
      expect(r.uplink.sent).toHaveLength(1);
      r.backup.inject([fromVm({ seq: B + 1, ack: AFTER_REQUEST, flags: 'PA', payload: body })]);
      expect(r.uplink.sent).toEqual([synAck, fromPrimary]);
      expect(r.uplink.sent.some((f) => seqOf(f) === B || seqOf(f) === B + 1)).toBe(false);

      const snap = r.bridge.snapshot();
      expect(snap).toMatchObject({ state: 'COMPARING', bytesReleased: body.length, mismatches: 0, heldOutput: { frames: 0, bytes: 0 } });
      expect(snap.ports.find((p) => p.role === 'uplink')).toMatchObject({ txFrames: 2, rxFrames: 3 });
    } finally {
      await r.close();
    }
  });

  it('asks the agent for a checkpoint when the replicas differ, then releases the held answer and compares from a reset backup', async () => {
    const r = await rig({ ingressHold: { frames: 2, bytes: 1 << 20 } });
    try {
      connectAndRequest(r);
      const released = r.uplink.sent.length;
      const fromPrimary = answer(r, 'PASV port 30001', 'PASV port 30777');
      const cp = await r.agent.next();
      expect(cp).toMatchObject({ type: 'checkpoint', reason: 'mismatch', flow: FLOW });
      expect(r.bridge.pipeline.state).toBe('CHECKPOINTING');
      expect(r.uplink.sent).toHaveLength(released); // neither side's answer went out

      // Client frames wait while the checkpoint runs, up to the hold's bound; the newest beyond it are dropped.
      const [toPrimary, toBackup] = [r.primary.sent.length, r.backup.sent.length];
      const clientAcks = [4, 8, 12, 16].map((n) => fromClient({ seq: AFTER_REQUEST, ack: P + n, flags: 'A' }));
      r.uplink.inject(clientAcks);
      expect([r.primary.sent.length, r.backup.sent.length]).toEqual([toPrimary, toBackup]);
      expect(r.bridge.snapshot().ingress).toEqual({ heldFrames: 2, holdDropped: 2 });

      const doneBefore = r.bridge.snapshot().checkpoints.done;
      r.agent.send({ type: 'checkpoint-done', epoch: cp.epoch, ms: 12, bytes: 4096 });
      await waitFor('COMPARING', () => r.bridge.pipeline.state === 'COMPARING');
      expect(r.uplink.sent.slice(released)).toEqual([fromPrimary]);
      // The held client frames reach both replicas in order; the backup is a copy of the primary now, so its copy is not translated.
      expect(r.primary.sent.slice(toPrimary)).toEqual(clientAcks.slice(0, 2));
      expect(r.backup.sent.slice(toBackup).map(ackOf)).toEqual([P + 4, P + 8]);
      expect(r.bridge.snapshot().checkpoints.done).toBe(doneBefore + 1);

      // Comparison starts again from the copy: the backup speaks in the primary's sequence space.
      const next = fromVm({ seq: P + 16, ack: AFTER_REQUEST, flags: 'PA', payload: '227 Entering' });
      r.primary.inject([next]);
      r.backup.inject([fromVm({ seq: P + 16, ack: AFTER_REQUEST, flags: 'PA', payload: '227 Entering' })]);
      expect(r.last(r.uplink)).toEqual(next);
      expect(r.bridge.snapshot()).toMatchObject({ mismatches: 1, state: 'COMPARING' });
      expect(r.bridge.pipeline.replicator.counters().requested_mismatch).toBe(1);
    } finally {
      await r.close();
    }
  });

  it('goes DEGRADED when the checkpoint fails: the primary\'s output flows, failover is refused, and it retries with back-off', async () => {
    const r = await rig();
    try {
      connectAndRequest(r);
      const held = answer(r, 'version 1', 'version 2');
      const cp = await r.agent.next();
      expect(cp).toMatchObject({ type: 'checkpoint', reason: 'mismatch' });
      const clientAck = fromClient({ seq: AFTER_REQUEST, ack: P + 10, flags: 'A' });
      r.uplink.inject([clientAck]);
      const toPrimary = r.primary.sent.length;

      r.agent.send({ type: 'checkpoint-failed', epoch: cp.epoch, error: 'migration failed: disk full' });
      await waitFor('DEGRADED', () => r.bridge.pipeline.state === 'DEGRADED');
      // What was held goes at once: the primary's answer to the client, the client's ACK to the primary.
      expect(r.last(r.uplink)).toEqual(held);
      expect(r.primary.sent.slice(toPrimary)).toEqual([clientAck]);
      expect(r.logs.find((l) => l.event === 'state' && l.fields.to === 'DEGRADED')?.fields.why).toMatch(/migration failed: disk full/);

      // The primary's output flows unchecked and counted; the backup's never reaches the client.
      const more = fromVm({ seq: P + 10, ack: AFTER_REQUEST, flags: 'PA', payload: 'unchecked' });
      r.primary.inject([more]);
      expect(r.last(r.uplink)).toEqual(more);
      const sent = r.uplink.sent.length;
      r.backup.inject([fromVm({ seq: B + 10, ack: AFTER_REQUEST, flags: 'PA', payload: 'stale' })]);
      expect(r.uplink.sent).toHaveLength(sent);
      const snap = r.bridge.snapshot();
      expect(snap.policyActions['degraded/forward-primary']).toBe(1);
      expect(snap.checkpoints).toMatchObject({ failed: 1, pending: false });

      // The backup missed a checkpoint: it may not have said what the client received, so it is not promoted.
      r.agent.send({ type: 'primary-down', reason: 'qemu exited' });
      await waitFor('failover refused', () => r.bridge.snapshot().failover.refused === 1);
      expect(r.bridge.snapshot().replicas).toEqual([{ port: 'p0', role: 'primary' }, { port: 'b0', role: 'backup' }]);
      expect(r.bridge.pipeline.state).toBe('DEGRADED');
      expect(r.logs.some((l) => l.event === 'failover-refused')).toBe(true);

      // Retry after the first back-off (1 s), with the reason of the checkpoint that failed.
      const epoch = r.bridge.pipeline.replicator.epoch;
      await r.advance(999);
      expect([r.bridge.pipeline.state, r.bridge.pipeline.replicator.epoch]).toEqual(['DEGRADED', epoch]);
      await r.advance(2);
      // The next message the agent hears is the retry: no failover was ever sent to it.
      const retry = await r.agent.next();
      expect(retry).toMatchObject({ type: 'checkpoint', reason: 'mismatch', flow: FLOW, epoch: epoch + 1 });
      r.agent.send({ type: 'checkpoint-failed', epoch: retry.epoch, error: 'still full' });
      await waitFor('DEGRADED again', () => r.bridge.pipeline.state === 'DEGRADED');
      // The back-off doubled: nothing at 1.5 s, a retry after 2 s.
      await r.advance(1500);
      expect(r.bridge.pipeline.replicator.epoch).toBe(epoch + 1);
      await r.advance(501);
      const again = await r.agent.next();
      expect(again).toMatchObject({ type: 'checkpoint', epoch: epoch + 2 });
      r.agent.send({ type: 'checkpoint-done', epoch: again.epoch, ms: 30, bytes: 1 << 20 });
      await waitFor('COMPARING', () => r.bridge.pipeline.state === 'COMPARING');
      expect(r.bridge.snapshot().checkpoints).toMatchObject({ failed: 2, requested: { mismatch: 3 } });
    } finally {
      await r.close();
    }
  });

  it('goes DEGRADED when the agent does not answer in time, ignores the late answer, and retries', async () => {
    const r = await rig();
    try {
      connectAndRequest(r);
      const held = answer(r, 'slow', 'SLOW');
      const cp = await r.agent.next();
      expect(cp).toMatchObject({ type: 'checkpoint', reason: 'mismatch' });
      const released = r.uplink.sent.length;
      await r.advance(REPLICATOR.checkpointTimeoutMs - 1);
      expect(r.bridge.pipeline.state).toBe('CHECKPOINTING');
      expect(r.uplink.sent).toHaveLength(released);
      await r.advance(2);
      expect(r.bridge.pipeline.state).toBe('DEGRADED');
      expect(r.last(r.uplink)).toEqual(held);
      const rec = r.bridge.pipeline.replicator.history.find((h) => h.epoch === cp.epoch);
      expect(rec).toMatchObject({ outcome: 'failed', error: `no answer within ${REPLICATOR.checkpointTimeoutMs} ms` });

      const inBefore = r.bridge.snapshot().agent.messagesIn;
      r.agent.send({ type: 'checkpoint-done', epoch: cp.epoch, ms: 900, bytes: 1 });
      await waitFor('the late answer to arrive', () => r.bridge.snapshot().agent.messagesIn > inBefore);
      expect(r.bridge.pipeline.state).toBe('DEGRADED');
      expect(r.bridge.snapshot().checkpoints.failed).toBe(1);

      await r.advance(REPLICATOR.retryInitialMs + 1);
      const retry = await r.agent.next();
      expect(retry).toMatchObject({ type: 'checkpoint', reason: 'mismatch', epoch: (cp.epoch as number) + 1 });
      r.agent.send({ type: 'checkpoint-done', epoch: retry.epoch, ms: 20, bytes: 1 });
      await waitFor('COMPARING', () => r.bridge.pipeline.state === 'COMPARING');
    } finally {
      await r.close();
    }
  });
});

describe('a failover asked for while a checkpoint is in flight', () => {
  it('is accepted but waits for the agent\'s answer; the agent hears `failover` only after its checkpoint-done was applied', async () => {
    const r = await rig();
    try {
      connectAndRequest(r);
      answer(r, 'PASV port 30001', 'PASV port 30777');
      const cp = await r.agent.next();
      expect(cp).toMatchObject({ type: 'checkpoint', reason: 'mismatch' });
      const reply = r.bridge.requestFailover();
      expect(reply).toMatchObject({ promoted: false, deferred: true });
      expect(reply.why).toContain(`checkpoint ${cp.epoch} is in flight`);
      expect(r.bridge.snapshot().failover).toMatchObject({ count: 0, deferred: 1, waiting: { cause: 'manual', epoch: cp.epoch } });
      r.agent.send({ type: 'checkpoint-done', epoch: cp.epoch, ms: 3, bytes: 0 });
      // The agent hears who is primary now before it is asked to build a backup from the survivor.
      expect(await r.agent.next()).toMatchObject({ type: 'failover', survivor: 'b0' });
      expect(await r.agent.next()).toMatchObject({ type: 'reprotect' });
      const snap = r.bridge.snapshot();
      expect(snap.failover).toMatchObject({ count: 1, deferred: 1 });
      expect(snap.failover.waiting).toBeUndefined();
      expect(snap.checkpoints.done).toBeGreaterThanOrEqual(2);
      expect(snap.replicas).toEqual([{ port: 'p0', role: 'dead' }, { port: 'b0', role: 'promoted' }]);
      const events = r.logs.map((l) => l.event);
      expect(events.indexOf('checkpoint-done', events.indexOf('failover-deferred'))).toBeLessThan(events.indexOf('failover'));
    } finally {
      await r.close();
    }
  });
});

describe('the flows listing', () => {
  it('finds an old connection by a piece of its key however many flows came after it', async () => {
    const tmp = tempDir('bridge-flows');
    const control = join(tmp.dir, 'control.sock');
    const uplink = new MemoryPort('up0');
    const bridge = new Bridge({ uplink, primary: new MemoryPort('p0'), backup: new MemoryPort('b0') }, {
      name: 'unit', config: makePipelineConfig({ resync: 'copy' }), controlSocket: control, clockUs: () => 1_000_000, log: () => {},
    });
    await bridge.start();
    try {
      // 1,500 connections: the oldest is far outside the 1,000 most recent a plain listing can show.
      for (let i = 0; i < 1500; i++) uplink.inject([fromClient({ sport: 20000 + i, seq: C, flags: 'S', options: SYN_OPTS })]);
      const plain = await queryControlSocket(control, { cmd: 'flows', limit: 5000 });
      expect(plain.ok && plain.flows).toHaveLength(1000);
      expect(plain.ok && plain.flows.some((f) => f.key.includes(':20000 '))).toBe(false);
      const found = await queryControlSocket(control, { cmd: 'flows', match: ':20000 ' });
      expect(found.ok && found.flows.map((f) => f.key)).toEqual(['tcp 10.77.0.1:20000 > 10.77.0.2:80']);
      // Most recent last, and `limit` counts the matches.
      const some = await queryControlSocket(control, { cmd: 'flows', match: ':2000', limit: 3 });
      expect(some.ok && some.flows.map((f) => f.key.split(' ')[1])).toEqual(['10.77.0.1:20007', '10.77.0.1:20008', '10.77.0.1:20009']);
      const bad = await queryControlSocket(control, { cmd: 'flows', match: '' } as never);
      expect(bad).toMatchObject({ ok: false, error: expect.stringContaining('"match" must be a string of 1 to 128 characters') });
    } finally {
      await bridge.stop();
      tmp.remove();
    }
  });
});
