/**
 * bench/colo-vs-copy: one checkpoint, way 1 (full copy into a fresh VM) against
 * way 2 (a COLO checkpoint into the running secondary), on the QEMU lab with the
 * patched QEMU for both (make qemu-colo; COLO needs it, and the same binary keeps
 * the comparison fair). A report, not a test; needs root. Run:
 * `npx tsc -p tsconfig.json && node dist/bench/colo-vs-copy.js` (`--mem 128|512`,
 * `--n 15`, `--gap-ms 300`, `--prefix cw`, `--rounds 2`, `--guest idle|busy`,
 * `--dirty-mib 16`, `--strace 0`).
 *
 * Per (round, mode), a fresh lab, N manual checkpoints `--gap-ms` apart, after two
 * for warm-up (colo: the first one starts COLO). The guest:
 *   idle  the lab guest as it boots (httpd, vsftpd, nobody asking)
 *   busy  a shell loop in the primary guest, started before the warm-up so every copy
 *         and the secondary run it too, rewrites a file of `--dirty-mib` MiB of random
 *         bytes in its tmpfs without pause: each pass rotates it by one 64 KiB block
 *         (dd onto itself, conv=notrunc), so every page of it is written with new bytes
 *         and none is ever zero. The passes it made give its rate. At the end the loop
 *         is stopped, one more checkpoint (not counted) is made, and the file must have
 *         the same md5 in both replicas: a write that a checkpoint missed would show.
 * Figures per checkpoint:
 *   pause  full copy: primary stopped → both running (CloneReport.ms);
 *          colo: the primary's STOP → RESUME events
 *   agent  full copy: the same; colo: trigger (QMP call) → primary RESUME
 *   bridge request → checkpoint-done applied (colo: includes the port reopen; both:
 *          the agent round trip), polled every 1 ms
 *   bytes, pages  what checkpoint-done said: query-migrate's ram.transferred and
 *          ram.normal (full copy: of the whole migration; colo: the difference before
 *          and after the checkpoint, qemu-colo/patches/0003). RAM only: the device state
 *          is not in these counters.
 *   beyond RAM (`--strace N`, colo only) N more checkpoints, each: everything the
 *          primary QEMU writes meanwhile (sendmsg/write, strace: a separate phase, as
 *          strace slows QEMU; its times are not used) less the RAM bytes checkpoint-done
 *          said: the device state and COLO's messages, plus whatever else it writes then
 *          (console, QMP answers, tap frames).
 * Modes alternate (ABAB) across rounds. Results: a table on stdout and
 * bench/results/colo-vs-copy-<timestamp>.json.
 */
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { QemuLab, startQemuLab } from '../lib/lab/qemu/pair';
import { qemuSyncAgent } from '../lib/lab/qemu/agent';
import { QemuAgent, SyncMode } from '../lib/agents/qemu-agent';
import { QemuProcess } from '../lib/qemu/process';
import { findColoQemu } from '../lib/qemu/colo-probe';
import { teardownLab } from '../lib/lab/netns';
import { monotonicUs } from '../lib/clock';

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
}
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const q = (xs: number[], p: number) => { const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.max(0, Math.ceil(p * s.length) - 1))]; };
const f1 = (v: number) => (Number.isFinite(v) ? v.toFixed(1) : '—');

type Guest = 'idle' | 'busy';

interface Sample {
  mode: SyncMode;
  round: number;
  pauseMs: number[];
  agentMs: number[];
  bridgeMs: number[];
  bytes: number[];
  pages: number[];
  /** Per strace'd checkpoint: the primary's written bytes less checkpoint-done's RAM bytes. */
  beyondRamBytes: number[];
  /** busy: the guest's rewriting rate over the measured checkpoints, MiB/s, and whether both replicas hold the same file at the end. */
  dirtyMiBps?: number;
  replicasAgree?: boolean;
  md5?: [string | undefined, string | undefined];
}

async function checkpoint(lab: QemuLab): Promise<number> {
  const snap = () => lab.bridge.snapshot();
  for (let i = 0; i < 5000 && !(lab.bridge.pipeline.state === 'COMPARING' && !snap().checkpoints.pending); i++) await sleep(2);
  const done = snap().checkpoints.done;
  const t0 = performance.now();
  if (!lab.bridge.pipeline.request('manual', undefined, monotonicUs())) throw new Error(`checkpoint refused in state ${lab.bridge.pipeline.state}`);
  while (lab.bridge.pipeline.replicator.completed <= done) {
    if (performance.now() - t0 > 30_000) throw new Error('checkpoint not done in 30 s');
    await sleep(1);
  }
  return performance.now() - t0;
}

/** Bytes the primary QEMU writes (sendmsg, write) during each of `n` checkpoints, less the RAM bytes each reported (strace; slows QEMU). */
async function beyondRam(lab: QemuLab, agent: QemuAgent, pid: number, n: number, gapMs: number): Promise<number[]> {
  const out = join(lab.runDir, 'strace.txt');
  const st = spawn('strace', ['-f', '-qq', '-e', 'trace=sendmsg,write', '-e', 'signal=none', '-o', out, '-p', String(pid)], { stdio: 'ignore' });
  await sleep(1500);
  const per: number[] = [];
  let before = 0;
  const total = () => readFileSync(out, 'utf8').split('\n').reduce((a, l) => { const m = / = (\d+)$/.exec(l); return a + (m && /sendmsg|writev?\(/.test(l) ? Number(m[1]) : 0); }, 0);
  for (let i = 0; i < n; i++) {
    await sleep(gapMs);
    before = total();
    const sized = agent.stats.coloBytes.length;
    await checkpoint(lab);
    await sleep(200);
    const ram = agent.stats.coloBytes[sized];
    if (ram !== undefined) per.push(total() - before - ram);
  }
  st.kill('SIGINT');
  await new Promise((r) => st.once('exit', r));
  rmSync(out, { force: true });
  return per;
}

const FILE = '/tmp/svm-bench-dirty';
const FIRST = '/tmp/svm-bench-block0';
const PASSES = '/tmp/svm-bench-passes';
const STOP = '/tmp/svm-bench-stop';
const STOPPED = '/tmp/svm-bench-stopped';

/** Starts the rewriting loop in the guest (see the header); it runs until `stopDirtying`. */
async function startDirtying(vm: QemuProcess, mib: number): Promise<void> {
  const blocks = mib * 16; // 64 KiB each
  const setup = `dd if=/dev/urandom of=${FILE} bs=64k count=${blocks} 2>/dev/null && echo 0 > ${PASSES}`;
  const made = await vm.consoleCommand(setup, 120_000);
  if (made.status !== 0) throw new Error(`busy guest: could not write ${mib} MiB in the guest's tmpfs: ${made.output.trim()}`);
  // One pass: block 0 aside, blocks 1.. one block down (reads run ahead of writes), block 0 last.
  const pass = `dd if=${FILE} of=${FIRST} bs=64k count=1 2>/dev/null; dd if=${FILE} of=${FILE} bs=64k skip=1 conv=notrunc 2>/dev/null; dd if=${FIRST} of=${FILE} bs=64k seek=${blocks - 1} conv=notrunc 2>/dev/null`;
  const loop = `(n=0; while [ ! -e ${STOP} ]; do ${pass}; n=$((n+1)); echo $n > ${PASSES}; done; touch ${STOPPED}) </dev/null >/dev/null 2>&1 &`;
  const started = await vm.consoleCommand(loop, 30_000);
  if (started.status !== 0) throw new Error(`busy guest: the loop did not start: ${started.output.trim()}`);
}

/** Stops the loop at the end of its pass; resolves once it has stopped. */
async function stopDirtying(vm: QemuProcess): Promise<void> {
  await vm.consoleCommand(`touch ${STOP}`, 30_000);
  for (let i = 0; i < 600; i++) {
    if (/svm-stopped=yes/.test((await vm.consoleCommand(`[ -e ${STOPPED} ] && echo svm-stopped"="yes`, 30_000)).output)) return;
    await sleep(100);
  }
  throw new Error('busy guest: the loop did not stop within a minute');
}

async function passes(vm: QemuProcess): Promise<number> {
  const r = await vm.consoleCommand(`echo svm-passes=$(cat ${PASSES})`, 30_000);
  return Number(/svm-passes=(\d+)/.exec(r.output)?.[1] ?? NaN);
}

async function md5(vm: QemuProcess, file: string): Promise<string | undefined> {
  const r = await vm.consoleCommand(`md5sum ${file}`, 60_000);
  // The line may follow a shell prompt ("/ # ") that the console echoed late.
  const sum = new RegExp(`\\b([0-9a-f]{32}) +${file}`).exec(r.output)?.[1];
  if (!sum) console.log(`md5sum in ${vm.name}: status ${r.status}, output ${JSON.stringify(r.output)}`);
  return sum;
}

async function main(): Promise<void> {
  const bin = findColoQemu();
  if (!bin) { console.log('way 2 (COLO) did not run: patched QEMU not built (make qemu-colo)'); return; }
  const mem = Number(arg('mem', '128')) as 128 | 512;
  const n = Number(arg('n', '15'));
  const gapMs = Number(arg('gap-ms', '300'));
  const rounds = Number(arg('rounds', '2'));
  const prefix = arg('prefix', 'cw');
  const guest = arg('guest', 'idle') as Guest;
  if (guest !== 'idle' && guest !== 'busy') throw new Error(`--guest idle|busy, not ${guest}`);
  const dirtyMiB = Number(arg('dirty-mib', '16'));
  const straceN = Number(arg('strace', '0'));
  const only = arg('modes', 'full-copy,colo').split(',');
  const samples: Sample[] = [];
  for (let round = 0; round < rounds; round++) {
    const order: SyncMode[] = round % 2 === 0 ? ['full-copy', 'colo'] : ['colo', 'full-copy'];
    const modes = order.filter((m) => only.includes(m));
    for (const mode of modes) {
      const factory = qemuSyncAgent({ sync: mode });
      let lab: QemuLab | undefined;
      try {
        lab = await startQemuLab({ prefix, memMiB: mem, qemuBinary: bin, agent: factory });
        const agent = factory.last as QemuAgent;
        if (guest === 'busy') await startDirtying(agent.vms.primary as QemuProcess, dirtyMiB);
        for (let i = 0; i < 2; i++) { await sleep(gapMs); await checkpoint(lab); }
        const s: Sample = { mode, round, pauseMs: [], agentMs: [], bridgeMs: [], bytes: [], pages: [], beyondRamBytes: [] };
        const copies = agent.stats.copyMs.length;
        const colos = agent.stats.coloMs.length;
        const sized = agent.stats.coloBytes.length;
        const primary = agent.vms.primary as QemuProcess;
        const passes0 = guest === 'busy' ? await passes(primary) : 0;
        const t0 = performance.now();
        for (let i = 0; i < n; i++) { await sleep(gapMs); s.bridgeMs.push(await checkpoint(lab)); }
        if (guest === 'busy') {
          s.dirtyMiBps = ((await passes(primary)) - passes0) * dirtyMiB / ((performance.now() - t0) / 1000);
          await stopDirtying(primary);
          await checkpoint(lab);
          const [a, b] = await Promise.all([md5(primary, FILE), md5(agent.vms.backup as QemuProcess, FILE)]);
          s.replicasAgree = a !== undefined && a === b;
          s.md5 = [a, b];
        }
        if (mode === 'colo') {
          s.pauseMs = agent.stats.coloPauseMs.slice(colos);
          s.agentMs = agent.stats.coloMs.slice(colos);
          s.bytes = agent.stats.coloBytes.slice(sized);
          s.pages = agent.stats.coloPages.slice(sized);
          if (straceN > 0) s.beyondRamBytes = await beyondRam(lab, agent, primary.pid, straceN, gapMs);
        } else {
          s.pauseMs = agent.stats.copyMs.slice(copies);
          s.agentMs = s.pauseMs;
          s.bytes = agent.stats.copyBytes.slice(copies);
          s.pages = agent.stats.copyPages.slice(copies);
        }
        samples.push(s);
        const busy = guest === 'busy' ? `, guest rewrote ${f1(s.dirtyMiBps as number)} MiB/s, replicas ${s.replicasAgree ? 'agree' : `DIFFER (md5 ${s.md5?.join(' / ')})`}` : '';
        console.log(`${mode} round ${round}: pause p50 ${f1(q(s.pauseMs, 0.5))} ms, bridge p50 ${f1(q(s.bridgeMs, 0.5))} ms, bytes p50 ${q(s.bytes, 0.5)}${busy}`);
      } finally {
        await lab?.stop();
        teardownLab(prefix);
      }
    }
  }
  const mb = (xs: number[]) => (xs.length ? `${(q(xs, 0.5) / 1e6).toFixed(2)} MB (${(Math.min(...xs) / 1e6).toFixed(2)}–${(Math.max(...xs) / 1e6).toFixed(2)})` : '—');
  const kb = (xs: number[]) => (xs.length ? `${(q(xs, 0.5) / 1e3).toFixed(0)} kB (${(Math.min(...xs) / 1e3).toFixed(0)}–${(Math.max(...xs) / 1e3).toFixed(0)})` : '—');
  const rows = (['full-copy', 'colo'] as SyncMode[]).map((mode) => {
    const all = samples.filter((s) => s.mode === mode);
    const cat = (k: 'pauseMs' | 'agentMs' | 'bridgeMs' | 'bytes' | 'pages' | 'beyondRamBytes') => all.flatMap((s) => s[k]);
    const line = (xs: number[]) => (xs.length ? `${f1(q(xs, 0.5))} (${f1(Math.min(...xs))}–${f1(Math.max(...xs))})` : '—');
    const rate = guest === 'busy' ? ` ${all.map((s) => f1(s.dirtyMiBps as number)).join(', ')} |` : '';
    return `| ${mode} | ${mem} MiB ${guest} | ${line(cat('pauseMs'))} | ${line(cat('agentMs'))} | ${line(cat('bridgeMs'))} | ${mb(cat('bytes'))} | ${cat('pages').length ? q(cat('pages'), 0.5) : '—'} |${straceN > 0 ? ` ${kb(cat('beyondRamBytes'))} |` : ''}${rate}`;
  });
  const head = ['| sync | guest | pause ms p50 (range) | agent ms p50 (range) | bridge round trip ms p50 (range) | RAM bytes per checkpoint p50 (range) | full pages p50 |'];
  if (straceN > 0) head[0] += ' written beyond RAM (strace) p50 (range) |';
  if (guest === 'busy') head[0] += ' guest rewrite MiB/s per round |';
  const table = [...head, `|${'---|'.repeat(head[0].split('|').length - 2)}`, ...rows].join('\n');
  console.log(table);
  if (guest === 'busy' && samples.some((s) => !s.replicasAgree)) console.log('WARNING: a busy round ended with replicas whose rewritten (never changed) file differs');
  mkdirSync('bench/results', { recursive: true });
  writeFileSync(`bench/results/colo-vs-copy-${new Date().toISOString().replace(/[:.]/g, '-')}.json`, JSON.stringify({ qemu: bin, mem, n, gapMs, guest, dirtyMiB, samples }, null, 2));
}

main().catch((e) => { console.error(e); process.exitCode = 1; });
