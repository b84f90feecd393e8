import { formatOffset, layoutTimeline, tickStepMs } from '../../../lib/report/layout';
import { RunLog } from '../../../lib/report/run-log';

const T0 = Date.parse('2026-01-01T00:00:00Z');

function runLog(partial: Partial<RunLog>): RunLog {
  return {
    name: null, startMs: T0, endMs: T0 + 10_000, flows: [], releases: [], mismatches: [], checkpoints: [], failovers: [], states: [],
    suppressed: {}, unreadableLines: 0, lines: 1, ...partial,
  };
}

const release = (flow: string | null, atS: number, bytes: number) => ({ flow, atMs: T0 + atS * 1000, windowMs: 1000, frames: 1, bytes, uncheckedFrames: 0, uncheckedBytes: 0 });

describe('layoutTimeline', () => {
  it('maps time linearly onto the plot: the start at its left edge, the end at its right', () => {
    const t = layoutTimeline(runLog({
      flows: ['a'],
      mismatches: [
        { id: 1, flow: 'a', atMs: T0, kind: 'data', offset: 0, excerptOffset: 0, primary: '"x"', backup: '"y"' },
        { id: 2, flow: 'a', atMs: T0 + 5000, kind: 'data', offset: 0, excerptOffset: 0, primary: '"x"', backup: '"y"' },
        { id: 3, flow: 'a', atMs: T0 + 10_000, kind: 'data', offset: 0, excerptOffset: 0, primary: '"x"', backup: '"y"' },
      ],
    }), { width: 1000 });
    expect(t.mismatches.map((m) => m.cx)).toEqual([t.plotX, t.plotX + t.plotWidth / 2, t.plotX + t.plotWidth]);
    expect(t.plotX + t.plotWidth).toBeLessThanOrEqual(t.width);
  });

  it('gives each flow its own lane, in order, and the marks of a flow its lane', () => {
    const t = layoutTimeline(runLog({ flows: ['a', 'b'], releases: [release('b', 2, 100), release('a', 3, 100)] }));
    expect(t.lanes.map((l) => l.flow)).toEqual(['a', 'b']);
    expect(t.lanes[1].y).toBeGreaterThan(t.lanes[0].y);
    const [rb, ra] = t.releases;
    expect(rb.y).toBeGreaterThanOrEqual(t.lanes[1].y);
    expect(rb.y + rb.height).toBeLessThanOrEqual(t.lanes[1].y + t.lanes[1].height);
    expect(ra.y).toBeLessThan(t.lanes[1].y);
  });

  it('puts flows beyond maxLanes, and summed releases, in one "other flows" lane', () => {
    const t = layoutTimeline(runLog({ flows: ['a', 'b', 'c'], releases: [release('c', 1, 10), release(null, 2, 10)] }), { maxLanes: 2 });
    expect(t.lanes.map((l) => l.flow)).toEqual(['a', 'b', null]);
    expect(t.lanes[2].label).toBe('other flows (1)');
    expect(t.flowsInOtherLane).toBe(1);
    expect(new Set(t.releases.map((r) => r.y)).size).toBe(1);
  });

  it('draws a release over the interval it covers, darker for more bytes per second', () => {
    const t = layoutTimeline(runLog({ flows: ['a'], releases: [release('a', 2, 1000), release('a', 4, 4000)] }), { width: 1000 });
    const px = t.plotWidth / 10_000;
    expect(t.releases[0].x).toBeCloseTo(t.plotX + 1000 * px);
    expect(t.releases[0].width).toBeCloseTo(1000 * px);
    expect(t.releases[1].opacity).toBe(1);
    expect(t.releases[0].opacity).toBeLessThan(t.releases[1].opacity);
  });

  it('gives a checkpoint the width of its duration, never less than 2 px', () => {
    const ck = (epoch: number, startS: number, ms: number) => ({ epoch, reason: 'mismatch', flow: null, startMs: T0 + startS * 1000, endMs: T0 + startS * 1000 + ms, outcome: 'done' as const, ms, error: null });
    const t = layoutTimeline(runLog({ checkpoints: [ck(1, 1, 2000), ck(2, 5, 0.01)] }), { width: 1000 });
    expect(t.checkpoints[0].width).toBeCloseTo(t.plotWidth / 5);
    expect(t.checkpoints[1].width).toBe(2);
    expect(t.checkpoints[0].y).toBeGreaterThanOrEqual(t.checkpointLane.y);
  });

  it('spans DEGRADED periods and failovers across every lane', () => {
    const t = layoutTimeline(runLog({
      flows: ['a', 'b'],
      states: [
        { state: 'DEGRADED', startMs: T0, endMs: T0 + 1000, why: 'x' },
        { state: 'COMPARING', startMs: T0 + 1000, endMs: T0 + 6000, why: 'y' },
        { state: 'FAILED_OVER', startMs: T0 + 6000, endMs: T0 + 10_000, why: 'z' },
      ],
      failovers: [{ atMs: T0 + 6000, cause: 'carrier', detail: '', dead: 'p', survivor: 'b', detectionMs: 1, flowsCarried: 1, endMs: T0 + 10_000, reprotected: false }],
    }));
    expect(t.bands.map((b) => b.kind)).toEqual(['degraded', 'failover']);
    const last = t.lanes[t.lanes.length - 1];
    for (const b of t.bands) {
      expect(b.y).toBeLessThanOrEqual(t.stateLane.y);
      expect(b.y + b.height).toBeGreaterThanOrEqual(last.y + last.height);
    }
    expect(t.states.map((s) => s.state)).toEqual(['DEGRADED', 'COMPARING', 'FAILED_OVER']);
  });

  it('labels round ticks relative to the start', () => {
    expect(tickStepMs(10_000)).toBe(2000);
    expect(tickStepMs(7)).toBe(1);
    expect(formatOffset(250)).toBe('+250 ms');
    expect(formatOffset(2000)).toBe('+2 s');
    expect(formatOffset(90_000)).toBe('+1 min 30 s');
    const t = layoutTimeline(runLog({}));
    expect(t.ticks[0]).toEqual({ x: t.plotX, label: '+0 ms' });
    expect(t.ticks.map((k) => k.label)).toContain('+10 s');
  });
});
