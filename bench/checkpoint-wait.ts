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
 * --processes: the product instead. The lab's in-process bridge and agent
 * are stopped, and `shadowvm run` (its data plane on a thread of its own)
 * and `shadowvm agent qemu` run as two processes on the same VMs and taps;
 * checkpoints are asked for, and the frame wait read, over the control
 * socket.
 *
 * Run: `npx tsc -p tsconfig.json && node dist/bench/checkpoint-wait.js [--checkpoints 10] [--prefix qw] [--processes]`
 */
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { queryControlSocket } from '../lib/control/control-socket';
import type { BridgeSnapshot } from '../lib/control/snapshot';
import { monotonicUs } from '../lib/clock';
import { teardownLab } from '../lib/lab/netns';
import { qemuSyncAgent } from '../lib/lab/qemu/agent';
import { QemuLab, qemuLabConfig, startQemuLab } from '../lib/lab/qemu/pair';

const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(test: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (!test()) {
    if (Date.now() > end) return false;
    await delay(10);
  }
  return true;
}

/** What the bench drives: the lab's in-process bridge, or `shadowvm run` as a process. */
interface Target {
  snapshot(): Promise<BridgeSnapshot>;
  checkpoint(): Promise<void>;
  stop(): Promise<void>;
}

const BIN = path.join(__dirname, '..', '..', 'bin', 'shadowvm');

/** `shadowvm run` and `shadowvm agent qemu` on the lab's VMs, the lab's own bridge and agent stopped. */
async function processes(lab: QemuLab, dir: string): Promise<Target> {
  await lab.agent.stop();
  await lab.bridge.stop();
  const control = path.join(lab.runDir, 'bench-control.sock');
  const config = path.join(dir, 'bridge.json');
  fs.writeFileSync(config, JSON.stringify({
    ports: { uplink: lab.client.hostIf, primary: lab.taps.primary, backup: lab.taps.backup },
    ...qemuLabConfig(lab.accel.accel, {}),
  }));
  const logs: string[] = [];
  const start = (args: string[]): ChildProcess => {
    const child = spawn(BIN, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    child.stderr?.on('data', (d: Buffer) => { logs.push(d.toString()); if (logs.length > 200) logs.shift(); });
    return child;
  };
  const bridge = start(['run', '--name', lab.prefix, '--config', config, '--agent', lab.agentSocket, '--control', control]);
  if (!(await until(() => fs.existsSync(control) && fs.existsSync(lab.agentSocket), 30_000))) throw new Error(`shadowvm run did not listen: ${logs.join('').slice(-3000)}`);
  const agent = start(['agent', 'qemu', '--config', lab.descriptionFile]);
  const status = async (): Promise<BridgeSnapshot> => {
    const reply = await queryControlSocket(control, { cmd: 'status' });
    if (!reply.ok) throw new Error(`control status: ${reply.error}`);
    return reply.status;
  };
  const checkpoint = async (): Promise<void> => {
    const reply = await queryControlSocket(control, { cmd: 'checkpoint' });
    if (!reply.ok) throw new Error(`control checkpoint: ${reply.error}`);
  };
  return {
    snapshot: status,
    checkpoint,
    stop: async () => {
      agent.kill('SIGTERM');
      bridge.kill('SIGTERM');
      await Promise.all([agent, bridge].map((c) => (c.exitCode !== null ? null : new Promise((r) => c.once('exit', r)))));
    },
  };
}

function inProcess(lab: QemuLab): Target {
  return {
    snapshot: async () => lab.bridge.snapshot(),
    checkpoint: async () => { lab.bridge.pipeline.request('manual', undefined, monotonicUs()); },
    stop: async () => {},
  };
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  let n = 10;
  let prefix = 'qw';
  let asProcesses = false;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--checkpoints') n = Number(argv[++i]);
    else if (argv[i] === '--prefix') prefix = argv[++i];
    else if (argv[i] === '--processes') asProcesses = true;
    else {
      process.stderr.write('node dist/bench/checkpoint-wait.js [--checkpoints 10] [--prefix qw] [--processes]\n');
      process.exit(argv[i] === '--help' ? 0 : 2);
    }
  }
  if (!(Number.isInteger(n) && n >= 1 && n <= 1000)) throw new Error('--checkpoints: a whole number from 1 to 1000');
  if (process.getuid?.() !== 0) throw new Error('checkpoint-wait builds taps and a network namespace: run it as root');
  teardownLab(prefix);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'svm-cpw-'));
  const lab = await startQemuLab({ prefix, memMiB: 128, agent: asProcesses ? undefined : qemuSyncAgent() });
  let target: Target | null = null;
  try {
    target = asProcesses ? await processes(lab, dir) : inProcess(lab);
    const t = target;
    let snap = await t.snapshot();
    const backupPort = () => snap.ports.find((p) => p.role === 'backup')?.name;
    const poll = async (test: () => boolean, ms: number): Promise<boolean> => {
      const end = Date.now() + ms;
      for (;;) {
        snap = await t.snapshot();
        if (test()) return true;
        if (Date.now() > end) return false;
        await delay(20);
      }
    };
    // The first copy (asked for when the agent connects) moves the backup off the lab's own tap.
    if (!(await poll(() => snap.state === 'COMPARING' && backupPort() !== lab.taps.backup, 60_000))) throw new Error(`the bridge is ${snap.state} with backup ${backupPort()}, not COMPARING on a copy`);
    const ping = spawn('ip', ['netns', 'exec', lab.client.netns, 'ping', '-i', '0.005', '-q', lab.serviceIpv4], { stdio: 'ignore' });
    await delay(2000);
    const before = (await t.snapshot()).frameWait;
    let done = 0;
    for (let i = 0; i < n; i++) {
      const port = backupPort();
      await t.checkpoint();
      if (await poll(() => backupPort() !== port && snap.state === 'COMPARING', 30_000)) done++;
      await delay(700);
    }
    const w = (await t.snapshot()).frameWait;
    ping.kill();
    if (!w || !before) throw new Error('the bridge reports no frame wait');
    const h = w.seconds;
    const over = (sec: number) => h.count - (h.buckets.find(([le]) => le >= sec - 1e-12)?.[1] ?? h.count);
    const lines = [
      `checkpoint-wait ${new Date().toISOString()}  node ${process.version}  ${asProcesses ? 'shadowvm run + shadowvm agent qemu (processes)' : 'in-process lab bridge and agent'}`,
      `${done} of ${n} checkpoints moved the backup and came back to COMPARING`,
      `frame wait over the whole lab run: ${h.count} breaths (${h.count - before.seconds.count} during the checkpoints); over 1 ms ${over(0.001)}, over 5 ms ${over(0.005)}, over 10 ms ${w.over10ms}; longest ${w.maxMs.toFixed(1)} ms`,
      'the last stalls over 10 ms:',
      ...(w.stalls?.recent ?? []).map((r) => `  ${r.waitMs.toFixed(1)} ms: ${Object.entries(r.parts).filter(([, v]) => v > 0).map(([c, v]) => `${c} ${v.toFixed(1)}`).join(', ')}${r.during.length ? `; meanwhile ${r.during.join(', ')}` : ''}`),
    ];
    process.stdout.write(`${lines.join('\n')}\n`);
  } finally {
    await target?.stop();
    await lab.stop();
    teardownLab(prefix);
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e: Error) => {
  process.stderr.write(`checkpoint-wait: ${e.message}\n`);
  process.exit(1);
});
