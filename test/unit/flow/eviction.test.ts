import { FlowTable } from '../../../lib/flow/flow-table';
import { ShadowPipeline, makePipelineConfig } from '../../../lib/pipeline';
import { CheckpointRequest } from '../../../lib/replicate';
import { emptyAgentSnapshot, snapshotOf } from '../../../lib/control/snapshot';
import { tcpFrame } from '../../support/frames';

describe('eviction under a SYN flood', () => {
  it('evicts a flow marked evict-first before an older one that is not', () => {
    const evicted: string[] = [];
    const t = new FlowTable<{ halfOpen: boolean }>(3, (e) => evicted.push(e.key), (s) => s.halfOpen);
    t.getOrCreate('established', 1, () => ({ halfOpen: false }));
    t.getOrCreate('syn-1', 2, () => ({ halfOpen: true }));
    t.getOrCreate('syn-2', 3, () => ({ halfOpen: true }));
    t.getOrCreate('syn-3', 4, () => ({ halfOpen: true }));
    expect(evicted).toEqual(['syn-1']);
    expect(t.peek('established')).toBeDefined();
  });

  it('keeps an idle established connection while spoofed SYNs fill the table', () => {
    const p = new ShadowPipeline(makePipelineConfig({ maxFlows: 16 }), { toReplica: () => {}, toClient: () => {}, sendCheckpoint: () => {}, log: () => {} }, 0, true);
    p.fromClient(tcpFrame({ from: 'client', sport: 40000, seq: 1, flags: 'S' }), 1);
    p.fromVm(0, tcpFrame({ from: 'vm', dport: 40000, seq: 9, ack: 2, flags: 'SA' }), 2);
    p.fromVm(1, tcpFrame({ from: 'vm', dport: 40000, seq: 99, ack: 2, flags: 'SA' }), 3);
    p.fromClient(tcpFrame({ from: 'client', sport: 40000, seq: 2, ack: 10, flags: 'A' }), 4);
    for (let i = 0; i < 1000; i++) p.fromClient(tcpFrame({ from: 'client', sport: 1024 + i, seq: i, flags: 'S', src: `10.${(i >> 8) & 255}.${i & 255}.9` }), 10 + i);
    expect(p.flows.size).toBe(16);
    expect([...p.flows.entries()].some((e) => e.state.name.includes(':40000 '))).toBe(true);
  });
});

describe('an open connection evicted from a full table', () => {
  it('goes on unprotected when it speaks again: counted, logged, never compared from raw sequence numbers', () => {
    const released: Buffer[] = [];
    const logs: string[] = [];
    const p = new ShadowPipeline(makePipelineConfig({ maxFlows: 4 }), { toReplica: () => {}, toClient: (f) => released.push(Buffer.from(f)), sendCheckpoint: () => {}, log: (_l, e) => logs.push(e) }, 0, true);
    const open = (sport: number, t: number) => {
      p.fromClient(tcpFrame({ from: 'client', sport, seq: 1, flags: 'S' }), t);
      p.fromVm(0, tcpFrame({ from: 'vm', dport: sport, seq: 9, ack: 2, flags: 'SA' }), t + 1);
      p.fromVm(1, tcpFrame({ from: 'vm', dport: sport, seq: 99, ack: 2, flags: 'SA' }), t + 2);
      p.fromClient(tcpFrame({ from: 'client', sport, seq: 2, ack: 10, flags: 'A' }), t + 3);
    };
    open(40000, 10);
    for (let i = 1; i <= 4; i++) open(40000 + i, 100 * i);
    expect([...p.flows.entries()].some((e) => e.state.name.includes(':40000 '))).toBe(false);
    const n = released.length;
    p.fromVm(0, tcpFrame({ from: 'vm', dport: 40000, seq: 10, ack: 2, payload: 'resumed' }), 1000);
    expect(released).toHaveLength(n + 1); // released as it is, not held for a comparison that cannot work
    const c = p.stageCounters().flow;
    expect(c.evicted_open).toBeGreaterThanOrEqual(1);
    expect(c.evicted_resumed_unprotected).toBe(1);
    expect(logs).toContain('flow-unprotected');
  });
});

describe('a flow evicted while the primary\'s output on it is held', () => {
  const NAME = 'tcp 10.77.0.1:40000 > 10.77.0.2:80';

  function full() {
    const out = { client: [] as Buffer[], checkpoints: [] as CheckpointRequest[] };
    const logs: { event: string; fields: Record<string, unknown> }[] = [];
    const p = new ShadowPipeline(makePipelineConfig({ maxFlows: 4 }), {
      toReplica: () => {}, toClient: (f) => out.client.push(Buffer.from(f)), sendCheckpoint: (r) => out.checkpoints.push(r),
      log: (_l, event, fields) => logs.push({ event, fields }),
    }, 0, true);
    const open = (sport: number, t: number) => {
      p.fromClient(tcpFrame({ from: 'client', sport, seq: 1, flags: 'S' }), t);
      p.fromVm(0, tcpFrame({ from: 'vm', dport: sport, seq: 9, ack: 2, flags: 'SA' }), t + 1);
      p.fromVm(1, tcpFrame({ from: 'vm', dport: sport, seq: 99, ack: 2, flags: 'SA' }), t + 2);
      p.fromClient(tcpFrame({ from: 'client', sport, seq: 2, ack: 10, flags: 'A' }), t + 3);
    };
    open(40000, 10);
    // The primary answers; the backup has not yet, so the answer is held.
    const held = tcpFrame({ from: 'vm', dport: 40000, seq: 10, ack: 2, flags: 'PA', payload: 'held answer' });
    p.fromVm(0, held, 20);
    const sentBefore = out.client.length;
    for (let i = 1; i <= 3; i++) open(40000 + i, 100 * i);
    // A fifth connection's SYN finds the table full: the least recently used flow, the one with held output, goes.
    p.fromClient(tcpFrame({ from: 'client', sport: 40004, seq: 1, flags: 'S' }), 400);
    const status = () => snapshotOf(p, { name: 'unit', startedMs: 0, nowMs: 0, ports: [], agent: emptyAgentSnapshot() });
    return { p, out, logs, held, sentBefore, status };
  }

  it('keeps the output held, counts the flow, says so, and asks for a checkpoint to settle it', () => {
    const { p, out, logs, held, sentBefore, status } = full();
    expect([...p.flows.entries()].some((e) => e.state.name === NAME)).toBe(false);
    expect(out.client.slice(sentBefore).some((f) => f.equals(held))).toBe(false);
    expect(logs.find((l) => l.event === 'flow-evicted-with-held-output')?.fields).toEqual({ flow: NAME, why: 'lru', frames: 1 });
    expect(out.checkpoints).toEqual([expect.objectContaining({ reason: 'queue', flow: NAME })]);
    expect(p.state).toBe('CHECKPOINTING');
    const s = status();
    expect(s.heldOutput.frames).toBe(1);
    expect(s.flows.evicted).toBe(1);
    expect(s.stages.flow.evicted_open).toBe(1);
  });

  it('releases the held output, byte for byte, once the checkpoint is done', () => {
    const { p, out, held, sentBefore } = full();
    p.checkpointDone(out.checkpoints[0].epoch, 1000);
    expect(out.client.slice(sentBefore).filter((f) => f.equals(held))).toHaveLength(1);
    expect(p.stageCounters().release).toMatchObject({ held_frames: 0, discarded_frames: 0 });
  });

  it('releases the held output at once when that checkpoint fails (DEGRADED)', () => {
    const { p, out, held, sentBefore } = full();
    p.checkpointFailed(out.checkpoints[0].epoch, 'agent: copy failed', 1000);
    expect(p.state).toBe('DEGRADED');
    expect(out.client.slice(sentBefore).filter((f) => f.equals(held))).toHaveLength(1);
    expect(p.stageCounters().release.held_frames).toBe(0);
  });

  it('releases the held output first, in the primary\'s order, when the connection speaks again before the checkpoint is done', () => {
    const { p, out, logs, held, sentBefore } = full();
    const next = tcpFrame({ from: 'vm', dport: 40000, seq: 21, ack: 2, flags: 'PA', payload: 'next' });
    p.fromVm(0, next, 1000);
    const c = p.stageCounters().flow;
    expect([c.evicted_resumed_unprotected, c.unprotected]).toEqual([1, 1]);
    expect(logs.find((l) => l.event === 'flow-unprotected')?.fields).toMatchObject({ flow: NAME, heldReleased: 1 });
    p.checkpointDone(out.checkpoints[0].epoch, 1001);
    const sent = out.client.slice(sentBefore);
    expect(sent.filter((f) => f.equals(held) || f.equals(next))).toEqual([held, next]);
  });
});
