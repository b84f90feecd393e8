/**
 * Replay: the live pipeline driven from three captures (what the client
 * sent, what the primary sent, what the backup sent), interleaved by
 * timestamp. A simulated sync agent answers checkpoints after a fixed delay;
 * since recorded backups never really get the primary's state, each flow's
 * comparison restarts from where both sides stand (`resync: 'align'`).
 *
 * In:  three pcap/pcapng files, pipeline settings.
 * Out: a ReplayReport; optionally what the client would have received
 *      (`outPath`) and one pcapng per mismatch (`divergenceDir`).
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { PcapRecord, PcapWriter, readPcapFile, writePcapngFile } from '../io';
import { PRIMARY, BACKUP, Mismatch } from '../compare';
import { CheckpointReason, CheckpointRequest, ReplicationState } from '../replicate';
import { PipelineConfig, ShadowPipeline, makePipelineConfig, FlowReport } from '../pipeline';

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
}

export interface ReplayReport {
  inputs: { client: number; primary: number; backup: number };
  state: ReplicationState;
  flows: (FlowReport & { firstMismatch: Mismatch | null })[];
  checkpoints: { epoch: number; reason: CheckpointReason; flow: string | null; coalesced: number; outcome: string; timeUs: number }[];
  released: { frames: number; bytes: number };
  /** Primary output still held when the captures ended (never agreed). */
  heldAtEnd: { frames: number; bytes: number };
  backupFramesSuppressed: number;
  /** Malformed input by reason, with the side it came from. */
  errors: Record<string, { client: number; primary: number; backup: number }>;
  policy: Record<string, number>;
  badTcpOptions: number;
  divergenceFiles: string[];
}

type Source = 0 | 1 | 2; // client, primary, backup

export function runReplay(opts: ReplayOptions & ReplaySettings): ReplayReport {
  return replayCaptures([readPcapFile(opts.client), readPcapFile(opts.primary), readPcapFile(opts.backup)], opts);
}

/** The replay on captures already in memory: [client, primary, backup]. */
export function replayCaptures(inputs: PcapRecord[][], opts: ReplaySettings = {}): ReplayReport {
  const config = makePipelineConfig({ resync: 'align', captureDivergence: !!opts.divergenceDir, ...opts.config });
  const agentMode = opts.agent ?? 'instant';
  const checkpointUs = (opts.checkpointMs ?? 0) * 1000;
  const writer = opts.outPath ? new PcapWriter(opts.outPath) : null;
  const due: { atUs: number; epoch: number }[] = [];
  let nowUs = firstTime(inputs);
  let releasedFrames = 0;
  let releasedBytes = 0;

  const pipeline = new ShadowPipeline(config, {
    toPrimary: () => {},
    toBackup: () => {},
    toClient: (frame) => {
      releasedFrames++;
      releasedBytes += frame.length;
      writer?.write(frame, nowUs);
    },
    sendCheckpoint: (req: CheckpointRequest) => due.push({ atUs: req.timeUs + checkpointUs, epoch: req.epoch }),
    log: opts.log ?? (() => {}),
  }, nowUs, agentMode === 'instant');

  const answerDue = (t: number) => {
    while (due.length > 0 && due[0].atUs <= t) {
      const d = due.shift()!;
      pipeline.checkpointDone(d.epoch, Math.max(d.atUs, nowUs));
    }
  };

  try {
    for (const [source, rec] of mergeByTime(inputs)) {
      answerDue(rec.timeUs);
      nowUs = Math.max(nowUs, rec.timeUs);
      pipeline.tick(nowUs);
      if (source === 0) pipeline.fromClient(rec.frame, nowUs);
      else pipeline.fromVm(source === 1 ? PRIMARY : BACKUP, rec.frame, nowUs);
    }
    // The replay ends with the captures: a checkpoint not answered by then stays pending.
    answerDue(nowUs);
  } finally {
    writer?.close();
  }

  const divergenceFiles = opts.divergenceDir ? writeDivergences(pipeline, opts.divergenceDir) : [];
  pipeline.syncReports();
  return {
    inputs: { client: inputs[0].length, primary: inputs[1].length, backup: inputs[2].length },
    state: pipeline.state,
    flows: pipeline.reports.map((r) => ({ ...r, firstMismatch: r.mismatchList[0] ?? null })),
    checkpoints: pipeline.replicator.history.map((c) => ({
      epoch: c.epoch, reason: c.reason, flow: c.flow ?? null, coalesced: c.coalesced, outcome: c.outcome, timeUs: c.timeUs,
    })),
    released: { frames: releasedFrames, bytes: releasedBytes },
    heldAtEnd: { frames: pipeline.held.frames, bytes: pipeline.held.bytes },
    backupFramesSuppressed: pipeline.backupFramesSuppressed,
    errors: pipeline.malformed,
    policy: pipeline.policyActions,
    badTcpOptions: pipeline.badTcpOptions,
    divergenceFiles,
  };
}

function firstTime(inputs: PcapRecord[][]): number {
  let t = Infinity;
  for (const list of inputs) if (list.length > 0) t = Math.min(t, list[0].timeUs);
  return Number.isFinite(t) ? t : 0;
}

/** Yields records of the three captures in time order; on equal times client first, then primary, then backup. */
function* mergeByTime(inputs: PcapRecord[][]): Generator<[Source, PcapRecord]> {
  const at = [0, 0, 0];
  for (;;) {
    let best: Source | -1 = -1;
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
