/**
 * bench/colo-vs-copy: one checkpoint, way 1 (full copy into a fresh VM) against
 * way 2 (a COLO checkpoint into the running secondary), on the QEMU lab with the
 * patched QEMU for both (make qemu-colo; COLO needs it, and the same binary keeps
 * the comparison fair). A report, not a test; needs root. Run:
 * `npx tsc -p tsconfig.json && node dist/bench/colo-vs-copy.js` (`--mem 128|512`,
 * `--n 15`, `--gap-ms 300`, `--prefix cw`, `--rounds 2`).
 *
 * Per (round, mode), a fresh lab, an idle guest, N manual checkpoints `--gap-ms` apart:
 *   pause  full copy: primary stopped → both running (CloneReport.ms);
 *          colo: the primary's STOP → RESUME events
 *   agent  full copy: the same; colo: trigger (QMP call) → primary RESUME
 *   bridge request → checkpoint-done applied (colo: includes the port reopen; both:
 *          the agent round trip), polled every 1 ms
 *   bytes  full copy: query-migrate's ram.transferred; colo: QEMU 7.2 reports nothing in
 *          COLO state, so the primary's sendmsg() bytes over 5 more checkpoints are summed
 *          with strace (a separate phase: strace slows QEMU, its times are not used)
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

interface Sample { mode: SyncMode; round: number; pauseMs: number[]; agentMs: number[]; bridgeMs: number[]; bytes: number[] }

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

/** Bytes the primary QEMU sends with sendmsg() during `n` checkpoints (strace; slows QEMU). */
async function straceBytes(lab: QemuLab, pid: number, n: number, gapMs: number): Promise<number[]> {
  const out = join(lab.runDir, 'strace.txt');
  const st = spawn('strace', ['-f', '-qq', '-e', 'trace=sendmsg,write', '-e', 'signal=none', '-o', out, '-p', String(pid)], { stdio: 'ignore' });
  await sleep(1500);
  const per: number[] = [];
  let before = 0;
  const total = () => readFileSync(out, 'utf8').split('\n').reduce((a, l) => { const m = / = (\d+)$/.exec(l); return a + (m && /sendmsg|writev?\(/.test(l) ? Number(m[1]) : 0); }, 0);
  for (let i = 0; i < n; i++) {
    await sleep(gapMs);
    before = total();
    await checkpoint(lab);
    await sleep(200);
    per.push(total() - before);
  }
  st.kill('SIGINT');
  await new Promise((r) => st.once('exit', r));
  rmSync(out, { force: true });
  return per;
}

async function main(): Promise<void> {
  const bin = findColoQemu();
  if (!bin) { console.log('way 2 (COLO) did not run: patched QEMU not built (make qemu-colo)'); return; }
  const mem = Number(arg('mem', '128')) as 128 | 512;
  const n = Number(arg('n', '15'));
  const gapMs = Number(arg('gap-ms', '300'));
  const rounds = Number(arg('rounds', '2'));
  const prefix = arg('prefix', 'cw');
  const samples: Sample[] = [];
  for (let round = 0; round < rounds; round++) {
    const modes: SyncMode[] = round % 2 === 0 ? ['full-copy', 'colo'] : ['colo', 'full-copy'];
    for (const mode of modes) {
      const factory = qemuSyncAgent({ sync: mode });
      let lab: QemuLab | undefined;
      try {
        lab = await startQemuLab({ prefix, memMiB: mem, qemuBinary: bin, agent: factory });
        const agent = factory.last as QemuAgent;
        for (let i = 0; i < 2; i++) { await sleep(gapMs); await checkpoint(lab); } // warm-up (colo: the first one starts COLO)
        const s: Sample = { mode, round, pauseMs: [], agentMs: [], bridgeMs: [], bytes: [] };
        const copies = agent.stats.copyMs.length;
        const colos = agent.stats.coloMs.length;
        for (let i = 0; i < n; i++) { await sleep(gapMs); s.bridgeMs.push(await checkpoint(lab)); }
        if (mode === 'colo') {
          s.pauseMs = agent.stats.coloPauseMs.slice(colos);
          s.agentMs = agent.stats.coloMs.slice(colos);
          s.bytes = await straceBytes(lab, (agent.vms.primary as QemuProcess).pid, 5, gapMs);
        } else {
          s.pauseMs = agent.stats.copyMs.slice(copies);
          s.agentMs = s.pauseMs;
          s.bytes = agent.stats.copyBytes.slice(copies);
        }
        samples.push(s);
        console.log(`${mode} round ${round}: pause p50 ${f1(q(s.pauseMs, 0.5))} ms, bridge p50 ${f1(q(s.bridgeMs, 0.5))} ms, bytes p50 ${q(s.bytes, 0.5)}`);
      } finally {
        await lab?.stop();
        teardownLab(prefix);
      }
    }
  }
  const rows = (['full-copy', 'colo'] as SyncMode[]).map((mode) => {
    const all = samples.filter((s) => s.mode === mode);
    const cat = (k: 'pauseMs' | 'agentMs' | 'bridgeMs' | 'bytes') => all.flatMap((s) => s[k]);
    const line = (xs: number[]) => `${f1(q(xs, 0.5))} (${f1(Math.min(...xs))}–${f1(Math.max(...xs))})`;
    return `| ${mode} | ${mem} MiB | ${line(cat('pauseMs'))} | ${line(cat('agentMs'))} | ${line(cat('bridgeMs'))} | ${(q(cat('bytes'), 0.5) / 1e6).toFixed(2)} MB (${(Math.min(...cat('bytes')) / 1e6).toFixed(2)}–${(Math.max(...cat('bytes')) / 1e6).toFixed(2)}) |`;
  });
  const table = ['| sync | guest | pause ms p50 (range) | agent ms p50 (range) | bridge round trip ms p50 (range) | bytes per checkpoint p50 (range) |', '|---|---|---|---|---|---|', ...rows].join('\n');
  console.log(table);
  mkdirSync('bench/results', { recursive: true });
  writeFileSync(`bench/results/colo-vs-copy-${new Date().toISOString().replace(/[:.]/g, '-')}.json`, JSON.stringify({ qemu: bin, mem, n, gapMs, samples }, null, 2));
}

main().catch((e) => { console.error(e); process.exitCode = 1; });
