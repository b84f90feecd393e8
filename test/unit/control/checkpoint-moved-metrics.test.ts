/** What the agent says a checkpoint moved (`checkpoint-done`'s bytes and pages) reaches the log, status and /metrics. */
import { SETTLE_US, StallCauses } from '../../../lib/io/stall-causes';
import { FrameWait } from '../../../lib/io/frame-wait';
import { renderMetrics } from '../../../lib/control/metrics';
import { formatStatus } from '../../../lib/control/status-format';
import { emptyAgentSnapshot, snapshotOf } from '../../../lib/control/snapshot';
import { ShadowPipeline, makePipelineConfig } from '../../../lib/pipeline';

function pipelineWithLog() {
  const logged: { event: string; fields: Record<string, unknown> }[] = [];
  const asked: number[] = [];
  const p = new ShadowPipeline(makePipelineConfig(), {
    toReplica: () => {}, toClient: () => {}, sendCheckpoint: (r) => asked.push(r.epoch),
    log: (_level, event, fields) => logged.push({ event, fields }),
  }, 0, true);
  return { p, logged, asked };
}

describe('state moved by checkpoints', () => {
  it('adds up what each checkpoint-done says it moved, and logs each one', () => {
    const { p, logged, asked } = pipelineWithLog();
    p.request('manual', undefined, 10);
    p.checkpointDone(asked[0], 20, 4.2, { bytes: 5_766_345, pages: 1405 });
    p.request('manual', undefined, 30);
    // An agent that moves nothing (the lab agent) says bytes 0 and no pages.
    p.checkpointDone(asked[1], 40, 0.1, { bytes: 0 });
    expect(p.stageCounters().replicate).toMatchObject({ checkpoint_bytes_moved: 5_766_345, checkpoint_pages_moved: 1405 });
    const done = logged.filter((l) => l.event === 'checkpoint-done').map((l) => l.fields);
    expect(done).toEqual([expect.objectContaining({ bytes: 5_766_345, pages: 1405 }), expect.objectContaining({ bytes: 0 })]);
    expect(done[1]).not.toHaveProperty('pages');
    const text = renderMetrics(snapshotOf(p, { name: 't', startedMs: 0, nowMs: 1000, ports: [], agent: emptyAgentSnapshot() }));
    expect(text).toContain('shadowvm_checkpoint_moved_bytes_total 5766345');
    expect(text).toContain('shadowvm_checkpoint_moved_pages_total 1405');
  });

  it('counts nothing for an answer to a checkpoint it gave up on', () => {
    const { p, asked } = pipelineWithLog();
    p.request('manual', undefined, 10);
    p.checkpointDone(asked[0] + 7, 20, 1, { bytes: 999, pages: 9 });
    expect(p.stageCounters().replicate).toMatchObject({ checkpoint_bytes_moved: 0, checkpoint_pages_moved: 0 });
  });
});

describe('memory in status and /metrics', () => {
  it('reports the resident set and the data plane heap, from the thread that makes the snapshot', () => {
    const { p } = pipelineWithLog();
    const snap = snapshotOf(p, { name: 't', startedMs: 0, nowMs: 1000, ports: [], agent: emptyAgentSnapshot() });
    const m = snap.memory!;
    // This process: a resident set larger than its heap in use, and a heap no larger than what V8 holds.
    expect(m.rssBytes).toBeGreaterThan(m.heapUsedBytes);
    expect(m.heapUsedBytes).toBeGreaterThan(0);
    expect(m.heapUsedBytes).toBeLessThanOrEqual(m.heapSizeBytes);
    const text = renderMetrics(snap);
    expect(text).toContain(`process_resident_memory_bytes ${m.rssBytes}`);
    expect(text).toContain(`shadowvm_data_plane_heap_used_bytes ${m.heapUsedBytes}`);
    expect(text).toContain(`shadowvm_data_plane_heap_size_bytes ${m.heapSizeBytes}`);
    expect(formatStatus(snap)).toMatch(/memory: \d+\.\d MiB resident; data-plane heap \d+\.\d of \d+\.\d MiB in use/);
  });
});

describe('frame wait in status and /metrics', () => {
  it('renders the per-breath wait as a histogram, the last minute\'s longest as a gauge, and a status line', () => {
    const { p } = pipelineWithLog();
    let now = 1_800_000_000_000_000;
    const w = new FrameWait(() => now);
    w.observe(now - 150);
    w.observe(now - 14_000);
    now += 2_000_000;
    const snap = snapshotOf(p, { name: 't', startedMs: 0, nowMs: 1000, ports: [], agent: emptyAgentSnapshot(), frameWait: w.snapshot() });
    const text = renderMetrics(snap);
    expect(text).toContain('# TYPE shadowvm_frame_wait_seconds histogram');
    expect(text).toContain('shadowvm_frame_wait_seconds_bucket{le="0.00025"} 1');
    expect(text).toContain('shadowvm_frame_wait_seconds_bucket{le="0.025"} 2');
    expect(text).toContain('shadowvm_frame_wait_seconds_count 2');
    expect(text).toContain('shadowvm_frame_wait_max_seconds 0.014');
    expect(formatStatus(snap)).toContain('frame wait: longest 14.00 ms in the last 10 s, 14.00 ms in the last minute, 14.00 ms since start; 1 breath(s) over 10 ms');
  });

  it('counts the breaths over 10 ms by cause in /metrics, and names the last one\'s parts in status', () => {
    const { p } = pipelineWithLog();
    let now = 1_800_000_000_000_000;
    const w = new FrameWait(() => now);
    w.observe(now - 12_500);
    const v = { idle: 0, active: 0 };
    const causes = new StallCauses({ loop: () => v, runQueueUs: () => 0 }, () => now);
    causes.tick();
    const oldest = now;
    causes.noteTask('breath hsb', now, now + 9_000);
    now += 12_000;
    v.active += 12;
    causes.stall(oldest, now, now + 500, 300);
    now += 500 + SETTLE_US;
    causes.tick();
    const snap = snapshotOf(p, { name: 't', startedMs: 0, nowMs: 1000, ports: [], agent: emptyAgentSnapshot(), frameWait: { ...w.snapshot(), stalls: causes.snapshot() } });
    const text = renderMetrics(snap);
    expect(text).toContain('# TYPE shadowvm_frame_wait_stalls_total counter');
    expect(text).toContain('shadowvm_frame_wait_stalls_total{cause="other-work"} 1');
    expect(text).toContain('shadowvm_frame_wait_stalls_total{cause="gc"} 0');
    expect(formatStatus(snap)).toContain('  over 10 ms, by the largest part: other-work 1; the last: 12.5 ms (other-work 12.0, breath 0.5; meanwhile breath hsb 9.0 ms)');
  });

  it('says nothing about frame waits where no port timestamps its frames', () => {
    const { p } = pipelineWithLog();
    const snap = snapshotOf(p, { name: 't', startedMs: 0, nowMs: 1000, ports: [], agent: emptyAgentSnapshot(), frameWait: new FrameWait().snapshot() });
    expect(formatStatus(snap)).not.toContain('frame wait');
  });
});
