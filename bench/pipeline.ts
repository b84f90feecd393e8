/**
 * bench/pipeline: CPU cost per frame of the pure data path (decode, flow
 * lookup, normalize, compare, hold and release) over the recorded fixtures,
 * and of decoding alone. A report, not a test: run with `make bench`.
 *
 * Each fixture is replayed from memory many times; the figure is total
 * time over total frames (client + primary + backup), best of several runs.
 */
import { readdirSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PcapRecord, readPcapFile } from '../lib/io';
import { replayCaptures } from '../lib/replay';
import { DecodedFrame, decodeFrame } from '../lib/packet';

const FIXTURES = join(__dirname, '..', '..', 'fixtures');
const TARGET_NS = 1000;
const MIN_FRAMES_PER_RUN = 200_000;
const RUNS = 5;

function timeNs(fn: () => void): number {
  const t0 = process.hrtime.bigint();
  fn();
  return Number(process.hrtime.bigint() - t0);
}

function best(runs: number, fn: () => void): number {
  let min = Infinity;
  for (let i = 0; i < runs; i++) min = Math.min(min, timeNs(fn));
  return min;
}

interface Row { fixture: string; frames: number; pipelineNs: number; decodeNs: number }

function benchFixture(name: string, inputs: PcapRecord[][]): Row {
  const frames = inputs.reduce((n, l) => n + l.length, 0);
  const reps = Math.max(1, Math.ceil(MIN_FRAMES_PER_RUN / Math.max(1, frames)));
  replayCaptures(inputs); // warm-up: JIT, slabs
  const pipeline = best(RUNS, () => { for (let i = 0; i < reps; i++) replayCaptures(inputs); });
  const f = new DecodedFrame();
  const all = inputs.flat();
  let sink = 0;
  const decode = best(RUNS, () => {
    for (let i = 0; i < reps; i++) for (const r of all) sink += decodeFrame(r.frame, f).payloadLength;
  });
  if (sink < 0) console.log(sink);
  return { fixture: name, frames, pipelineNs: pipeline / (reps * frames), decodeNs: decode / (reps * frames) };
}

function main(): void {
  const rows: Row[] = [];
  for (const name of readdirSync(FIXTURES).sort()) {
    const dir = join(FIXTURES, name);
    if (!existsSync(join(dir, 'client.pcap'))) continue;
    const inputs = ['client', 'primary', 'backup'].map((s) => readPcapFile(join(dir, `${s}.pcap`)));
    rows.push(benchFixture(name, inputs));
  }
  const totalFrames = rows.reduce((n, r) => n + r.frames, 0);
  const weighted = rows.reduce((n, r) => n + r.pipelineNs * r.frames, 0) / Math.max(1, totalFrames);
  const pad = (s: string, n: number) => s.padEnd(n);
  console.log(`pipeline cost per frame (node ${process.version}, best of ${RUNS} runs, each ≥ ${MIN_FRAMES_PER_RUN} frames)`);
  console.log(`${pad('fixture', 18)} ${pad('frames', 7)} ${pad('decode ns', 10)} ${pad('pipeline ns', 12)}`);
  for (const r of rows) {
    console.log(`${pad(r.fixture, 18)} ${pad(String(r.frames), 7)} ${pad(r.decodeNs.toFixed(0), 10)} ${pad(r.pipelineNs.toFixed(0), 12)}`);
  }
  console.log(`all fixtures, weighted by frames: ${weighted.toFixed(0)} ns/frame (target < ${TARGET_NS} ns): ${weighted < TARGET_NS ? 'met' : 'NOT met'}`);
  const outDir = join(__dirname, '..', '..', 'bench', 'results');
  mkdirSync(outDir, { recursive: true });
  const file = join(outDir, `pipeline-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  writeFileSync(file, JSON.stringify({ node: process.version, rows, weightedNs: weighted, targetNs: TARGET_NS }, null, 2));
  console.log(`saved ${file}`);
}

main();
