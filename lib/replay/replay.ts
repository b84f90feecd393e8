/**
 * Replay: the live pipeline driven from three captures (what the client
 * sent, what the primary sent, what the backup sent), interleaved by
 * timestamp. A simulated sync agent answers checkpoints after a fixed delay;
 * since recorded backups never really get the primary's state, each flow's
 * comparison restarts from where both sides stand (`resync: 'align'`).
 *
 * A primary that died during the recording dies in the replay too: its
 * capture stops while the backup's goes on, so the pipeline's silence
 * detector sees it, its probe goes nowhere and is never answered, and the
 * backup is promoted; what the backup sent from then on is released,
 * translated, as the live bridge released it. The simulated agent does not
 * re-protect (nothing in the captures could become a new backup).
 *
 * In:  three pcap/pcapng files, pipeline settings.
 * Out: a ReplayReport; optionally what the client would have received
 *      (`outPath`) and one pcapng per mismatch (`divergenceDir`).
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { PcapRecord, PcapWriter, readPcapFile, writePcapngFile } from '../io';
import { PRIMARY, BACKUP, Mismatch } from '../compare';
import { AgentRequestKind, CheckpointReason, CheckpointRequest, ReplicationState } from '../replicate';
import { PipelineConfig, ShadowPipeline, makePipelineConfig, FlowReport, FailoverRecord } from '../pipeline';
import { openRunLogFile } from '../report/run-log-file';

export interface ReplayOptions {
  client: string;
  primary: string;
  backup: string;
}

export interface ReplaySettings {
  outPath?: string;
  divergenceDir?: string;
  /** `instant`: checkpoints succeed after `checkpointMs`; `none`: no agent (DEGRADED throughout). */
  agent?: 'instant' | 'none';
  checkpointMs?: number;
  config?: Partial<PipelineConfig>;
  log?: (level: 'info' | 'warn', event: string, fields: Record<string, unknown>) => void;
  /** Write the pipeline's log here as JSON lines stamped with capture time (what `shadowvm report` reads). */
  runLogPath?: string;
}

export interface ReplayReport {
  inputs: { client: number; primary: number; backup: number };
  state: ReplicationState;
  flows: (FlowReport & { firstMismatch: Mismatch | null })[];
  /** Requests to the simulated agent: checkpoints, and after a failover the re-protection (which no replay answers). */
  checkpoints: { epoch: number; kind: AgentRequestKind; reason: CheckpointReason; flow: string | null; coalesced: number; outcome: string; timeUs: number }[];
  released: { frames: number; bytes: number };
  /** Primary output still held when the captures ended (never agreed). */
  heldAtEnd: { frames: number; bytes: number };
  backupFramesSuppressed: number;
  /** Malformed input by reason, with the side it came from. */
  errors: Record<string, { client: number; primary: number; backup: number }>;
  policy: Record<string, number>;
  badTcpOptions: number;
  divergenceFiles: string[];
  /**
   * Every promotion of the backup, in order (`pipeline.failoverHistory`):
   * cause, detail, survivor, detection and promotion time (capture clock,
   * µs), flows carried over, backlog frames sent at once, frames of the dead
   * primary discarded.
   */
  failovers: FailoverRecord[];
  /** Each capture slot's role at the end, e.g. `primary=dead backup=promoted`. */
  roles: string;
}

export function runReplay(opts: ReplayOptions & ReplaySettings): ReplayReport {
  return replayCaptures([readPcapFile(opts.client), readPcapFile(opts.primary), readPcapFile(opts.backup)], opts);
}

/** The replay on captures already in memory: [client, primary, backup]. */
export function replayCaptures(inputs: PcapRecord[][], opts: ReplaySettings = {}): ReplayReport {
  const startUs = firstTime(inputs);
  let replayer: Replayer | null = null;
  // Every line, stamped with the capture clock: the report's timeline is the recording's.
  const file = opts.runLogPath
    ? openRunLogFile(opts.runLogPath, { clock: () => (replayer ? replayer.timeUs : startUs) / 1000, perEventPerSecond: 0, fields: { name: 'replay' } })
    : null;
  try {
    const toFile = file?.log;
    // About 200 release intervals over the recording, whatever its length, unless the caller chose.
    const releaseLogMs = opts.config?.releaseLogMs ?? Math.max(1, Math.round((lastTime(inputs) - startUs) / 1000 / 200));
    replayer = new Replayer(startUs, toFile
      ? { ...opts, config: { ...opts.config, releaseLogMs }, log: (level, event, fields) => { opts.log?.(level, event, fields); toFile(level, event, fields); } }
      : opts);
    file?.log('info', 'started', { name: 'replay', client: inputs[0].length, primary: inputs[1].length, backup: inputs[2].length });
    try {
      for (const [source, rec] of interleaveCaptures(inputs)) replayer.feed(source, rec.frame, rec.timeUs);
    } finally {
      replayer.close();
    }
    file?.log('info', 'stopped', { name: 'replay' });
  } finally {
    file?.close();
  }
  const report = replayer.report();
  report.inputs = { client: inputs[0].length, primary: inputs[1].length, backup: inputs[2].length };
  return report;
}

/** How often the replay advances the pipeline's timers (capture time). */
const TICK_US = 1000;

/** 0: the client side, 1: the primary, 2: the backup. */
export type CaptureSource = 0 | 1 | 2;

/**
 * One pipeline with a simulated agent, fed frame by frame in time order.
 * `replayCaptures` uses it for one fixture; the benchmark for long runs.
 */
export class Replayer {
  readonly pipeline: ShadowPipeline;
  private readonly writer: PcapWriter | null;
  private readonly due: { atUs: number; epoch: number }[] = [];
  private readonly checkpointUs: number;
  private readonly counts = { client: 0, primary: 0, backup: 0 };
  private nowUs: number;
  private releasedFrames = 0;
  private releasedBytes = 0;
  private lastTickUs = -Infinity;

  constructor(startUs: number, private readonly opts: ReplaySettings = {}) {
    const config = makePipelineConfig({ resync: 'align', flowReports: 100_000, captureDivergence: !!opts.divergenceDir, ...opts.config });
    this.checkpointUs = (opts.checkpointMs ?? 0) * 1000;
    this.writer = opts.outPath ? new PcapWriter(opts.outPath) : null;
    this.nowUs = startUs;
    this.pipeline = new ShadowPipeline(config, {
      toReplica: () => {},
      toClient: (frame) => {
        this.releasedFrames++;
        this.releasedBytes += frame.length;
        this.writer?.write(frame, this.nowUs);
      },
      sendCheckpoint: (req: CheckpointRequest) => this.due.push({ atUs: req.timeUs + this.checkpointUs, epoch: req.epoch }),
      log: opts.log ?? (() => {}),
    }, startUs, (opts.agent ?? 'instant') === 'instant');
  }

  /** The replay's clock: capture time (µs since the epoch). */
  get timeUs(): number {
    return this.nowUs;
  }

  feed(source: CaptureSource, frame: Buffer, timeUs: number): void {
    this.answerDue(timeUs);
    this.nowUs = Math.max(this.nowUs, timeUs);
    // Timers work in milliseconds: tick as the live bridge does, not per frame.
    if (this.nowUs - this.lastTickUs >= TICK_US) {
      this.lastTickUs = this.nowUs;
      this.pipeline.tick(this.nowUs);
    }
    if (source === 0) {
      this.counts.client++;
      this.pipeline.fromClient(frame, this.nowUs);
    } else if (source === 1) {
      this.counts.primary++;
      this.pipeline.fromVm(PRIMARY, frame, this.nowUs);
    } else {
      this.counts.backup++;
      this.pipeline.fromVm(BACKUP, frame, this.nowUs);
    }
    // Released frames were written (copied) at once: a breath per frame.
    this.pipeline.endBreath();
  }

  /** The replay ends with the captures: a checkpoint not answered by then stays pending. */
  close(): void {
    this.pipeline.tick(this.nowUs);
    this.answerDue(this.nowUs);
    this.pipeline.logReleases(this.nowUs, true);
    this.writer?.close();
  }

  report(): ReplayReport {
    const pipeline = this.pipeline;
    const divergenceFiles = this.opts.divergenceDir ? writeDivergences(pipeline, this.opts.divergenceDir) : [];
    return {
      inputs: { ...this.counts },
      state: pipeline.state,
      flows: pipeline.reports.map((r) => ({ ...r, firstMismatch: r.mismatchList[0] ?? null })),
      checkpoints: pipeline.replicator.history.map((c) => ({
        epoch: c.epoch, kind: c.kind, reason: c.reason, flow: c.flow ?? null, coalesced: c.coalesced, outcome: c.outcome, timeUs: c.timeUs,
      })),
      released: { frames: this.releasedFrames, bytes: this.releasedBytes },
      heldAtEnd: { frames: pipeline.held.frames, bytes: pipeline.held.bytes },
      backupFramesSuppressed: pipeline.backupFramesSuppressed,
      errors: pipeline.malformed,
      policy: pipeline.policyActions,
      badTcpOptions: pipeline.badTcpOptions,
      divergenceFiles,
      failovers: pipeline.failoverHistory.map((f) => ({ ...f })),
      roles: pipeline.replicas.describe(),
    };
  }

  private answerDue(t: number): void {
    while (this.due.length > 0 && this.due[0].atUs <= t) {
      const d = this.due.shift()!;
      this.pipeline.checkpointDone(d.epoch, Math.max(d.atUs, this.nowUs));
    }
  }
}

function lastTime(inputs: PcapRecord[][]): number {
  let t = -Infinity;
  for (const list of inputs) if (list.length > 0) t = Math.max(t, list[list.length - 1].timeUs);
  return Number.isFinite(t) ? t : 0;
}

function firstTime(inputs: PcapRecord[][]): number {
  let t = Infinity;
  for (const list of inputs) if (list.length > 0) t = Math.min(t, list[0].timeUs);
  return Number.isFinite(t) ? t : 0;
}

/** The records of the three captures in time order; on equal times client first, then primary, then backup. */
export function* interleaveCaptures(inputs: PcapRecord[][]): Generator<[CaptureSource, PcapRecord]> {
  const at = [0, 0, 0];
  for (;;) {
    let best: CaptureSource | -1 = -1;
    for (const s of [0, 1, 2] as const) {
      if (at[s] >= inputs[s].length) continue;
      if (best === -1 || inputs[s][at[s]].timeUs < inputs[best][at[best]].timeUs) best = s;
    }
    if (best === -1) return;
    yield [best, inputs[best][at[best]++]];
  }
}

function writeDivergences(pipeline: ShadowPipeline, dir: string): string[] {
  mkdirSync(dir, { recursive: true });
  return pipeline.divergences.map((d, i) => {
    const slug = d.flow.replace(/[^0-9A-Za-z.]+/g, '_').replace(/^_|_$/g, '');
    const path = join(dir, `${String(i + 1).padStart(3, '0')}-${d.mismatch.kind}-${slug}.pcapng`);
    const frames = [...d.frames].sort((a, b) => a.timeUs - b.timeUs).map((r) => ({ iface: r.side, frame: r.frame, timeUs: r.timeUs }));
    writePcapngFile(path, ['primary', 'backup'], frames);
    return path;
  });
}
