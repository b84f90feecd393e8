/**
 * bench/checkpoint-wait: how long frames wait for the bridge while
 * checkpoints move the backup (issue 7's stall goal, across checkpoints).
 * A report, not a test; needs root and QEMU.
 *
 * The QEMU lab (128 MiB guests, TCG where KVM does not boot), its in-process
 * bridge and QEMU agent (full copy: each checkpoint starts a fresh standby
 * on a fresh tap, so the bridge opens a port and closes the old one); a
 * ping every 5 ms from the client through the bridge; N manual checkpoints,
 * one every 0.7 s after the last ended. Printed: the bridge's frame wait
 * over them (breaths over 1, 5 and 10 ms, the longest) and the last stall
 * records with their parts. The in-process agent's own work (it starts
 * QEMU and makes taps with synchronous commands) shares the bridge's
 * thread, which a real agent (`shadowvm agent qemu`, its own process) does
 * not: the figures are an upper bound for the product.
 *
 * Run: `npx tsc -p tsconfig.json && node dist/bench/checkpoint-wait.js [--checkpoints 10] [--prefix qw]`
 */
import { spawn } from 'node:child_process';
import { monotonicUs } from '../lib/clock';
import { teardownLab } from '../lib/lab/netns';
import { qemuSyncAgent } from '../lib/lab/qemu/agent';
import { startQemuLab } from '../lib/lab/qemu/pair';

const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(test: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (!test()) {
    if (Date.now() > end) return false;
    await delay(10);
  }
  return true;
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  let n = 10;
  let prefix = 'qw';
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--checkpoints') n = Number(argv[++i]);
    else if (argv[i] === '--prefix') prefix = argv[++i];
    else {
      process.stderr.write('node dist/bench/checkpoint-wait.js [--checkpoints 10] [--prefix qw]\n');
      process.exit(argv[i] === '--help' ? 0 : 2);
    }
  }
  if (!(Number.isInteger(n) && n >= 1 && n <= 1000)) throw new Error('--checkpoints: a whole number from 1 to 1000');
  if (process.getuid?.() !== 0) throw new Error('checkpoint-wait builds taps and a network namespace: run it as root');
  teardownLab(prefix);
  const lab = await startQemuLab({ prefix, memMiB: 128, agent: qemuSyncAgent() });
  try {
    if (!(await until(() => lab.bridge.pipeline.state === 'COMPARING', 60_000))) throw new Error(`the bridge is ${lab.bridge.pipeline.state}, not COMPARING`);
    const ping = spawn('ip', ['netns', 'exec', lab.client.netns, 'ping', '-i', '0.005', '-q', lab.serviceIpv4], { stdio: 'ignore' });
    await delay(2000);
    const backupPort = () => lab.bridge.snapshot().ports.find((p) => p.role === 'backup')?.name;
    const before = lab.bridge.snapshot().frameWait;
    let done = 0;
    for (let i = 0; i < n; i++) {
      const port = backupPort();
      lab.bridge.pipeline.request('manual', undefined, monotonicUs());
      if (await until(() => backupPort() !== port && lab.bridge.pipeline.state === 'COMPARING', 30_000)) done++;
      await delay(700);
    }
    const w = lab.bridge.snapshot().frameWait;
    ping.kill();
    if (!w || !before) throw new Error('the bridge reports no frame wait');
    const h = w.seconds;
    const over = (sec: number) => h.count - (h.buckets.find(([le]) => le >= sec - 1e-12)?.[1] ?? h.count);
    const lines = [
      `checkpoint-wait ${new Date().toISOString()}  node ${process.version}`,
      `${done} of ${n} checkpoints moved the backup and came back to COMPARING`,
      `frame wait over the whole lab run: ${h.count} breaths (${h.count - before.seconds.count} during the checkpoints); over 1 ms ${over(0.001)}, over 5 ms ${over(0.005)}, over 10 ms ${w.over10ms}; longest ${w.maxMs.toFixed(1)} ms`,
      'the last stalls over 10 ms:',
      ...(w.stalls?.recent ?? []).map((r) => `  ${r.waitMs.toFixed(1)} ms: ${Object.entries(r.parts).filter(([, v]) => v > 0).map(([c, v]) => `${c} ${v.toFixed(1)}`).join(', ')}${r.during.length ? `; meanwhile ${r.during.join(', ')}` : ''}`),
    ];
    process.stdout.write(`${lines.join('\n')}\n`);
  } finally {
    await lab.stop();
    teardownLab(prefix);
  }
}

main().catch((e: Error) => {
  process.stderr.write(`checkpoint-wait: ${e.message}\n`);
  process.exit(1);
});
