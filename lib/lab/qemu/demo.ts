/**
 * The QEMU lab demo (`shadowvm lab demo --kind qemu`, part of `make demo`):
 * two live VMs, the QEMU agent copying real state, and what a checkpoint
 * repairs: the thesis's FTP case (the replicas' `227` replies name different
 * passive ports) and a stateful CGI whose state only the primary changed.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LogFn } from '../../control/logger';
import { QemuAgent } from '../../agents/qemu-agent';
import { IoBackend } from '../../cli/ports';
import { QemuProcess } from '../../qemu/process';
import { runInAsync } from '../exec';
import { qemuSyncAgent } from './agent';
import { GUEST_BIG_FILE, guestContent } from './guest';
import { QemuLab, QemuLabMem, startQemuLab } from './pair';

export interface QemuDemoOptions {
  prefix?: string;
  memMiB?: QemuLabMem;
  io?: IoBackend;
  print: (line: string) => void;
  log?: LogFn;
  onUp?: () => void;
}

export interface QemuDemoResult {
  checkpoints: number;
  mismatches: number;
  ftpIntact: boolean;
  counterRepaired: boolean;
}

const mb = (bytes: number) => `${(bytes / 1e6).toFixed(1)} MB`;

export async function runQemuDemo(o: QemuDemoOptions): Promise<QemuDemoResult> {
  const p = o.print;
  p('building the QEMU lab: a Debian kernel and busybox guest (httpd with a CGI counter, vsftpd), booted once,');
  p('copied into a second live VM; shadowvm between them and a client namespace; the QEMU agent copies real state');
  const factory = qemuSyncAgent();
  const lab = await startQemuLab({ prefix: o.prefix, memMiB: o.memMiB ?? 128, io: o.io, log: o.log, agent: factory });
  o.onUp?.();
  try {
    return await steps(lab, factory.last as QemuAgent, p);
  } finally {
    await lab.stop();
    p('QEMU lab torn down: VMs, taps and namespace removed');
  }
}

async function steps(lab: QemuLab, agent: QemuAgent, p: (line: string) => void): Promise<QemuDemoResult> {
  const bridge = lab.bridge;
  const s0 = bridge.snapshot();
  p(`1. up under ${lab.accel.accel.toUpperCase()} (${lab.accel.reason}); first VM booted in ${lab.bootMs} ms`);
  p(`   the agent's first checkpoint copied the primary into a fresh VM behind ${agent.vms.backup?.tap}: ${agent.stats.copyMs[0]} ms paused, ${mb(agent.stats.copyBytes[0] ?? 0)} moved`);
  p(`   bridge ${s0.state}; backup port ${s0.ports.find((x) => x.role === 'backup')?.name}`);

  // The thesis's FTP case. Two machines that run on their own draw different random numbers;
  // right after a copy these two have the same random state, so the backup draws one the primary does not.
  p('');
  p('2. FTP in passive mode: each vsftpd picks a random data port for its 227 reply');
  await (agent.vms.backup as QemuProcess).consoleCommand('head -c 16 /dev/urandom > /dev/null', 10_000);
  const before = bridge.snapshot();
  const copiesBefore = agent.stats.copyMs.length;
  const file = path.join(lab.runDir, 'demo-ftp.bin');
  await runInAsync(lab.client.netns, 'lftp', ['-c', [
    'set net:timeout 30', 'set net:max-retries 2', 'set ftp:passive-mode on',
    `open ftp://${lab.serviceIpv4}`, `get ${GUEST_BIG_FILE} -o ${file}`,
  ].join('; ')], 180_000);
  const expected = guestContent().get(GUEST_BIG_FILE) as Buffer;
  const ftpIntact = fs.readFileSync(file).equals(expected);
  const after = bridge.snapshot();
  const ftpMismatch = bridge.pipeline.reports.flatMap((r) => r.mismatchList.map((m) => ({ flow: r.key, m })))
    .filter(({ flow, m }) => / > [^ ]+:21$/.test(flow) && m.timeUs >= 0).pop();
  if (ftpMismatch) {
    p(`   the replies differed on ${ftpMismatch.flow}:`);
    p(`     primary: ${ftpMismatch.m.primary.trim()}`);
    p(`     backup:  ${ftpMismatch.m.backup.trim()}`);
  } else {
    p('   the replies agreed this time (both drew the same port)');
  }
  const copies = agent.stats.copyMs.slice(copiesBefore);
  const bytes = agent.stats.copyBytes.slice(copiesBefore);
  p(`   checkpoints: ${after.checkpoints.done - before.checkpoints.done} (mismatch ${after.checkpoints.requested.mismatch - before.checkpoints.requested.mismatch}, timeout ${after.checkpoints.requested.timeout - before.checkpoints.requested.timeout})`);
  copies.forEach((ms, i) => p(`     copy ${i + 1}: primary paused ${ms} ms, ${mb(bytes[i])} moved, backup now behind a fresh tap`));
  p(`   ${GUEST_BIG_FILE} (${expected.length} bytes) over FTP: ${ftpIntact ? 'byte-identical' : 'DIFFERENT'}; the data connection was compared like any other`);

  // A stateful request: state changed in the primary alone.
  p('');
  p('3. a stateful CGI: the counter is set to 500 in the primary only (through its console)');
  await (agent.vms.primary as QemuProcess).consoleCommand('echo 500 > /var/lib/svm/counter', 10_000);
  const c0 = bridge.snapshot();
  const counter = async () => (await runInAsync(lab.client.netns, 'curl', ['-sS', '--fail', '-m', '60', `http://${lab.serviceIpv4}/cgi-bin/counter`], 90_000)).trim();
  const first = await counter();
  const c1 = bridge.snapshot();
  p(`   GET /cgi-bin/counter → ${first} (released from the primary once the checkpoint settled it: ${c1.mismatches - c0.mismatches} mismatch, ${c1.checkpoints.done - c0.checkpoints.done} checkpoint)`);
  const backupCounter = /^\d+$/m.exec((await (agent.vms.backup as QemuProcess).consoleCommand('cat /var/lib/svm/counter', 10_000)).output)?.[0] ?? '(unreadable)';
  p(`   the backup (a fresh copy) now holds ${backupCounter}`);
  const next = [await counter(), await counter()];
  const c2 = bridge.snapshot();
  const counterRepaired = c2.mismatches === c1.mismatches && first === '501' && next.join(' ') === '502 503';
  p(`   the next two → ${next.join(', ')}: ${c2.mismatches === c1.mismatches ? 'both replicas said the same, no further checkpoint' : 'they still differ'}`);

  const end = bridge.snapshot();
  p('');
  p(`4. in all: ${end.checkpoints.done} checkpoints (copies p50 ${median(agent.stats.copyMs)} ms, ${mb(median(agent.stats.copyBytes))} each), ${end.mismatches} mismatches, state ${end.state}`);
  return { checkpoints: end.checkpoints.done, mismatches: end.mismatches, ftpIntact, counterRepaired };
}

function median(xs: number[]): number {
  if (xs.length === 0) return 0;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}
