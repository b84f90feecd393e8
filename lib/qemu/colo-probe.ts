/**
 * Can this QEMU do COLO checkpoints? Found out by trying, not from a version
 * string: Debian's QEMU 7.2 lists `x-colo` and accepts every command, then
 * deadlocks its primary at the first checkpoint under TCG (two TCG-only bugs;
 * `make qemu-colo` builds it with fixes, see qemu-colo/patches/).
 *
 *   secondary: qemu -incoming defer ─ x-colo ─ migrate-incoming unix:mig.sock
 *   primary:   qemu ─ x-colo, x-checkpoint-delay 1 h ─ migrate unix:mig.sock ─► COLO state
 *   then N times: migrate-set-parameters {x-checkpoint-delay} (starts a checkpoint at once)
 *                 and the primary's STOP … RESUME must arrive within checkpointTimeoutMs
 *   finally: the secondary still runs and answers QMP; no oops in either guest's console.
 *
 * Without a guest kernel the guest is SeaBIOS idling with no boot device: that
 * exercises the checkpoint path (the deadlock) but dirties little memory, so
 * it cannot catch lost dirty tracking. Give `kernel`/`initrd` (a guest that
 * rewrites memory) for that. The probe is bounded (`budgetMs`, default 20 s),
 * kills both QEMUs with SIGKILL whatever happens, and removes its temp dir.
 *
 * The QMP client here is deliberately private and minimal.
 */
import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { connect, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const DEFAULT_COLO_CACHE_DIR = '/var/cache/shadowvm/qemu-colo';

export interface ColoProbeOptions {
  /** The qemu-system-x86_64 to probe. */
  qemu: string;
  /** Accelerator for both VMs; default 'tcg' (the one with the bugs). */
  accel?: 'tcg' | 'kvm';
  /** Guest RAM; default 128 MiB. */
  memMiB?: number;
  /** Optional guest: a kernel (bzImage or PVH vmlinux), its initrd and command line. */
  kernel?: string;
  initrd?: string;
  /** Default `console=ttyS0 panic=-1 quiet`. */
  append?: string;
  /** With a kernel: wait for this on the primary's console before starting COLO (e.g. a line the init prints). */
  readyPattern?: RegExp;
  /** With a kernel: after the checkpoints, the secondary's console must print this again (fresh output). */
  alivePattern?: RegExp;
  /** Console text that makes the probe fail; default kernel oops/panic/GPF/BUG lines. */
  failPattern?: RegExp;
  /** Checkpoints to trigger; default PROBE_CHECKPOINTS. */
  checkpoints?: number;
  /** Each checkpoint (trigger → RESUME) must finish within this; default 4000 ms. */
  checkpointTimeoutMs?: number;
  /** Guest run time between checkpoints; default 200 ms (1000 ms with a kernel). */
  gapMs?: number;
  /** Whole probe; default 20000 ms. */
  budgetMs?: number;
  /** Progress lines. */
  log?: (line: string) => void;
}

export interface ColoProbeResult {
  /** True only when every checkpoint finished in time and the secondary is healthy afterwards. */
  colo: boolean;
  reason: string;
  /** Trigger (QMP call) → primary RESUME, per finished checkpoint. */
  checkpointMs: number[];
  /** Primary STOP → RESUME (the pause the guest sees), per finished checkpoint. */
  pauseMs: number[];
  accel: 'tcg' | 'kvm';
  guest: 'seabios' | 'kernel';
  /** First line of `qemu --version`, when known. */
  version?: string;
  durationMs: number;
}

/**
 * The patched build from `make qemu-colo`: `$SHADOWVM_QEMU_COLO_DIR/bin/qemu-system-x86_64`
 * when that is set, otherwise the most recently built `<cacheDir>/<version>-<hash>/` (other
 * directories there, such as diagnostic builds with a subset of the patches, are ignored).
 * Undefined when there is none.
 */
export function findColoQemu(cacheDir: string = DEFAULT_COLO_CACHE_DIR): string | undefined {
  const fromEnv = process.env.SHADOWVM_QEMU_COLO_DIR;
  const candidates = fromEnv ? [fromEnv] : listDirs(cacheDir);
  let best: { bin: string; mtime: number } | undefined;
  for (const dir of candidates) {
    const bin = join(dir, 'bin', 'qemu-system-x86_64');
    const info = join(dir, 'BUILD-INFO'); // written last by the build script: a complete build
    if (!existsSync(bin) || !existsSync(info)) continue;
    const mtime = statSync(info).mtimeMs;
    if (!best || mtime > best.mtime) best = { bin, mtime };
  }
  return best?.bin;
}

function listDirs(dir: string): string[] {
  try {
    return readdirSync(dir, { withFileTypes: true })
      .filter((d) => d.isDirectory() && /^\d[\w.+~-]*-[0-9a-f]{12}$/.test(d.name)) // <version>-<hash>, not staging or other dirs
      .map((d) => join(dir, d.name));
  } catch {
    return [];
  }
}

const DEFAULT_FAIL = /Kernel panic|Oops[:\s]|general protection fault|BUG: |Unable to handle kernel|segfault at/;

class ProbeFailure extends Error {}

/**
 * Checkpoints a probe triggers by default. Stock QEMU 7.2's deadlock is a race:
 * usually at the first checkpoint, once seen at the second, and once (stop 15,
 * in CI) not within 3. Eight make a lucky pass of a broken QEMU far less likely,
 * for about 2 s of probe on a good one.
 */
export const PROBE_CHECKPOINTS = 8;

/** Runs the probe. Never throws for a QEMU that cannot do COLO: that is `colo: false` with a reason. */
export async function probeColo(options: ColoProbeOptions): Promise<ColoProbeResult> {
  const started = Date.now();
  const accel = options.accel ?? 'tcg';
  const guest = options.kernel ? 'kernel' : 'seabios';
  const budgetMs = options.budgetMs ?? 20000;
  const deadline = started + budgetMs;
  const log = options.log ?? (() => undefined);
  const checkpointMs: number[] = [];
  const pauseMs: number[] = [];
  const version = qemuVersion(options.qemu);
  const result = (colo: boolean, reason: string): ColoProbeResult => ({
    colo, reason, checkpointMs, pauseMs, accel, guest, version, durationMs: Date.now() - started,
  });
  if (!version) return result(false, `${options.qemu} does not run (--version failed)`);

  const dir = mkdtempSync(join(tmpdir(), 'svm-colo-probe-'));
  const vms: Vm[] = [];
  const left = (): number => Math.max(1, deadline - Date.now());
  try {
    const mig = `unix:${join(dir, 'mig.sock')}`;
    const secondary = startVm('secondary', options, accel, dir, ['-incoming', 'defer']);
    vms.push(secondary);
    const primary = startVm('primary', options, accel, dir, []);
    vms.push(primary);
    await Promise.all(vms.map(async (vm) => { vm.qmp = await Qmp.open(vm, Math.min(left(), 8000)); }));
    const pq = primary.qmp!;
    const sq = secondary.qmp!;

    const colo = { capabilities: [{ capability: 'x-colo', state: true }] };
    await sq.execute('migrate-set-capabilities', colo, left());
    await sq.execute('migrate-incoming', { uri: mig }, left());
    await pq.execute('migrate-set-capabilities', colo, left());
    await pq.execute('migrate-set-parameters', { 'x-checkpoint-delay': 3600000, 'max-bandwidth': 10 * 1024 ** 3 }, left());

    if (options.kernel && options.readyPattern) {
      log(`waiting for the primary guest to boot (${options.readyPattern})`);
      await waitFor(() => options.readyPattern!.test(primary.console()), left(), 'the primary guest did not get ready');
    } else {
      await sleep(Math.min(300, left()));
    }

    log('primary: migrate into the secondary, entering COLO');
    const tMig = Date.now();
    await pq.execute('migrate', { uri: mig }, left());
    await waitFor(async () => {
      const m = await pq.execute('query-migrate', undefined, left());
      if (m.status === 'failed' || m.status === 'cancelled') throw new ProbeFailure(`migration to the secondary ${m.status}`);
      if (m.status !== 'colo') return false;
      const s = await pq.execute('query-status', undefined, left());
      return s.running === true;
    }, Math.min(left(), 10000), 'the primary did not reach COLO state running');
    log(`COLO state reached in ${Date.now() - tMig} ms`);

    const n = options.checkpoints ?? PROBE_CHECKPOINTS;
    const timeout = options.checkpointTimeoutMs ?? 4000;
    const gap = options.gapMs ?? (options.kernel ? 1000 : 200);
    for (let i = 1; i <= n; i++) {
      await sleep(Math.min(gap, left()));
      const mark = pq.events.length;
      const t0 = performance.now();
      await pq.execute('migrate-set-parameters', { 'x-checkpoint-delay': 3600000 }, Math.min(left(), timeout));
      const stop = await pq.waitEvent((e) => e.event === 'STOP' || e.event === 'COLO_EXIT', mark, Math.min(left(), timeout));
      if (stop?.event === 'COLO_EXIT') return result(false, `checkpoint ${i}: primary left COLO (${JSON.stringify(stop.data)})`);
      const resume = stop && await pq.waitEvent((e) => e.event === 'RESUME' || e.event === 'COLO_EXIT', pq.events.indexOf(stop) + 1,
        Math.max(1, Math.min(left(), timeout - (performance.now() - t0))));
      if (!stop || !resume) {
        const what = stop ? 'the primary paused (STOP) and never resumed' : 'the primary never paused';
        return result(false, `checkpoint ${i} did not finish within ${timeout} ms: ${what}` +
          (stop && accel === 'tcg' ? ' (the TCG deadlock of unpatched QEMU 7.2: make qemu-colo)' : ''));
      }
      if (resume.event === 'COLO_EXIT') return result(false, `checkpoint ${i}: primary left COLO (${JSON.stringify(resume.data)})`);
      const ms = resume.t - t0;
      checkpointMs.push(Math.round(ms * 10) / 10);
      pauseMs.push(Math.round((resume.t - stop.t) * 10) / 10);
      log(`checkpoint ${i}: ${ms.toFixed(1)} ms`);
      for (const vm of vms) {
        const bad = (options.failPattern ?? DEFAULT_FAIL).exec(vm.console());
        if (bad) return result(false, `the ${vm.role} guest failed after checkpoint ${i}: "${lineAround(vm.console(), bad.index)}"`);
      }
    }

    // The secondary must have come through the checkpoints alive and running, its guest unharmed.
    if (options.kernel && options.alivePattern) {
      const seen = secondary.console().length;
      await waitFor(() => options.alivePattern!.test(secondary.console().slice(seen)), Math.min(left(), 6000),
        'the secondary guest printed nothing healthy after the checkpoints');
    } else {
      await sleep(Math.min(100, left()));
    }
    for (const vm of vms) {
      if (vm.exited) return result(false, `the ${vm.role} QEMU exited after the checkpoints: ${vm.stderrTail()}`);
      const s = await vm.qmp!.execute('query-status', undefined, Math.min(left(), 3000));
      if (!s.running) return result(false, `the ${vm.role} is not running after the checkpoints (${s.status})`);
      const bad = (options.failPattern ?? DEFAULT_FAIL).exec(vm.console());
      if (bad) return result(false, `the ${vm.role} guest failed after the checkpoints: "${lineAround(vm.console(), bad.index)}"`);
    }
    const sm = await sq.execute('query-migrate', undefined, Math.min(left(), 3000));
    if (sm.status !== undefined && sm.status !== 'colo') return result(false, `the secondary is no longer in COLO (${sm.status})`);
    const what = guest === 'kernel' ? 'with a guest kernel' : 'SeaBIOS guest only: dirty tracking not exercised';
    return result(true, `${n} checkpoints finished (${accel}, ${what})`);
  } catch (err) {
    if (!vms.some((vm) => vm.exited)) await sleep(100); // a closed QMP socket often means QEMU is exiting
    const exited = vms.find((vm) => vm.exited);
    const why = err instanceof Error ? err.message : String(err);
    return result(false, exited ? `${why}; the ${exited.role} QEMU exited: ${exited.stderrTail()}` : why);
  } finally {
    await Promise.all(vms.map((vm) => vm.kill()));
    rmSync(dir, { recursive: true, force: true });
  }
}

function qemuVersion(qemu: string): string | undefined {
  try {
    const r = spawnSync(qemu, ['--version'], { encoding: 'utf8', timeout: 5000 });
    return r.status === 0 ? r.stdout.split('\n')[0] : undefined;
  } catch {
    return undefined;
  }
}

function lineAround(text: string, index: number): string {
  const start = text.lastIndexOf('\n', index) + 1;
  const end = text.indexOf('\n', index);
  return text.slice(start, end < 0 ? undefined : end).trim().slice(0, 200);
}

// ---- the two VMs --------------------------------------------------------------------------

interface Vm {
  role: 'primary' | 'secondary';
  proc: ChildProcess;
  qmpPath: string;
  qmp?: Qmp;
  exited: boolean;
  console(): string;
  stderrTail(): string;
  kill(): Promise<void>;
}

function startVm(role: Vm['role'], o: ColoProbeOptions, accel: string, dir: string, extra: string[]): Vm {
  const qmpPath = join(dir, `${role}.qmp`);
  const consolePath = join(dir, `${role}.console`);
  const args = [
    '-nodefaults', '-no-user-config', '-display', 'none',
    '-machine', 'pc', '-accel', accel, '-m', String(o.memMiB ?? 128), '-smp', '1',
    '-qmp', `unix:${qmpPath},server=on,wait=off`,
  ];
  if (o.kernel) {
    args.push('-serial', `file:${consolePath}`, '-kernel', o.kernel,
      '-append', o.append ?? 'console=ttyS0 panic=-1 quiet');
    if (o.initrd) args.push('-initrd', o.initrd);
  }
  args.push(...extra);
  const proc = spawn(o.qemu, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  proc.stderr!.setEncoding('utf8');
  proc.stderr!.on('data', (s: string) => { stderr = (stderr + s).slice(-2000); });
  const exitPromise = new Promise<void>((resolve) => proc.once('exit', () => { vm.exited = true; resolve(); }));
  proc.once('error', (err) => { stderr += String(err); vm.exited = true; });
  const vm: Vm = {
    role, proc, qmpPath, exited: false,
    console: () => { try { return readFileSync(consolePath, 'latin1'); } catch { return ''; } },
    stderrTail: () => stderr.trim().split('\n').slice(-3).join(' | ') || '(no stderr)',
    kill: async () => {
      vm.qmp?.close();
      if (!vm.exited && proc.pid !== undefined) {
        proc.kill('SIGKILL');
        await withTimeout(exitPromise, 3000, '').catch(() => undefined);
      }
    },
  };
  return vm;
}

// ---- a minimal QMP client, private to the probe ------------------------------------------------

interface QmpEvent { event: string; data?: unknown; t: number }

class Qmp {
  readonly events: QmpEvent[] = [];
  private buf = '';
  private nextId = 1;
  private readonly pending = new Map<string, { resolve: (v: any) => void; reject: (e: Error) => void }>();
  private eventWaiters: Array<() => void> = [];
  private closed = false;

  private constructor(private readonly sock: Socket, private readonly vm: Vm) {
    sock.setEncoding('utf8');
    sock.on('data', (chunk: string) => this.onData(chunk));
    sock.on('close', () => this.fail(new ProbeFailure(`QMP connection to the ${vm.role} closed`)));
    sock.on('error', () => undefined);
  }

  /** Connects (retrying until QEMU has created its socket) and negotiates capabilities. */
  static async open(vm: Vm, timeoutMs: number): Promise<Qmp> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      if (vm.exited) throw new ProbeFailure(`the ${vm.role} QEMU exited at start: ${vm.stderrTail()}`);
      const sock = await new Promise<Socket | undefined>((resolve) => {
        const s = connect(vm.qmpPath);
        s.once('connect', () => resolve(s));
        s.once('error', () => { s.destroy(); resolve(undefined); });
      });
      if (sock) {
        const qmp = new Qmp(sock, vm);
        await qmp.waitGreeting(Math.max(1, until - Date.now()));
        await qmp.execute('qmp_capabilities', undefined, Math.max(1, until - Date.now()));
        return qmp;
      }
      if (Date.now() > until) throw new ProbeFailure(`no QMP socket from the ${vm.role} QEMU`);
      await sleep(50);
    }
  }

  private greeted = false;
  private greetingWaiter?: () => void;

  private waitGreeting(timeoutMs: number): Promise<void> {
    if (this.greeted) return Promise.resolve();
    return withTimeout(new Promise<void>((resolve) => { this.greetingWaiter = resolve; }), timeoutMs,
      `no QMP greeting from the ${this.vm.role}`);
  }

  execute(command: string, args: object | undefined, timeoutMs: number): Promise<any> {
    if (this.closed) return Promise.reject(new ProbeFailure(`QMP to the ${this.vm.role} is closed`));
    const id = String(this.nextId++);
    const p = new Promise<any>((resolve, reject) => this.pending.set(id, { resolve, reject }));
    this.sock.write(JSON.stringify(args ? { execute: command, arguments: args, id } : { execute: command, id }) + '\n');
    return withTimeout(p, timeoutMs, `${this.vm.role}: QMP ${command} got no answer within ${Math.round(timeoutMs)} ms`)
      .finally(() => this.pending.delete(id));
  }

  /** The first event at index ≥ `from` matching `pred`, or undefined after `timeoutMs`. */
  async waitEvent(pred: (e: QmpEvent) => boolean, from: number, timeoutMs: number): Promise<QmpEvent | undefined> {
    const until = performance.now() + timeoutMs;
    for (;;) {
      const hit = this.events.slice(from).find(pred);
      if (hit) return hit;
      const rest = until - performance.now();
      if (rest <= 0 || this.closed) return undefined;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, rest);
        function done(): void { clearTimeout(timer); resolve(); }
        this.eventWaiters.push(done);
      });
    }
  }

  close(): void {
    this.closed = true;
    this.sock.destroy();
  }

  private onData(chunk: string): void {
    this.buf += chunk;
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (!line) continue;
      let msg: any;
      try { msg = JSON.parse(line); } catch { continue; }
      if (msg.QMP) {
        this.greeted = true;
        this.greetingWaiter?.();
      } else if (msg.event) {
        this.events.push({ event: msg.event, data: msg.data, t: performance.now() });
        const waiters = this.eventWaiters;
        this.eventWaiters = [];
        for (const w of waiters) w();
      } else if (msg.id !== undefined) {
        const p = this.pending.get(String(msg.id));
        if (!p) continue;
        if (msg.error) p.reject(new ProbeFailure(`${this.vm.role}: ${msg.error.class}: ${msg.error.desc}`));
        else p.resolve(msg.return);
      }
    }
  }

  private fail(err: Error): void {
    this.closed = true;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    const waiters = this.eventWaiters;
    this.eventWaiters = [];
    for (const w of waiters) w();
  }
}

// ---- small helpers --------------------------------------------------------------------------------

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function withTimeout<T>(p: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new ProbeFailure(message)), ms); });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

async function waitFor(cond: () => boolean | Promise<boolean>, timeoutMs: number, message: string): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    if (await cond()) return;
    if (Date.now() >= until) throw new ProbeFailure(`${message} within ${Math.round(timeoutMs)} ms`);
    await sleep(50);
  }
}
