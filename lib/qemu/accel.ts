/**
 * KVM or TCG, decided by a probe, never assumed: /dev/kvm can exist and
 * still not run a guest (a paravirtual nested KVM aborts QEMU on an MSR
 * write, MACHINE-NOTES "QEMU").
 *
 *   guest image ──► QEMU -accel kvm, kernel cmdline svm.probe=1 ──► /init prints
 *                   GUEST_PROBE_MARKER on ttyS0 and powers off   ──► kvm
 *                   exit, abort or no marker within timeoutMs     ──► tcg
 *
 * The verdict is cached in this process and on disk (keyed by the QEMU
 * version, the guest image and the host kernel), so only the first lab on a
 * host pays for the probe. SHADOWVM_ACCEL=kvm|tcg overrides it.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { LogFn, noLog } from '../control/logger';
import { Accel, QEMU_BINARY, QemuProcess } from './process';

export interface AccelChoice {
  accel: Accel;
  /** Why: the probe's outcome, the cache, or the override. */
  reason: string;
  /** What the probe cost now (0 when the verdict came from a cache). */
  probeMs: number;
  source: 'probe' | 'disk-cache' | 'process-cache' | 'override' | 'no-kvm';
}

export interface AccelProbeOptions {
  /** The guest to boot: its kernel and initramfs (with the probe mode in /init). */
  kernel: string;
  initrd: string;
  /** Identifies the guest image in the cache key (GuestImage.key). */
  imageKey: string;
  /** The line /init prints in probe mode. */
  marker: string;
  /** Where the verdict is kept on disk; absent: not kept. */
  cacheDir?: string;
  /** How long the KVM guest may take to reach user space; default 4000 ms (a working KVM needs < 1 s). */
  timeoutMs?: number;
  log?: LogFn;
}

const inProcess = new Map<string, AccelChoice>();

function qemuVersion(): string {
  try {
    return execFileSync(QEMU_BINARY, ['--version'], { encoding: 'utf8', timeout: 5000 }).split('\n')[0];
  } catch {
    return 'unknown';
  }
}

function kvmUsable(): boolean {
  try {
    fs.accessSync('/dev/kvm', fs.constants.R_OK | fs.constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

/** Runs the guest under -accel kvm until it proves it reached user space; never throws. */
async function probeKvm(o: AccelProbeOptions, log: LogFn): Promise<{ ok: boolean; reason: string }> {
  const runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'svm-accel-'));
  let vm: QemuProcess | null = null;
  try {
    vm = await QemuProcess.launch({
      name: 'accel-probe', runDir, memMiB: 128, accel: 'kvm', log,
      boot: { kernel: o.kernel, initrd: o.initrd, cmdline: 'console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init svm.probe=1' },
      qmpTimeoutMs: o.timeoutMs ?? 4000,
    });
    await vm.waitForSerial(o.marker, o.timeoutMs ?? 4000);
    return { ok: true, reason: 'a guest booted to user space under KVM' };
  } catch (e) {
    // QEMU's own last word (an assertion, an MSR it could not set) says more than our path to it.
    const message = (e as Error).message;
    const stderr = /stderr: (.*)$/.exec(message)?.[1];
    return { ok: false, reason: `KVM probe failed: ${stderr ?? message.replace(/^QEMU accel-probe: /, '')}` };
  } finally {
    await vm?.kill();
    fs.rmSync(runDir, { recursive: true, force: true });
  }
}

export async function chooseAccel(o: AccelProbeOptions): Promise<AccelChoice> {
  const log = o.log ?? noLog;
  const forced = process.env.SHADOWVM_ACCEL;
  if (forced === 'kvm' || forced === 'tcg') {
    return { accel: forced, reason: 'forced by SHADOWVM_ACCEL', probeMs: 0, source: 'override' };
  }
  if (!kvmUsable()) return { accel: 'tcg', reason: 'no usable /dev/kvm', probeMs: 0, source: 'no-kvm' };
  const key = createHash('sha256').update(`${qemuVersion()}\0${o.imageKey}\0${os.release()}`).digest('hex').slice(0, 16);
  const known = inProcess.get(key);
  if (known) return { ...known, probeMs: 0, source: 'process-cache' };
  const file = o.cacheDir ? path.join(o.cacheDir, `accel-${key}.json`) : null;
  if (file && fs.existsSync(file)) {
    try {
      const saved = JSON.parse(fs.readFileSync(file, 'utf8')) as { accel: Accel; reason: string };
      if (saved.accel === 'kvm' || saved.accel === 'tcg') {
        const choice: AccelChoice = { accel: saved.accel, reason: saved.reason, probeMs: 0, source: 'disk-cache' };
        inProcess.set(key, choice);
        return choice;
      }
    } catch { /* unreadable: probe again */ }
  }
  const started = Date.now();
  const result = await probeKvm(o, log);
  const choice: AccelChoice = { accel: result.ok ? 'kvm' : 'tcg', reason: result.reason, probeMs: Date.now() - started, source: 'probe' };
  log('info', 'accel-probe', { accel: choice.accel, ms: choice.probeMs, reason: choice.reason });
  inProcess.set(key, choice);
  if (file) {
    try {
      fs.mkdirSync(path.dirname(file), { recursive: true });
      fs.writeFileSync(file, `${JSON.stringify({ accel: choice.accel, reason: choice.reason })}\n`);
    } catch (e) {
      log('warn', 'accel-cache-unwritable', { file, error: (e as Error).message });
    }
  }
  return choice;
}
