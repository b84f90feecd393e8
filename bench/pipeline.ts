/**
 * bench/pipeline: CPU cost per frame of the pure data path (decode, flow
 * lookup, normalize, compare, hold and release) over the recorded fixtures,
 * and of decoding alone. A report, not a test: run with `make bench`.
 *
 * Each fixture is repeated on many client ports through one long-lived
 * pipeline (as a live bridge is); the figure is total time over total
 * frames (client + primary + backup), best of several runs. Includes the
 * copy of every primary frame into the held queue.
 */
import { readdirSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PcapRecord, readPcapFile } from '../lib/io';
import { CaptureSource, Replayer, interleaveCaptures } from '../lib/replay';
import { DecodedFrame, decodeFrame } from '../lib/packet/frame';
import { updateChecksum16 } from '../lib/packet/checksum';

const FIXTURES = join(__dirname, '..', '..', 'fixtures');
const TARGET_NS = 1000;
/** Copies of each fixture, each on its own client port: one long-lived pipeline sees many flows. */
const VARIANTS = 256;
const RUNS = 15;

interface Step { source: CaptureSource; frame: Buffer; timeUs: number }

/**
 * The fixture's frames in time order, repeated VARIANTS times; copy k has
 * the client port moved by k (checksums kept valid) and its times moved
 * past the previous copy.
 */
function variants(inputs: PcapRecord[][]): Step[] {
  const base = [...interleaveCaptures(inputs)];
  if (base.length === 0) return [];
  const span = base[base.length - 1][1].timeUs - base[0][1].timeUs + 1_000_000;
  const f = new DecodedFrame();
  const steps: Step[] = [];
  // All copies live in one ArrayBuffer, as frames in a capture file or an I/O ring do.
  const total = base.reduce((n, [, rec]) => n + rec.frame.length, 0) * VARIANTS;
  const arena = Buffer.alloc(total);
  let used = 0;
  for (let k = 0; k < VARIANTS; k++) {
    for (const [source, rec] of base) {
      const frame = arena.subarray(used, used + rec.frame.length);
      rec.frame.copy(frame);
      used += rec.frame.length;
      decodeFrame(frame, f);
      if (!f.error && (f.l4 === 'tcp' || f.l4 === 'udp') && !f.fragment) {
        // The client's port: source port on the client side, destination port from the VMs.
        const at = f.l4Offset - f.base + (source === 0 ? 0 : 2);
        const csumAt = f.l4Offset - f.base + (f.l4 === 'tcp' ? 16 : 6);
        const old = frame.readUInt16BE(at);
        const port = ((old + k) % 64511) + 1024;
        frame.writeUInt16BE(port, at);
        const csum = frame.readUInt16BE(csumAt);
        if (!(f.l4 === 'udp' && csum === 0)) frame.writeUInt16BE(updateChecksum16(csum, old, port), csumAt);
      }
      steps.push({ source, frame, timeUs: rec.timeUs + k * span });
    }
  }
  return steps;
}

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

interface Row { fixture: string; frames: number; decodeNs: number; pipelineNs: number; mismatches: number }

function benchFixture(name: string, inputs: PcapRecord[][]): Row {
  const steps = variants(inputs);
  let mismatches = 0;
  const run = () => {
    const r = new Replayer(steps[0].timeUs);
    for (const s of steps) r.feed(s.source, s.frame, s.timeUs);
    r.close();
    mismatches = r.pipeline.reports.reduce((n, x) => n + x.mismatches, 0);
  };
  run(); // warm-up: JIT
  const pipeline = best(RUNS, run);
  const f = new DecodedFrame();
  let sink = 0;
  const decode = best(RUNS, () => { for (const s of steps) sink += decodeFrame(s.frame, f).payloadLength; });
  if (sink < 0) console.log(sink);
  return { fixture: name, frames: steps.length, decodeNs: decode / steps.length, pipelineNs: pipeline / steps.length, mismatches };
}

function main(): void {
  const rows: Row[] = [];
  for (const name of readdirSync(FIXTURES).sort()) {
    const dir = join(FIXTURES, name);
    if (!existsSync(join(dir, 'client.pcap'))) continue;
    // A capture across a primary's death fails over: the rest of the run would measure the unchecked path.
    if (existsSync(join(dir, 'client-rx.pcap'))) continue;
    const inputs = ['client', 'primary', 'backup'].map((s) => readPcapFile(join(dir, `${s}.pcap`)));
    rows.push(benchFixture(name, inputs));
  }
  const totalFrames = rows.reduce((n, r) => n + r.frames, 0);
  const weighted = rows.reduce((n, r) => n + r.pipelineNs * r.frames, 0) / Math.max(1, totalFrames);
  const pad = (s: string, n: number) => s.padEnd(n);
  console.log(`pipeline cost per frame (node ${process.version}; each fixture ×${VARIANTS} flows through one pipeline; best of ${RUNS} runs)`);
  console.log(`${pad('fixture', 16)} ${pad('frames', 8)} ${pad('decode ns', 10)} ${pad('pipeline ns', 12)} mismatches`);
  for (const r of rows) {
    console.log(`${pad(r.fixture, 16)} ${pad(String(r.frames), 8)} ${pad(r.decodeNs.toFixed(0), 10)} ${pad(r.pipelineNs.toFixed(0), 12)} ${r.mismatches}`);
  }
  console.log(`all fixtures, weighted by frames: ${weighted.toFixed(0)} ns/frame (target < ${TARGET_NS} ns): ${weighted < TARGET_NS ? 'met' : 'NOT met'}`);
  const outDir = join(__dirname, '..', '..', 'bench', 'results');
  mkdirSync(outDir, { recursive: true });
  const file = join(outDir, `pipeline-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  writeFileSync(file, JSON.stringify({ node: process.version, rows, weightedNs: weighted, targetNs: TARGET_NS }, null, 2));
  console.log(`saved ${file}`);
}

main();
