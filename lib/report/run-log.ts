/**
 * Reads a bridge's JSON log (the Logger's lines, or a replay's) into what
 * happened during the run, in time order: per-flow releases, mismatches with
 * both sides' excerpts, checkpoints with their duration and outcome,
 * failovers, and the periods spent DEGRADED or FAILED_OVER.
 *
 * In:  the log's text (JSON lines; other lines are counted and skipped).
 * Out: a RunLog (plain data, times in ms since the epoch).
 *
 * Pure: no I/O.
 */

export interface ReleaseMark {
  /** null: the flows a `released` line summed up (beyond its per-interval limit). */
  flow: string | null;
  /** The interval the bytes were released in: [atMs - windowMs, atMs]. */
  atMs: number;
  windowMs: number;
  frames: number;
  bytes: number;
  /** Sent without comparison in the same interval (a flow carried over to a promoted replica, or without a backup). */
  uncheckedFrames: number;
  uncheckedBytes: number;
}

export interface MismatchMark {
  /** 1, 2, … in log order: what a click on the timeline refers to. */
  id: number;
  flow: string;
  atMs: number;
  kind: string;
  offset: number | null;
  excerptOffset: number | null;
  /** What each side said, as logged: a JSON-quoted excerpt, or a unit name (SYN, FIN, RST…). */
  primary: string;
  backup: string;
}

export interface CheckpointMark {
  epoch: number;
  reason: string;
  flow: string | null;
  startMs: number;
  endMs: number;
  /** `pending`: the log ends before its answer. */
  outcome: 'done' | 'failed' | 'pending';
  /** The agent's duration (done), or the error (failed). */
  ms: number | null;
  error: string | null;
}

export interface FailoverMark {
  atMs: number;
  cause: string;
  detail: string;
  dead: string;
  survivor: string;
  detectionMs: number | null;
  flowsCarried: number | null;
  /** Until the new backup was ready (the state left FAILED_OVER), or the end of the log. */
  endMs: number;
  reprotected: boolean;
}

export interface StatePeriod {
  state: string;
  startMs: number;
  endMs: number;
  why: string;
}

export interface RunLog {
  /** The bridge's name, if the lines carry one. */
  name: string | null;
  startMs: number;
  endMs: number;
  /** Flows in the order they first appear. */
  flows: string[];
  releases: ReleaseMark[];
  mismatches: MismatchMark[];
  checkpoints: CheckpointMark[];
  failovers: FailoverMark[];
  /** Every state the replication was in, end to end (from the first `state` line; DEGRADED from a `degraded` line). */
  states: StatePeriod[];
  /** Lines the logger suppressed (rate limit), by event: the picture misses them. */
  suppressed: Record<string, number>;
  /** Lines that were not JSON objects with `ts` and `event`. */
  unreadableLines: number;
  lines: number;
}

/** The log has nothing a report could show. */
export class RunLogError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RunLogError';
  }
}

type Fields = Record<string, unknown>;

const str = (v: unknown, dflt = ''): string => (typeof v === 'string' ? v : v === undefined || v === null ? dflt : String(v));
const num = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null);

/** "checkpoint 3 requested (mismatch, tcp a > b)" */
const REQUESTED_RE = /^checkpoint (\d+) requested \(([a-z]+)(?:, (.*))?\)$/;
/** "checkpoint 3 failed: no answer within 5000 ms" */
const FAILED_RE = /^checkpoint (\d+) failed: (.*)$/;

export function parseRunLog(text: string): RunLog {
  const log: RunLog = {
    name: null, startMs: Infinity, endMs: -Infinity, flows: [], releases: [], mismatches: [], checkpoints: [], failovers: [], states: [],
    suppressed: {}, unreadableLines: 0, lines: 0,
  };
  const flowSeen = new Set<string>();
  const noteFlow = (f: string | null) => {
    if (f && !flowSeen.has(f)) {
      flowSeen.add(f);
      log.flows.push(f);
    }
  };
  const open = new Map<number, CheckpointMark>();
  let state: StatePeriod | null = null;
  let failover: FailoverMark | null = null;
  const enter = (to: string, atMs: number, why: string) => {
    if (state) {
      if (state.state === to) return;
      state.endMs = atMs;
    }
    state = { state: to, startMs: atMs, endMs: atMs, why };
    log.states.push(state);
  };

  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line) continue;
    log.lines++;
    let rec: Fields;
    try {
      const v: unknown = JSON.parse(line);
      if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not an object');
      rec = v as Fields;
    } catch {
      log.unreadableLines++;
      continue;
    }
    const at = typeof rec.ts === 'string' ? Date.parse(rec.ts) : NaN;
    if (!Number.isFinite(at) || typeof rec.event !== 'string') {
      log.unreadableLines++;
      continue;
    }
    log.startMs = Math.min(log.startMs, at);
    log.endMs = Math.max(log.endMs, at);
    if (log.name === null && typeof rec.name === 'string' && rec.event === 'started') log.name = rec.name;
    switch (rec.event) {
      case 'released': {
        const flow = typeof rec.flow === 'string' ? rec.flow : null;
        noteFlow(flow);
        log.releases.push({
          flow, atMs: at, windowMs: num(rec.windowMs) ?? 0, frames: num(rec.frames) ?? 0, bytes: num(rec.bytes) ?? 0,
          uncheckedFrames: num(rec.uncheckedFrames) ?? 0, uncheckedBytes: num(rec.uncheckedBytes) ?? 0,
        });
        break;
      }
      case 'mismatch': {
        const flow = str(rec.flow, '(unnamed flow)');
        noteFlow(flow);
        log.mismatches.push({
          id: log.mismatches.length + 1, flow, atMs: at, kind: str(rec.kind, '?'), offset: num(rec.offset), excerptOffset: num(rec.excerptOffset),
          primary: str(rec.primary), backup: str(rec.backup),
        });
        break;
      }
      case 'state': {
        const to = str(rec.to), why = str(rec.why);
        if (!state && typeof rec.from === 'string') enter(rec.from, log.startMs, '(before the log)');
        enter(to, at, why);
        let m: RegExpExecArray | null;
        if (to === 'CHECKPOINTING' && (m = REQUESTED_RE.exec(why))) {
          const c: CheckpointMark = { epoch: Number(m[1]), reason: m[2], flow: m[3] ?? null, startMs: at, endMs: at, outcome: 'pending', ms: null, error: null };
          open.set(c.epoch, c);
          log.checkpoints.push(c);
        } else if ((m = FAILED_RE.exec(why))) {
          const c = open.get(Number(m[1]));
          if (c) {
            c.outcome = 'failed';
            c.endMs = at;
            c.error = m[2];
            open.delete(c.epoch);
          }
        }
        if (failover && str(rec.from) === 'FAILED_OVER') {
          failover.endMs = at;
          failover.reprotected = to === 'COMPARING';
          failover = null;
        }
        break;
      }
      case 'degraded':
        enter('DEGRADED', at, str(rec.why));
        break;
      case 'checkpoint-done': {
        const epoch = num(rec.epoch) ?? -1;
        const ms = num(rec.ms);
        let c = open.get(epoch);
        if (!c) {
          // Its request is not in the log (it began before, or the state line was suppressed): the duration says when.
          c = { epoch, reason: str(rec.reason, '?'), flow: null, startMs: at - (ms ?? 0), endMs: at, outcome: 'pending', ms: null, error: null };
          log.checkpoints.push(c);
        }
        open.delete(epoch);
        c.outcome = 'done';
        c.endMs = at;
        c.ms = ms;
        if (typeof rec.flow === 'string') c.flow = rec.flow;
        noteFlow(c.flow);
        break;
      }
      case 'failover': {
        failover = {
          atMs: at, cause: str(rec.cause), detail: str(rec.detail), dead: str(rec.dead), survivor: str(rec.survivor),
          detectionMs: num(rec.detectionMs), flowsCarried: num(rec.flowsCarried), endMs: at, reprotected: false,
        };
        log.failovers.push(failover);
        break;
      }
      case 'log-suppressed': {
        const ev = str(rec.suppressedEvent, '?');
        log.suppressed[ev] = (log.suppressed[ev] ?? 0) + (num(rec.suppressed) ?? 0);
        break;
      }
      default:
        break;
    }
  }
  if (log.lines === 0 || !Number.isFinite(log.startMs)) {
    throw new RunLogError(log.lines === 0 ? 'the log is empty' : `none of its ${log.lines} lines is a shadowvm log line (JSON with "ts" and "event")`);
  }
  // What is still open runs to the end of the log.
  const last = state as StatePeriod | null;
  if (last) last.endMs = log.endMs;
  const fo = failover as FailoverMark | null;
  if (fo) fo.endMs = log.endMs;
  for (const c of open.values()) c.endMs = log.endMs;
  for (const c of log.checkpoints) noteFlow(c.flow);
  return log;
}
