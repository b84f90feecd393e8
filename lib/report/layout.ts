/**
 * Places a RunLog on an SVG canvas: time runs left to right, one lane per
 * flow (plus a lane for the replication state and one for checkpoints on
 * top), bands across all lanes for DEGRADED periods and failovers.
 *
 * In:  a RunLog and the canvas width.
 * Out: a Timeline: every mark with its rectangle or point, in pixels.
 *
 * Pure: no I/O, no DOM.
 */
import { RunLog } from './run-log';

export interface LayoutOptions {
  /** Canvas width in pixels. Default 1200. */
  width?: number;
  /** Flow lanes drawn one by one; flows beyond go to one "other flows" lane. Default 60. */
  maxLanes?: number;
}

export interface Lane {
  /** The flow key; null for the "other flows" lane. */
  flow: string | null;
  label: string;
  y: number;
  height: number;
}

export interface Rect { x: number; y: number; width: number; height: number }

export interface Timeline {
  width: number;
  height: number;
  /** Left edge of the plot (labels are to its left) and its width. */
  plotX: number;
  plotWidth: number;
  startMs: number;
  endMs: number;
  stateLane: Rect;
  checkpointLane: Rect;
  lanes: Lane[];
  /** Ticks of the time axis, at round intervals, labelled relative to the start. */
  ticks: { x: number; label: string }[];
  states: (Rect & { state: string; index: number })[];
  /** `unchecked`: most of its bytes went out without comparison. */
  releases: (Rect & { index: number; opacity: number; unchecked: boolean })[];
  mismatches: { id: number; cx: number; cy: number; r: number }[];
  checkpoints: (Rect & { index: number })[];
  /** DEGRADED periods and failovers (from the promotion until the new backup was ready), across every lane. */
  bands: (Rect & { kind: 'degraded' | 'failover'; index: number })[];
  /** Flows that did not get a lane of their own. */
  flowsInOtherLane: number;
}

const LANE_H = 22;
const TOP_H = 18;
const AXIS_H = 24;
const LABEL_W = 300;
const MIN_MARK_W = 2;

/** Tick spacing: the round interval that gives about `target` ticks. */
export function tickStepMs(spanMs: number, target = 8): number {
  const steps = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 15_000, 30_000, 60_000, 120_000, 300_000, 600_000, 900_000, 1_800_000, 3_600_000];
  for (const s of steps) if (spanMs / s <= target) return s;
  return Math.ceil(spanMs / target / 3_600_000) * 3_600_000;
}

export function formatOffset(ms: number): string {
  if (ms < 1000) return `+${Math.round(ms)} ms`;
  if (ms < 60_000) return `+${Number((ms / 1000).toFixed(ms % 1000 === 0 ? 0 : 1))} s`;
  const m = Math.floor(ms / 60_000), s = Math.round((ms % 60_000) / 1000);
  return `+${m} min${s ? ` ${s} s` : ''}`;
}

export function layoutTimeline(log: RunLog, options: LayoutOptions = {}): Timeline {
  const width = Math.max(600, options.width ?? 1200);
  const maxLanes = Math.max(1, options.maxLanes ?? 60);
  const plotX = LABEL_W;
  const plotWidth = width - plotX - 16;
  const startMs = log.startMs;
  // A zero-length log still gets a visible span.
  const endMs = Math.max(log.endMs, startMs + 1);
  const span = endMs - startMs;
  const xOf = (t: number) => plotX + ((Math.min(Math.max(t, startMs), endMs) - startMs) / span) * plotWidth;
  const spanRect = (a: number, b: number) => {
    const x = xOf(a);
    return { x, width: Math.max(MIN_MARK_W, xOf(b) - x) };
  };

  const stateLane: Rect = { x: plotX, y: AXIS_H, width: plotWidth, height: TOP_H };
  const checkpointLane: Rect = { x: plotX, y: AXIS_H + TOP_H + 4, width: plotWidth, height: TOP_H };
  const lanesTop = checkpointLane.y + TOP_H + 8;

  const own = log.flows.slice(0, maxLanes);
  const others = log.flows.length - own.length;
  const needOther = others > 0 || log.releases.some((r) => r.flow === null);
  const lanes: Lane[] = own.map((flow, i) => ({ flow, label: flow, y: lanesTop + i * LANE_H, height: LANE_H - 4 }));
  if (needOther) lanes.push({ flow: null, label: others > 0 ? `other flows (${others})` : 'other flows', y: lanesTop + own.length * LANE_H, height: LANE_H - 4 });
  const laneOf = new Map<string, Lane>();
  for (const l of lanes) if (l.flow !== null) laneOf.set(l.flow, l);
  const otherLane = needOther ? lanes[lanes.length - 1] : null;
  const find = (flow: string | null): Lane | null => (flow !== null && laneOf.get(flow)) || otherLane;
  const lanesBottom = lanesTop + Math.max(1, lanes.length) * LANE_H;
  const height = lanesBottom + 8;

  const step = tickStepMs(span);
  const ticks: Timeline['ticks'] = [];
  for (let t = 0; t <= span; t += step) ticks.push({ x: xOf(startMs + t), label: formatOffset(t) });

  const states = log.states.map((s, index) => ({ ...spanRect(s.startMs, s.endMs), y: stateLane.y, height: TOP_H, state: s.state, index }));

  // Release opacity: by rate (bytes per ms of its interval), relative to the busiest interval, never invisible.
  const rate = (r: RunLog['releases'][number]) => (r.bytes + r.uncheckedBytes) / Math.max(1, r.windowMs);
  const maxRate = Math.max(1e-9, ...log.releases.map(rate));
  const releases: Timeline['releases'] = [];
  log.releases.forEach((r, index) => {
    const lane = find(r.flow);
    if (!lane) return;
    releases.push({ ...spanRect(r.atMs - r.windowMs, r.atMs), y: lane.y + 3, height: lane.height - 6, index, opacity: 0.25 + 0.75 * (rate(r) / maxRate), unchecked: r.uncheckedBytes > r.bytes || (r.uncheckedBytes === r.bytes && r.uncheckedFrames > r.frames) });
  });

  const mismatches: Timeline['mismatches'] = [];
  for (const m of log.mismatches) {
    const lane = find(m.flow);
    if (lane) mismatches.push({ id: m.id, cx: xOf(m.atMs), cy: lane.y + lane.height / 2, r: 6 });
  }

  const checkpoints = log.checkpoints.map((c, index) => ({ ...spanRect(c.startMs, c.endMs), y: checkpointLane.y + 2, height: TOP_H - 4, index }));

  const bandTop = stateLane.y;
  const bandH = lanesBottom - bandTop;
  const bands: Timeline['bands'] = [];
  log.states.forEach((s, index) => {
    if (s.state === 'DEGRADED') bands.push({ ...spanRect(s.startMs, s.endMs), y: bandTop, height: bandH, kind: 'degraded', index });
  });
  log.failovers.forEach((f, index) => bands.push({ ...spanRect(f.atMs, f.endMs), y: bandTop, height: bandH, kind: 'failover', index }));

  return {
    width, height, plotX, plotWidth, startMs, endMs, stateLane, checkpointLane, lanes, ticks, states, releases, mismatches, checkpoints, bands,
    flowsInOtherLane: others,
  };
}
