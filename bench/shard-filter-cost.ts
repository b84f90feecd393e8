/**
 * shard-filter-cost: what the kernel spends per frame on `run --workers N`'s
 * shard filters (issue 9, "what 8 and 16 cores would carry").
 *
 * Every worker has its own socket on each interface, so the kernel offers
 * every frame to N sockets and runs N filters, of which one accepts it. To
 * see the filters' cost apart from how the frames are read, one socket
 * takes every frame (no filter, as one worker runs) and N − 1 more sockets
 * run the shard program of workers 1 … N − 1 of N and then reject every
 * frame (andFilters(shardFilter(N, i), RET 0): the same instructions, no
 * delivery). So every configuration reads the same frames the same way;
 * only the number of filters run per frame changes.
 *
 * Frames: UDP datagrams of 4,096 random flows, pre-built, sent by this
 * process in batches of 64 on one end of a veth pair in a namespace of its
 * own; the sockets listen on the other end. Machine CPU (/proc/stat busy
 * time, all cores) per frame, for each N, in interleaved rounds; medians
 * [range].
 *
 * Run (root): `npx tsc -p tsconfig.json && node dist/bench/shard-filter-cost.js [--rounds 5] [--frames 1000000] [--counts 1,2,4,8,16]`
 */
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { andFilters, shardFilter } from '../lib/dataplane/shard';
import { AfPacketPort } from '../lib/io/afpacket-port';
import { hostCpuBusyUs, readHostCpu } from './lib/lab-setup';
import { udpFrame } from '../test/support/frames';
import { seededRandom } from '../test/support/random';

interface Options { rounds: number; frames: number; counts: number[]; prefix: string }

function parse(argv: string[]): Options {
  const o: Options = { rounds: 5, frames: 1_000_000, counts: [1, 2, 4, 8, 16], prefix: 'svmfc' };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--rounds') o.rounds = Number(argv[++i]);
    else if (a === '--frames') o.frames = Number(argv[++i]);
    else if (a === '--counts') o.counts = argv[++i].split(',').map(Number);
    else {
      process.stderr.write('node dist/bench/shard-filter-cost.js [--rounds 5] [--frames 1000000] [--counts 1,2,4,8,16]\n');
      process.exit(a === '--help' ? 0 : 2);
    }
  }
  if (!(o.rounds >= 1) || !(o.frames >= 1000) || o.counts.some((n) => !(Number.isInteger(n) && n >= 1 && n <= 64))) {
    process.stderr.write('shard-filter-cost: --rounds ≥ 1, --frames ≥ 1000, --counts 1 to 64 each\n');
    process.exit(2);
  }
  return o;
}

interface Run { count: number; round: number; sent: number; received: number; drops: number; busyUsPerFrame: number; ms: number }

const delay = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
/** One classic BPF instruction: RET 0 (reject). */
const REJECT = Buffer.from([0x06, 0, 0, 0, 0, 0, 0, 0]);

async function oneRun(sender: AfPacketPort, listenOn: string, frames: Buffer[], count: number, round: number, o: Options): Promise<Run> {
  const ports = [new AfPacketPort(listenOn, { sweepOnWake: true })];
  for (let i = 1; i < count; i++) ports.push(new AfPacketPort(listenOn, { sweepOnWake: true, filter: andFilters(shardFilter(count, i), REJECT) }));
  let received = 0;
  ports[0].onBatch((batch) => { received += batch.length; });
  try {
    await delay(200);
    const host0 = readHostCpu();
    const t0 = performance.now();
    for (let sent = 0; sent < o.frames;) {
      for (let k = 0; k < 64 && sent < o.frames; k++, sent++) sender.send(frames[sent % frames.length]);
      sender.flush();
      // Let the reader drain its ring now and then.
      if (sent % 4096 === 0) await new Promise((r) => setImmediate(r));
    }
    const ms = performance.now() - t0;
    await delay(100);
    const busy = hostCpuBusyUs(host0, readHostCpu());
    const drops = ports[0].stats(false).rxDrops;
    return { count, round, sent: o.frames, received, drops, busyUsPerFrame: busy / o.frames, ms };
  } finally {
    await Promise.all(ports.map((p) => p.close()));
  }
}

async function main(): Promise<void> {
  const o = parse(process.argv.slice(2));
  const startedAt = new Date().toISOString();
  const ns = `${o.prefix}-ns`, a = `${o.prefix}a`, b = `${o.prefix}b`;
  const ip = (...args: string[]) => execFileSync('ip', args, { stdio: 'ignore' });
  try { ip('netns', 'del', ns); } catch { /* none left */ }
  try { ip('link', 'del', a); } catch { /* none left */ }
  ip('link', 'add', a, 'type', 'veth', 'peer', 'name', b);
  ip('link', 'set', a, 'up');
  ip('link', 'set', b, 'up');
  const rnd = seededRandom(0x5f);
  const int = (n: number) => Math.floor(rnd() * n);
  const frames = Array.from({ length: 4096 }, () => udpFrame({ src: `10.${int(256)}.${int(256)}.${int(256)}`, dst: `10.77.${int(256)}.${int(256)}`, sport: 1024 + int(60000), dport: 1024 + int(60000), payload: 'x'.repeat(64) }));
  const runs: Run[] = [];
  const sender = new AfPacketPort(a, { sendThread: false });
  try {
    for (let round = 1; round <= o.rounds; round++) {
      for (const count of o.counts) {
        const r = await oneRun(sender, b, frames, count, round, o);
        process.stderr.write(`round ${round}, ${count} socket(s): ${r.busyUsPerFrame.toFixed(3)} µs/frame, received ${r.received} of ${r.sent}, drops ${r.drops}, ${(r.sent / r.ms).toFixed(0)} frames/ms\n`);
        runs.push(r);
      }
    }
  } finally {
    await sender.close();
    try { ip('link', 'del', a); } catch { /* gone */ }
  }
  const lines: string[] = [];
  lines.push(`shard-filter-cost ${startedAt}: ${o.rounds} round(s), ${o.frames} UDP frames of 4,096 random flows a run; one socket takes them all, N − 1 more run the shard program of N workers and reject; machine CPU (/proc/stat busy, all cores, sender included) per frame; medians [range]`);
  const base = median(runs.filter((r) => r.count === o.counts[0]).map((r) => r.busyUsPerFrame));
  lines.push('sockets  µs/frame              over the first  per extra filter  received/sent  ring drops');
  for (const count of o.counts) {
    const rs = runs.filter((r) => r.count === count);
    const us = rs.map((r) => r.busyUsPerFrame);
    const m = median(us);
    const got = rs.reduce((n, r) => n + r.received, 0) / rs.reduce((n, r) => n + r.sent, 0);
    const extra = count > o.counts[0] ? `${(((m - base) * 1000) / (count - o.counts[0])).toFixed(0)} ns` : '—';
    lines.push(`${String(count).padEnd(8)} ${`${m.toFixed(3)} [${Math.min(...us).toFixed(3)}–${Math.max(...us).toFixed(3)}]`.padEnd(21)} ${`${(m - base >= 0 ? '+' : '')}${(m - base).toFixed(3)}`.padEnd(15)} ${extra.padEnd(17)} ${got.toFixed(3).padEnd(14)} ${rs.reduce((n, r) => n + r.drops, 0)}`);
  }
  const text = lines.join('\n');
  process.stdout.write(`${text}\n`);
  const file = join(__dirname, '..', '..', 'bench', 'results', `shard-filter-cost-${startedAt.replace(/[:.]/g, '-')}.json`);
  writeFileSync(file, `${JSON.stringify({ bench: 'shard-filter-cost', startedAt, options: o, runs, table: text }, null, 2)}\n`);
  process.stdout.write(`saved ${file}\n`);
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

void main();
