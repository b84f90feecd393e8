/**
 * The QEMU agent as its own process (`shadowvm agent qemu --config FILE`):
 * it attaches to running VMs through a QMP socket each (QEMU serves one
 * client per QMP socket, so each VM should have one left for the agent),
 * starts standbys itself from a template, and keeps its view of the roles in
 * a state file so that a restarted agent attaches to the VMs that run now.
 *
 * Config (JSON; the QEMU lab writes one as `<runDir>/lab.json`):
 *   { "agentSocket": "/run/shadowvm/web/agent.sock",
 *     "prefix": "web",                                   (standby taps: <prefix>s<N>, VMs <prefix>-a<N>)
 *     "vms": { "primary": { "name", "pid", "tap", "agentQmpSocket" }, "backup": { … } },
 *     "vmTemplate": { "runDir", "memMiB", "accel", "mac", "boot": { "kernel", "initrd", "cmdline" }, "binary"? },
 *     "sync": "auto" | "full-copy" | "colo" }             (optional, default auto: colo where it can run; the CLI's --sync wins)
 *
 * `sync: colo` needs a QEMU that can do COLO checkpoints: `vmTemplate.binary`,
 * else the patched build `findColoQemu()` finds. The agent refuses to start
 * (one line) when there is none, when the COLO probe (lib/qemu/colo-probe.ts)
 * says it cannot, or when the primary runs another QEMU.
 *
 * On start, what an agent that died in the middle of a copy left behind is
 * put right before anything else: its migration, still on the wire to a
 * standby nobody watches, is cancelled (a primary resumed under a running
 * migration would be stopped again by it, in `postmigrate`, and refuse every
 * later copy); the primary, paused, runs again; the standbys it started and
 * that hold no role are killed and their taps removed. A backup that is not
 * running is reported down.
 */
import { UserFacingError } from '../errors';
import * as fs from 'node:fs';
import { LogFn, noLog } from '../control/logger';
import { QmpClient } from '../qemu/qmp';
import { QemuProcess, qemuNameArg } from '../qemu/process';
import { cloneInto, createTap, QemuVmTemplate } from '../lab/qemu/pair';
import { runQuietly } from '../lab/exec';
import { AgentVm, QemuAgent, runQemuAgent, SYNC_MODES, SyncMode } from './qemu-agent';
import { coloGateObject, enterColo } from '../qemu/colo';
import { findColoQemu, probeColo } from '../qemu/colo-probe';
import * as path from 'node:path';

export class QemuAgentConfigError extends UserFacingError {
  constructor(readonly file: string, message: string) {
    super(`${file}: ${message}`);
    this.name = 'QemuAgentConfigError';
  }
}

export interface VmRef {
  name: string;
  pid: number;
  tap: string;
  agentQmpSocket: string;
}

export interface QemuAgentConfig {
  agentSocket: string;
  prefix: string;
  /** backup null: the last agent saw none (after a failover, before re-protection). */
  vms: { primary: VmRef; backup: VmRef | null };
  vmTemplate: QemuVmTemplate;
  sync: SyncChoice;
}

/**
 * What the config (or --sync) may ask for. `auto` (the default): COLO
 * checkpoints where they can run (a COLO-capable QEMU, which the primary
 * runs too, and the probe says yes), since they move only the dirtied pages
 * (a pause of about 4 ms against about 120 ms for a full copy of a 128 MiB
 * guest here); a full copy everywhere else. The choice is logged.
 */
export type SyncChoice = SyncMode | 'auto';
export const SYNC_CHOICES: readonly SyncChoice[] = ['auto', ...SYNC_MODES];

/** The sync mode a config value (or a CLI flag, which wins) asks for; a clear error for anything else. */
export function syncModeOf(file: string, configValue: unknown, cliValue?: string): SyncChoice {
  const [value, where] = cliValue !== undefined ? [cliValue, '--sync'] : [configValue ?? 'auto', 'sync'];
  if (typeof value === 'string' && (SYNC_CHOICES as readonly string[]).includes(value)) return value as SyncChoice;
  throw new QemuAgentConfigError(file, `${where}: must be ${SYNC_CHOICES.map((m) => `"${m}"`).join(', ')}, not ${JSON.stringify(value)}`);
}

/**
 * The mode the agent runs, and the QEMU binary for its new VMs: `colo` is
 * refused where it cannot run (ColoUnavailableError), `auto` falls back to
 * `full-copy` there.
 */
export async function resolveSync(c: QemuAgentConfig, choice: SyncChoice, o: { probe?: boolean; log?: LogFn } = {}): Promise<{ sync: SyncMode; binary?: string; why: string }> {
  if (choice === 'full-copy') return { sync: 'full-copy', why: 'asked for' };
  try {
    return { sync: 'colo', binary: await coloQemuFor(c, o), why: choice === 'auto' ? 'auto: COLO checkpoints can run here' : 'asked for' };
  } catch (e) {
    if (choice === 'colo' || !(e instanceof ColoUnavailableError)) throw e;
    return { sync: 'full-copy', why: `auto: ${e.message}` };
  }
}

/** sync colo cannot run here: no COLO-capable QEMU, or the probe says no, or the primary runs another QEMU. */
export class ColoUnavailableError extends UserFacingError {
  constructor(message: string) {
    super(`sync colo: ${message}`);
    this.name = 'ColoUnavailableError';
  }
}

function vmRef(file: string, what: string, v: unknown): VmRef {
  const o = v as Record<string, unknown> | null;
  if (!o || typeof o !== 'object') throw new QemuAgentConfigError(file, `${what}: missing`);
  for (const k of ['name', 'tap', 'agentQmpSocket']) if (typeof o[k] !== 'string' || !(o[k] as string)) throw new QemuAgentConfigError(file, `${what}.${k}: must be a non-empty string`);
  if (!Number.isSafeInteger(o.pid) || (o.pid as number) <= 0) throw new QemuAgentConfigError(file, `${what}.pid: must be a process id`);
  return { name: o.name as string, pid: o.pid as number, tap: o.tap as string, agentQmpSocket: o.agentQmpSocket as string };
}

/** Reads and checks a config; the state file next to it, if newer, says which VMs hold the roles now. */
export function readQemuAgentConfig(file: string): QemuAgentConfig {
  let raw: Record<string, unknown>;
  try {
    raw = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
  } catch (e) {
    throw new QemuAgentConfigError(file, `cannot read it as JSON: ${(e as Error).message}`);
  }
  if (typeof raw.agentSocket !== 'string') throw new QemuAgentConfigError(file, 'agentSocket: must be the bridge\'s agent socket path');
  if (typeof raw.prefix !== 'string' || !/^[a-z0-9]{1,8}$/.test(raw.prefix)) throw new QemuAgentConfigError(file, 'prefix: must be 1-8 lowercase letters or digits (it names standby taps)');
  const t = raw.vmTemplate as Record<string, unknown> | undefined;
  const boot = t?.boot as Record<string, unknown> | undefined;
  if (!t || typeof t.runDir !== 'string' || !Number.isSafeInteger(t.memMiB) || (t.accel !== 'tcg' && t.accel !== 'kvm') || typeof t.mac !== 'string'
    || !boot || typeof boot.kernel !== 'string' || typeof boot.initrd !== 'string' || typeof boot.cmdline !== 'string') {
    throw new QemuAgentConfigError(file, 'vmTemplate: needs runDir, memMiB, accel (tcg|kvm), mac and boot { kernel, initrd, cmdline }');
  }
  if (t.binary !== undefined && (typeof t.binary !== 'string' || !t.binary)) throw new QemuAgentConfigError(file, 'vmTemplate.binary: must be the path of a qemu-system-x86_64');
  let vms = raw.vms as Record<string, unknown> | undefined;
  const state = stateFileOf(file);
  if (fs.existsSync(state)) {
    try {
      vms = (JSON.parse(fs.readFileSync(state, 'utf8')) as { vms: Record<string, unknown> }).vms;
    } catch (e) {
      throw new QemuAgentConfigError(state, `cannot read it as JSON: ${(e as Error).message} (remove it to start from ${file})`);
    }
  }
  return {
    agentSocket: raw.agentSocket, prefix: raw.prefix,
    vms: { primary: vmRef(file, 'vms.primary', vms?.primary), backup: vms?.backup === null ? null : vmRef(file, 'vms.backup', vms?.backup) },
    vmTemplate: raw.vmTemplate as QemuVmTemplate,
    sync: syncModeOf(file, raw.sync),
  };
}

/**
 * Where the agent keeps which VMs hold the roles now: in systemd's state
 * directory when it runs as a unit with one (`$STATE_DIRECTORY`, e.g.
 * /var/lib/shadowvm/NAME: shadowvm-agent@.service has /etc read-only, so a
 * file next to the config could never be written there), else next to the
 * config (`FILE.state`).
 */
export function stateFileOf(configFile: string, env: NodeJS.ProcessEnv = process.env): string {
  // systemd may list several directories, separated by ':'; the first is the unit's own.
  const dir = env.STATE_DIRECTORY?.split(':')[0];
  return dir ? path.join(dir, `${path.basename(configFile)}.state`) : `${configFile}.state`;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** A QEMU this process did not start: QMP through its spare socket, life by its pid. */
export class AttachedVm implements AgentVm {
  readonly exited: Promise<void>;
  private gone = false;

  private constructor(readonly ref: VmRef, readonly qmp: QmpClient) {
    this.exited = new Promise((resolve) => {
      const check = () => {
        if (!pidAlive(ref.pid)) {
          this.gone = true;
          resolve();
          return;
        }
        setTimeout(check, 20).unref?.();
      };
      // QEMU closes its QMP sockets as it exits: that is the moment to look.
      qmp.once('close', check);
    });
  }

  static async attach(ref: VmRef, log: LogFn): Promise<AttachedVm> {
    if (!pidAlive(ref.pid)) throw new Error(`VM ${ref.name} (pid ${ref.pid}) is not running`);
    const qmp = await QmpClient.connect(ref.agentQmpSocket, { timeoutMs: 5000, retry: false, name: ref.name, log });
    return new AttachedVm(ref, qmp);
  }

  get name(): string { return this.ref.name; }
  get tap(): string { return this.ref.tap; }
  get pid(): number { return this.ref.pid; }
  get running(): boolean { return !this.gone && !this.qmp.closed; }

  async kill(): Promise<void> {
    try { process.kill(this.ref.pid, 'SIGKILL'); } catch { /* gone already */ }
    await this.exited;
  }
}

function refOf(vm: AgentVm | null): VmRef | null {
  if (!vm) return null;
  if (vm instanceof AttachedVm) return vm.ref;
  const q = vm as QemuProcess;
  return { name: q.name, pid: q.pid, tap: q.tap ?? '', agentQmpSocket: q.agentQmpSocket };
}

/**
 * The QEMU that COLO will run (every standby uses it), after checking that it
 * can: it exists, the probe (an idle SeaBIOS pair, a few on-demand
 * checkpoints; skipped with `probe: false`) says yes, and the primary runs
 * that very binary (both sides of COLO need the fixes).
 */
export async function coloQemuFor(c: QemuAgentConfig, o: { probe?: boolean; log?: LogFn } = {}): Promise<string> {
  const bin = c.vmTemplate.binary ?? findColoQemu();
  if (!bin) throw new ColoUnavailableError('no COLO-capable QEMU: give vmTemplate.binary, or build the patched one with make qemu-colo');
  if (!fs.existsSync(bin)) throw new ColoUnavailableError(`${bin} does not exist`);
  let exe: string | null = null;
  try { exe = fs.realpathSync(`/proc/${c.vms.primary.pid}/exe`); } catch { /* gone, or not ours to read: attach says so */ }
  if (exe !== null && exe !== fs.realpathSync(bin)) {
    throw new ColoUnavailableError(`the primary ${c.vms.primary.name} (pid ${c.vms.primary.pid}) runs ${exe}, not the COLO-capable ${bin}: start it with that QEMU`);
  }
  if (o.probe !== false) {
    const r = await probeColo({ qemu: bin, accel: c.vmTemplate.accel, budgetMs: 20_000 });
    o.log?.('info', 'qemu-agent-colo-probe', { qemu: bin, colo: r.colo, reason: r.reason, checkpointMs: r.checkpointMs, durationMs: r.durationMs });
    if (!r.colo) throw new ColoUnavailableError(`${bin} cannot do COLO checkpoints here (${r.reason}); make qemu-colo builds one that can`);
  }
  return bin;
}

/** Migration states in which a migration is still on the wire (QEMU's MigrationStatus). */
const MIGRATION_RUNNING = new Set(['setup', 'active', 'pre-switchover', 'device', 'wait-unplug', 'postcopy-active', 'postcopy-paused', 'postcopy-recover', 'cancelling']);

/**
 * Cancels a migration the primary is still sending (to a standby of an agent
 * that died) and waits until it has ended; true when there was one. A
 * migration that completes meanwhile leaves the primary in `postmigrate`,
 * which the caller resumes like a pause.
 */
export async function cancelLeftMigration(primary: { name: string; qmp: QmpClient }, log: LogFn, timeoutMs = 10_000): Promise<boolean> {
  const first = await primary.qmp.execute<{ status?: string }>('query-migrate');
  if (!first.status || !MIGRATION_RUNNING.has(first.status)) return false;
  if (first.status !== 'cancelling') await primary.qmp.execute('migrate_cancel');
  const end = Date.now() + timeoutMs;
  let now = first.status;
  for (;;) {
    now = (await primary.qmp.execute<{ status?: string }>('query-migrate')).status ?? 'none';
    if (!MIGRATION_RUNNING.has(now)) break;
    if (Date.now() > end) throw new Error(`the migration ${primary.name} was sending when the agent started is still ${now} ${timeoutMs} ms after migrate_cancel`);
    await new Promise((r) => setTimeout(r, 10));
  }
  log('warn', 'qemu-agent-cancelled-migration', { vm: primary.name, was: first.status, now, note: 'left on the wire, probably by an agent that died in the middle of a copy' });
  return true;
}

/** `<prefix>-a<agent pid>-<n>`: the name the agent gives its standbys (see the factory below). */
function standbyNameRe(prefix: string): RegExp {
  return new RegExp(`^${prefix}-a(\\d+)-\\d+$`);
}

/**
 * Kills the standbys that an agent now dead started and that hold no role
 * (neither primary nor backup in the config and state file): the incoming
 * VM of an interrupted copy, the one kept ready for the next. They are found
 * by their pid files in the run folder, and checked against /proc (the
 * process must still carry that name) before the kill; their taps and run
 * files are removed. Returns the names reaped.
 */
export function reapOrphanStandbys(c: QemuAgentConfig, log: LogFn, self: number = process.pid): string[] {
  const keep = new Set([c.vms.primary.name, c.vms.backup?.name].filter((n): n is string => !!n));
  const re = standbyNameRe(c.prefix);
  const reaped: string[] = [];
  let files: string[];
  try { files = fs.readdirSync(c.vmTemplate.runDir); } catch { return reaped; }
  for (const f of files) {
    if (!f.endsWith('.pid')) continue;
    const name = f.slice(0, -'.pid'.length);
    const m = re.exec(name);
    if (!m || keep.has(name)) continue;
    const agentPid = Number(m[1]);
    if (agentPid === self || pidAlive(agentPid)) continue;
    let pid = NaN;
    try { pid = Number(fs.readFileSync(path.join(c.vmTemplate.runDir, f), 'utf8').trim()); } catch { /* removed meanwhile: QEMU exited */ }
    let cmdline: string[] = [];
    try { cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0'); } catch { /* gone already */ }
    const alive = Number.isSafeInteger(pid) && pid > 0 && cmdline.includes(qemuNameArg(name));
    if (alive) { try { process.kill(pid, 'SIGKILL'); } catch { /* gone meanwhile */ } }
    const tap = /ifname=([^,]+)/.exec(cmdline.find((a) => a.includes('ifname=')) ?? '')?.[1];
    if (tap && fs.existsSync(`/sys/class/net/${tap}`)) runQuietly('ip', ['link', 'del', tap]);
    for (const g of files) if (g.startsWith(`${name}.`)) fs.rmSync(path.join(c.vmTemplate.runDir, g), { force: true });
    reaped.push(name);
    log('warn', 'qemu-agent-reaped-standby', { vm: name, pid, killed: alive, tap: tap ?? null, note: `started by agent ${agentPid}, which is gone; it held no role` });
  }
  // The taps of standbys that had exited on their own (a failed incoming migration ends QEMU): no process holds them, no carrier.
  const keepTaps = new Set([c.vms.primary.tap, c.vms.backup?.tap].filter((t): t is string => !!t));
  const tapRe = new RegExp(`^${c.prefix}a\\d+$`);
  let links: string[] = [];
  try { links = fs.readdirSync('/sys/class/net'); } catch { /* no sysfs: nothing to do */ }
  for (const l of links) {
    if (!tapRe.test(l) || keepTaps.has(l)) continue;
    let carrier = '';
    try { carrier = fs.readFileSync(`/sys/class/net/${l}/carrier`, 'utf8').trim(); } catch { /* down: no carrier file to read */ }
    if (carrier === '1' || !fs.existsSync(`/sys/class/net/${l}/tun_flags`)) continue;
    runQuietly('ip', ['link', 'del', l]);
    log('warn', 'qemu-agent-reaped-tap', { tap: l, note: 'a standby tap nobody holds, left by an agent that is gone' });
  }
  return reaped;
}

/** Attaches to the VMs of `configFile` and runs the agent until `stop()`. */
export async function runQemuAgentFromConfig(configFile: string, options: { log?: LogFn; name?: string; sync?: string; probeColo?: boolean } = {}): Promise<QemuAgent> {
  const log = options.log ?? noLog;
  const c = readQemuAgentConfig(configFile);
  const resolved = await resolveSync(c, syncModeOf(configFile, c.sync, options.sync), { probe: options.probeColo, log });
  log('info', 'qemu-agent-sync', { sync: resolved.sync, why: resolved.why, ...(resolved.binary ? { qemu: resolved.binary } : {}) });
  if (resolved.binary) c.vmTemplate = { ...c.vmTemplate, binary: resolved.binary };
  const sync = resolved.sync;
  let primary: AttachedVm;
  try {
    primary = await AttachedVm.attach(c.vms.primary, log);
  } catch (e) {
    throw new QemuAgentConfigError(configFile, `the primary cannot be reached: ${(e as Error).message}`);
  }
  // A primary paused by an agent that died in the middle of a copy: it must serve again.
  let status = await primary.qmp.execute<{ status: string; running: boolean }>('query-status');
  if (status.status !== 'colo' && await cancelLeftMigration(primary, log)) {
    status = await primary.qmp.execute<{ status: string; running: boolean }>('query-status');
  }
  reapOrphanStandbys(c, log);
  if (status.status === 'colo') {
    // Stopped in the middle of a COLO checkpoint by an agent that died: end COLO, and it runs again.
    await primary.qmp.execute('x-colo-lost-heartbeat');
    log('warn', 'qemu-agent-resumed-primary', { vm: primary.name, was: status.status, note: 'left in the middle of a COLO checkpoint, probably by an agent that died' });
  } else if (!status.running && ['paused', 'postmigrate', 'finish-migrate'].includes(status.status)) {
    await primary.qmp.execute('cont');
    log('warn', 'qemu-agent-resumed-primary', { vm: primary.name, was: status.status, note: 'left paused, probably by an agent that died in the middle of a copy' });
  }
  // A backup that is gone is left to the bridge: it asks for a new one (reprotect) once it knows.
  let backup: AgentVm | null = null;
  if (c.vms.backup) {
    try {
      backup = await AttachedVm.attach(c.vms.backup, log);
    } catch (e) {
      log('warn', 'qemu-agent-backup-unreachable', { vm: c.vms.backup.name, error: (e as Error).message, note: 'reported down; the bridge will ask for a new backup' });
    }
  }
  let standbys = 0;
  const usedTaps = new Set(fs.readdirSync('/sys/class/net'));
  const agent = runQemuAgent({
    socketPath: c.agentSocket,
    name: options.name ?? `qemu-agent-${c.prefix}`,
    primary,
    backup,
    log,
    sync,
    factory: {
      standby: async () => {
        let tap: string;
        do tap = `${c.prefix}a${++standbys}`; while (usedTaps.has(tap) || fs.existsSync(`/sys/class/net/${tap}`));
        usedTaps.add(tap);
        createTap(tap);
        try {
          return await QemuProcess.launch({
            ...c.vmTemplate, name: `${c.prefix}-a${process.pid}-${standbys}`, tap, incoming: true, log,
            ...(sync === 'colo' ? { objects: [coloGateObject()] } : {}),
          });
        } catch (e) {
          runQuietly('ip', ['link', 'del', tap]);
          throw e;
        }
      },
      copy: (source, target, leaveTargetPaused) => cloneInto(source as QemuProcess, target as QemuProcess, { log, leaveTargetPaused }),
      enterColo: (source, target) => enterColo(source.qmp, target.qmp, `unix:${path.join(c.vmTemplate.runDir, `${(target as QemuProcess).name}.colo`)}`),
      retire: async (vm) => {
        if (vm.tap) runQuietly('ip', ['link', 'del', vm.tap]);
      },
    },
    onRoles: (vms) => {
      const p = refOf(vms.primary);
      const b = refOf(vms.backup);
      if (!p) return;
      const state = stateFileOf(configFile);
      fs.writeFileSync(`${state}.tmp`, `${JSON.stringify({ vms: { primary: p, backup: b } }, null, 2)}\n`);
      fs.renameSync(`${state}.tmp`, state);
    },
  });
  return agent;
}
