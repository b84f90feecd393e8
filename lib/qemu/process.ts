/**
 * One QEMU process of the lab: a diskless guest (kernel + initramfs) with
 * one virtio-net NIC on a tap, a QMP socket, a serial log and a pidfile, all
 * in one run directory; optionally waiting for an incoming migration
 * (`-incoming defer`).
 *
 *   launchQemu(options) ──spawn (own process group)──► qemu-system-x86_64
 *                        ◄──QMP (qmp.ts)── <runDir>/<name>.qmp
 *
 * Killing takes the whole process group. `findQemuProcesses(dir)` finds every
 * QEMU whose command line names a file under `dir`, so a lab's teardown
 * finds its QEMUs even when the process that started them is gone.
 */
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { connect } from 'node:net';
import * as path from 'node:path';
import { LogFn, noLog } from '../control/logger';
import { QmpClient } from './qmp';
import { UserFacingError } from '../errors';

export type Accel = 'kvm' | 'tcg';

export const QEMU_BINARY = 'qemu-system-x86_64';

export interface QemuKernel {
  /** vmlinux (PVH entry) or bzImage. */
  kernel: string;
  initrd: string;
  cmdline: string;
}

export interface QemuLaunchOptions {
  /** Names the files in runDir and the log lines, e.g. `qxp-vm1`. [a-z0-9-]. */
  name: string;
  runDir: string;
  boot: QemuKernel;
  memMiB: number;
  accel: Accel;
  /** The tap (must exist) and the NIC's MAC. Absent: no NIC (the accelerator probe). */
  tap?: string;
  mac?: string;
  /** Start paused, waiting for `migrate-incoming` (`-incoming defer`). */
  incoming?: boolean;
  /** The qemu-system-x86_64 to run; default the one on PATH. COLO needs the patched build (`findColoQemu()`). */
  binary?: string;
  /**
   * Extra `-object` definitions (QOM objects such as net filters), each one
   * `-object` argument, e.g. `filter-buffer,id=gate,netdev=net0,…`.
   */
  objects?: string[];
  /** QMP connect + greeting budget; default 10 s (a loaded host starts QEMU slowly). */
  qmpTimeoutMs?: number;
  log?: LogFn;
}

export class QemuLaunchError extends UserFacingError {
  constructor(readonly qemuName: string, message: string) {
    super(`QEMU ${qemuName}: ${message}`);
    this.name = 'QemuLaunchError';
  }
}

export interface QemuExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** QEMU's `-name` value for a VM: its name, and the process's (what ps and /proc/PID/cmdline show). */
export function qemuNameArg(name: string): string {
  return `${name},process=${name}`;
}

/** The QEMU command line for these options (exported for the probe and for reading). */
export function qemuArgs(o: QemuLaunchOptions): string[] {
  const file = (ext: string) => path.join(o.runDir, `${o.name}.${ext}`);
  const args = [
    '-name', qemuNameArg(o.name),
    '-nodefaults', '-no-user-config', '-display', 'none', '-monitor', 'none', '-no-reboot',
    '-machine', 'pc', '-accel', o.accel,
    // kvm: the host's CPU; tcg: every feature TCG can emulate. Both sides of a migration use the same.
    '-cpu', o.accel === 'kvm' ? 'host' : 'max',
    '-smp', '1', '-m', String(o.memMiB),
    '-kernel', o.boot.kernel, '-initrd', o.boot.initrd, '-append', o.boot.cmdline,
    // The serial console: a socket for commands (consoleCommand), everything it prints also in the log.
    '-chardev', `socket,id=serial0,path=${file('console')},server=on,wait=off,logfile=${file('serial.log')}`,
    '-serial', 'chardev:serial0',
    '-qmp', `unix:${file('qmp')},server=on,wait=off`,
    // A second monitor for a sync agent in another process (a QMP socket serves one client at a time).
    '-qmp', `unix:${file('agent.qmp')},server=on,wait=off`,
    '-pidfile', file('pid'),
  ];
  if (o.tap) {
    // vnet_hdr=off: no checksum offload or GSO offered to the guest, so every
    // frame on the tap is complete and at most MTU-sized. No vhost-net here.
    args.push('-netdev', `tap,id=net0,ifname=${o.tap},script=no,downscript=no,vhost=off,vnet_hdr=off`);
    args.push('-device', `virtio-net-pci,netdev=net0,mac=${o.mac ?? '52:54:00:12:34:56'},romfile=`);
  }
  for (const obj of o.objects ?? []) args.push('-object', obj);
  if (o.incoming) args.push('-incoming', 'defer');
  return args;
}

export class QemuProcess {
  readonly exited: Promise<QemuExit>;
  private exit: QemuExit | null = null;

  private constructor(
    readonly options: QemuLaunchOptions,
    private readonly child: ChildProcess,
    readonly qmp: QmpClient,
  ) {
    this.exited = new Promise((resolve) => {
      const done = (code: number | null, signal: NodeJS.Signals | null) => {
        this.exit = { code, signal };
        resolve(this.exit);
      };
      if (child.exitCode !== null || child.signalCode !== null) done(child.exitCode, child.signalCode as NodeJS.Signals | null);
      else child.once('exit', done);
    });
  }

  get name(): string { return this.options.name; }
  get pid(): number { return this.child.pid as number; }
  get tap(): string | undefined { return this.options.tap; }
  get accel(): Accel { return this.options.accel; }
  get memMiB(): number { return this.options.memMiB; }
  get qmpSocket(): string { return path.join(this.options.runDir, `${this.options.name}.qmp`); }
  /** The second QMP socket, free for a sync agent. */
  get agentQmpSocket(): string { return path.join(this.options.runDir, `${this.options.name}.agent.qmp`); }
  /** The serial console's socket (a shell in the lab guest; see consoleCommand). */
  get consoleSocket(): string { return path.join(this.options.runDir, `${this.options.name}.console`); }
  get serialLog(): string { return path.join(this.options.runDir, `${this.options.name}.serial.log`); }
  get stderrLog(): string { return path.join(this.options.runDir, `${this.options.name}.stderr.log`); }
  get pidFile(): string { return path.join(this.options.runDir, `${this.options.name}.pid`); }
  get running(): boolean { return this.exit === null; }

  /** Starts QEMU and connects QMP; on failure nothing is left running and the error quotes QEMU's stderr. */
  static async launch(options: QemuLaunchOptions): Promise<QemuProcess> {
    const log = options.log ?? noLog;
    if (!/^[a-z0-9][a-z0-9-]*$/.test(options.name)) throw new QemuLaunchError(options.name, 'name must be [a-z0-9-]');
    fs.mkdirSync(options.runDir, { recursive: true });
    const base = path.join(options.runDir, options.name);
    for (const ext of ['qmp', 'agent.qmp', 'console', 'pid', 'serial.log']) fs.rmSync(`${base}.${ext}`, { force: true });
    const stderrFile = `${base}.stderr.log`;
    const err = fs.openSync(stderrFile, 'w');
    let child: ChildProcess;
    try {
      child = spawn(options.binary ?? QEMU_BINARY, qemuArgs(options), { detached: true, stdio: ['ignore', err, err] });
    } finally {
      fs.closeSync(err);
    }
    const gaveUp = new AbortController();
    const spawnFailed = new Promise<never>((_, reject) => {
      const fail = (err: QemuLaunchError) => {
        gaveUp.abort(err.message);
        reject(err);
      };
      child.once('error', (e) => fail(new QemuLaunchError(options.name, `cannot start ${options.binary ?? QEMU_BINARY}: ${e.message} (install qemu-system-x86)`)));
      child.once('exit', (code, signal) => fail(new QemuLaunchError(options.name, `exited during start-up (${signal ?? `exit ${code}`}): ${lastLine(stderrFile)}`)));
    });
    spawnFailed.catch(() => {});
    try {
      const qmp = await Promise.race([
        QmpClient.connect(`${base}.qmp`, { timeoutMs: options.qmpTimeoutMs ?? 10_000, name: options.name, log, signal: gaveUp.signal }),
        spawnFailed,
      ]);
      child.removeAllListeners('exit');
      child.removeAllListeners('error');
      const proc = new QemuProcess(options, child, qmp);
      log('info', 'qemu-started', { qemu: options.name, pid: child.pid, accel: options.accel, memMiB: options.memMiB, tap: options.tap, incoming: options.incoming ?? false });
      return proc;
    } catch (e) {
      killGroup(child.pid);
      throw e instanceof QemuLaunchError ? e : new QemuLaunchError(options.name, `${(e as Error).message}; stderr: ${lastLine(stderrFile)}`);
    }
  }

  /** Resolves when the serial log contains `marker`; rejects if QEMU exits or after timeoutMs. */
  async waitForSerial(marker: string, timeoutMs: number): Promise<void> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      if (readIfExists(this.serialLog).includes(marker)) return;
      if (!this.running) throw new QemuLaunchError(this.name, `exited before "${marker}" on the serial console: ${lastLine(this.stderrLog)}`);
      if (Date.now() > until) throw new QemuLaunchError(this.name, `no "${marker}" on the serial console within ${timeoutMs} ms (see ${this.serialLog})`);
      await new Promise((r) => setTimeout(r, 25));
    }
  }

  /**
   * Runs a shell command in the guest through the serial console (the lab
   * guest runs a shell there) and resolves with its output and exit status.
   * For tests that must change one replica only; one command at a time.
   */
  consoleCommand(command: string, timeoutMs = 10_000): Promise<{ output: string; status: number }> {
    const socketPath = this.consoleSocket;
    // The marker is split in the command, whole only in the output.
    const marker = '@@svm-console-done@@';
    return new Promise((resolve, reject) => {
      const socket = connect(socketPath);
      let text = '';
      const finish = (err: Error | null, result?: { output: string; status: number }) => {
        clearTimeout(timer);
        socket.destroy();
        if (err) reject(err); else resolve(result as { output: string; status: number });
      };
      const timer = setTimeout(() => finish(new QemuLaunchError(this.name, `console command got no answer within ${timeoutMs} ms: ${command}`)), timeoutMs);
      socket.on('error', (e) => finish(new QemuLaunchError(this.name, `console ${socketPath}: ${e.message}`)));
      socket.on('data', (chunk: Buffer) => {
        text += chunk.toString('utf8');
        const m = new RegExp(`([\\s\\S]*?)${marker} (\\d+)\\n`).exec(text);
        if (m) finish(null, { output: m[1], status: Number(m[2]) });
      });
      socket.on('connect', () => socket.write(`${command}\necho "${marker.slice(0, 6)}""${marker.slice(6)}" $?\n`));
    });
  }

  /** SIGKILLs the process group and waits for the exit (default); closes QMP. Idempotent. */
  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<QemuExit> {
    this.qmp.close();
    if (this.running) killGroup(this.child.pid, signal);
    return this.exited;
  }
}

function killGroup(pid: number | undefined, signal: NodeJS.Signals = 'SIGKILL'): void {
  if (pid === undefined) return;
  try {
    process.kill(-pid, signal);
  } catch {
    try { process.kill(pid, signal); } catch { /* gone */ }
  }
}

function readIfExists(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}

function lastLine(file: string): string {
  const lines = readIfExists(file).trim().split('\n').filter(Boolean);
  return lines.length ? lines[lines.length - 1] : '(no output)';
}

/** PIDs of QEMU processes whose command line names a path under `dir` (their pidfile, QMP socket…). */
export function findQemuProcesses(dir: string): number[] {
  const needle = dir.endsWith('/') ? dir : `${dir}/`;
  const out: number[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    let cmdline: string;
    try {
      cmdline = fs.readFileSync(`/proc/${name}/cmdline`, 'utf8');
    } catch {
      continue;
    }
    const argv = cmdline.split('\0');
    if (!argv[0]?.includes('qemu-system')) continue;
    if (argv.some((a) => a.includes(needle))) out.push(Number(name));
  }
  return out;
}
