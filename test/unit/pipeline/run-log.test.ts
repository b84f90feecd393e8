/**
 * The log lines `shadowvm report` draws from: `released` (per flow, per
 * interval), `mismatch` (with both sides' excerpts), `checkpoint-done`
 * (with the flow that asked).
 */
import { ShadowPipeline, makePipelineConfig, PipelineConfig } from '../../../lib/pipeline';
import { BACKUP, PRIMARY } from '../../../lib/compare';
import { FlowHeldQueue, HeldQueues } from '../../../lib/release/held';
import { C, P, B, fromVm, handshake } from '../../support/pipeline-harness';

function logged(partial: Partial<PipelineConfig> = {}) {
  const lines: { event: string; fields: Record<string, unknown> }[] = [];
  const checkpoints: number[] = [];
  const p = new ShadowPipeline(makePipelineConfig(partial), {
    toReplica: () => {}, toClient: () => {},
    sendCheckpoint: (r) => checkpoints.push(r.epoch),
    log: (_level, event, fields) => lines.push({ event, fields }),
  }, 0, true);
  return { p, lines, checkpoints, of: (event: string) => lines.filter((l) => l.event === event).map((l) => l.fields) };
}

describe('the run log', () => {
  it('says once per releaseLogMs what each flow released in that interval, and nothing for an idle interval', () => {
    const h = logged({ releaseLogMs: 1000 });
    handshake(h as never);
    h.p.fromVm(PRIMARY, fromVm({ seq: P + 1, ack: C + 1, flags: 'PA', payload: 'HTTP/1.1 200 OK\r\n' }), 10);
    h.p.fromVm(BACKUP, fromVm({ seq: B + 1, ack: C + 1, flags: 'PA', payload: 'HTTP/1.1 200 OK\r\n' }), 11);
    h.p.tick(500_000);
    expect(h.of('released')).toEqual([]);
    h.p.tick(1_000_000);
    const first = h.of('released');
    expect(first).toHaveLength(1);
    expect(first[0]).toMatchObject({ flow: expect.stringMatching(/^tcp /), bytes: 17, totalBytes: 17, windowMs: 1000 });
    expect(first[0].frames).toBeGreaterThanOrEqual(1);
    h.p.tick(2_100_000);
    expect(h.of('released')).toHaveLength(1);
  });

  it('writes no released lines when releaseLogMs is 0', () => {
    const h = logged({ releaseLogMs: 0 });
    handshake(h as never);
    h.p.fromVm(PRIMARY, fromVm({ seq: P + 1, ack: C + 1, flags: 'PA', payload: 'abc' }), 10);
    h.p.fromVm(BACKUP, fromVm({ seq: B + 1, ack: C + 1, flags: 'PA', payload: 'abc' }), 11);
    h.p.tick(5_000_000);
    h.p.logReleases(5_000_000, true);
    expect(h.of('released')).toEqual([]);
  });

  it('logs a mismatch with both sides\' excerpts and where they start, and the checkpoint it caused with its flow', () => {
    const h = logged();
    handshake(h as never);
    h.p.fromVm(PRIMARY, fromVm({ seq: P + 1, ack: C + 1, flags: 'PA', payload: 'hello world' }), 10);
    h.p.fromVm(BACKUP, fromVm({ seq: B + 1, ack: C + 1, flags: 'PA', payload: 'hello WORLD' }), 11);
    const [m] = h.of('mismatch');
    expect(m).toMatchObject({ kind: 'data', offset: 6, excerptOffset: 0 });
    expect(h.p.stageCounters().compare).toMatchObject({ mismatches: 1, mismatches_data: 1, mismatches_syn_options: 0 });
    expect(JSON.parse(m.primary as string)).toBe('hello world');
    expect(JSON.parse(m.backup as string)).toBe('hello WORLD');
    h.p.checkpointDone(h.checkpoints[0], 20_000, 3);
    const [done] = h.of('checkpoint-done');
    expect(done).toMatchObject({ epoch: h.checkpoints[0], reason: 'mismatch', flow: m.flow, ms: 3 });
  });
});

describe('HeldQueues.takeReleaseProgress', () => {
  it('names the flows that released the most, sums the rest, and counts each byte once', () => {
    const all = new HeldQueues(() => {});
    const queues = Array.from({ length: 5 }, (_, i) => new FlowHeldQueue(all, `flow ${i}`, false));
    all.trackReleases = true;
    queues.forEach((q, i) => all.release(q.hold(Buffer.alloc(100), null, 1, false, false, 0, 10 * (i + 1), 0)));
    const p = all.takeReleaseProgress(2);
    expect(p.flows.map((f) => [f.flow, f.bytes])).toEqual([['flow 4', 50], ['flow 3', 40]]);
    expect(p.others).toEqual({ flows: 3, frames: 3, bytes: 60, uncheckedFrames: 0, uncheckedBytes: 0 });
    expect(all.takeReleaseProgress(2)).toEqual({ flows: [], others: { flows: 0, frames: 0, bytes: 0, uncheckedFrames: 0, uncheckedBytes: 0 } });
    all.release(queues[0].hold(Buffer.alloc(10), null, 2, false, false, 0, 7, 0));
    queues[0].notePassed(5);
    expect(all.takeReleaseProgress(2).flows).toEqual([{ flow: 'flow 0', frames: 1, bytes: 7, totalBytes: 17, uncheckedFrames: 1, uncheckedBytes: 5 }]);
  });
});
