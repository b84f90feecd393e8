/**
 * Running setup and teardown plans on the host.
 *
 * In:  SetupOptions or a pair name, a log callback (one line per call).
 * Out: the changed host (or, with dryRun, the exact commands printed and
 *      nothing changed). Setup is all or nothing: when a step fails, the
 *      steps already done are undone in reverse order before it throws.
 */
import { LabCommandError, run } from '../lab/exec';
import { SetupPermissionError, SetupStepError } from './errors';
import {
  CommandRunner, HostSnapshot, LinkState, SnapshotRequest, disableIpv6Key, processHasNetAdmin, readHostSnapshot,
} from './host-state';
import { PairNames, createdInterfaceNames, pairNames } from './names';
import {
  PairInterfaces, SavedUplinkState, SetupOptions, SetupPlan, Step, TeardownPlan, computeSetupPlan, computeTeardownPlan, uplinkRestoreSteps,
} from './plan';
import { DEFAULT_RUNTIME_DIR, readSavedUplink, removeSavedUplink, savedUplinkPath, writeSavedUplink } from './saved-uplink';
import { UserFacingError } from '../errors';

export type SetupLog = (line: string) => void;

export interface ApplyOptions {
  /** Print the commands (as a shell script: notes and reasons as comments) instead of running them. */
  readonly dryRun?: boolean;
  /** Runs every command, reads included; `lab/exec`'s `run` by default. */
  readonly runner?: CommandRunner;
  /** Refuse before any step when this process lacks CAP_NET_ADMIN (default true). */
  readonly checkPrivileges?: boolean;
  /** Where setup saves what it changed on a user's uplink, per pair (default /run/shadowvm). */
  readonly runtimeDir?: string;
}

export interface SetupResult {
  readonly interfaces: PairInterfaces;
  readonly plan: SetupPlan;
  /** False when the pair was set up already (or on a dry run). */
  readonly changed: boolean;
}

export interface TeardownResult {
  readonly plan: TeardownPlan;
  readonly changed: boolean;
}

/** A teardown step failed and the interface is still there. */
export class TeardownIncompleteError extends UserFacingError {
  constructor(readonly failures: readonly string[], readonly leftovers: readonly string[]) {
    super(`teardown left ${leftovers.join(', ')} behind: ${failures.join('; ')}`);
    this.name = 'TeardownIncompleteError';
  }
}

const SAFE_WORD = /^[A-Za-z0-9_@%+=:,./-]+$/;

/** Quotes one argument for a POSIX shell. */
export function shellQuote(arg: string): string {
  return SAFE_WORD.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`;
}

export function formatCommand(argv: readonly string[]): string {
  return argv.map(shellQuote).join(' ');
}

function failureDetail(err: unknown): string {
  if (err instanceof LabCommandError) {
    return err.stderr.trim().split('\n').filter(Boolean).join(' / ') || `exit ${err.status ?? 'signal'}`;
  }
  return err instanceof Error ? err.message : String(err);
}

const PERMISSION_DENIED = /Operation not permitted|Permission denied/i;

/** Turns a failed command into the error the user should see. */
export function classifyFailure(argv: readonly string[], err: unknown, undone = 0, undoFailures: readonly string[] = []): Error {
  const detail = failureDetail(err);
  if (PERMISSION_DENIED.test(detail)) return new SetupPermissionError(argv, detail);
  return new SetupStepError(argv, detail, undone, undoFailures);
}

function runStep(runner: CommandRunner, argv: readonly string[]): void {
  runner(argv[0], argv.slice(1));
}

/**
 * Runs the steps in order. When one fails, undoes the ones already done in
 * reverse order (steps without `undo` need none: they touch an interface
 * whose creation is undone), then throws SetupPermissionError or
 * SetupStepError.
 */
export function executeSetupSteps(steps: readonly Step[], log: SetupLog, runner: CommandRunner): void {
  const done: Step[] = [];
  for (const step of steps) {
    log(step.why);
    try {
      runStep(runner, step.argv);
    } catch (err) {
      const undoFailures: string[] = [];
      let undone = 0;
      const toUndo = done.filter((s) => s.undo !== undefined).reverse();
      if (toUndo.length > 0) log(`${formatCommand(step.argv)} failed; undoing ${toUndo.length} step(s)`);
      for (const s of toUndo) {
        const undo = s.undo as readonly string[];
        log(`undo: ${formatCommand(undo)}`);
        try {
          runStep(runner, undo);
          undone++;
        } catch (undoErr) {
          undoFailures.push(`${formatCommand(undo)}: ${failureDetail(undoErr)}`);
        }
      }
      throw classifyFailure(step.argv, err, undone, undoFailures);
    }
    done.push(step);
  }
}

function snapshotRequest(opts: SetupOptions, names: PairNames): SnapshotRequest {
  const interfaces = opts.uplink !== undefined
    ? [opts.uplink, names.primaryTap, names.backupTap]
    : createdInterfaceNames(names);
  return { interfaces, offloads: opts.io === 'cap', bridge: opts.bridge, tapOwner: opts.tapOwner };
}

/** Reads the host and computes what setup would change (read-only; needs no privileges). */
export function planSetup(opts: SetupOptions, apply: ApplyOptions = {}): SetupPlan {
  const names = pairNames(opts.name);
  const host = readHostSnapshot(snapshotRequest(opts, names), apply.runner ?? run);
  return computeSetupPlan(opts, host);
}

/** Reads the host and what setup saved, and computes what teardown would remove and restore (read-only). */
export function planTeardown(name: string, apply: ApplyOptions = {}): TeardownPlan {
  const names = pairNames(name);
  const saved = readSavedUplink(savedUplinkPath(names.name, apply.runtimeDir));
  const interfaces = [...createdInterfaceNames(names), ...(saved ? [saved.uplink] : [])];
  const host = readHostSnapshot({ interfaces, offloads: false }, apply.runner ?? run);
  return computeTeardownPlan(name, host, saved);
}

/**
 * Adds the restore steps of a setup that changed the user's uplink to what
 * earlier setups saved (newest first: teardown undoes the last change
 * first), so that teardown leaves the uplink as the first setup found it.
 */
function saveUplinkChanges(plan: SetupPlan, uplink: string, path: string, log: SetupLog): void {
  const restore = uplinkRestoreSteps(plan, uplink);
  if (restore.length === 0) return;
  let earlier: SavedUplinkState | undefined;
  try {
    earlier = readSavedUplink(path);
  } catch {
    earlier = undefined; // Unreadable: replaced by what this setup knows.
  }
  const state: SavedUplinkState = { uplink, restore: [...restore, ...(earlier?.uplink === uplink ? earlier.restore : [])] };
  try {
    writeSavedUplink(path, state);
    log(`${uplink}: saved what setup changed on it to ${path}; teardown restores it`);
  } catch (e) {
    log(`warning: could not save ${uplink}'s previous settings to ${path} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}); teardown will not restore them: ${restore.map((s) => formatCommand(s.argv)).join('; ')}`);
  }
}

function printDryRun(plan: { steps: readonly Step[]; notes: readonly string[] }, log: SetupLog): void {
  for (const note of plan.notes) log(`# note: ${note}`);
  for (const step of plan.steps) {
    log(`# ${step.why}`);
    log(formatCommand(step.argv));
  }
}

function describePair(interfaces: PairInterfaces, opts: SetupOptions): string {
  const uplink = opts.bridge !== undefined ? `${interfaces.uplink} (veth into ${opts.bridge})` : interfaces.uplink;
  return `uplink ${uplink}, primary ${interfaces.primary}, backup ${interfaces.backup}`;
}

function assertPrivileged(apply: ApplyOptions): void {
  if (apply.checkPrivileges !== false && !processHasNetAdmin()) throw new SetupPermissionError();
}

/**
 * `shadowvm setup`: computes the plan from the host's state and runs it,
 * logging each step's reason. Idempotent: a second run changes nothing and
 * logs "already set up". Throws SetupConfigError (nothing changed),
 * SetupPermissionError or SetupStepError (everything done undone).
 */
export function applySetup(opts: SetupOptions, log: SetupLog, apply: ApplyOptions = {}): SetupResult {
  const runner = apply.runner ?? run;
  const plan = planSetup(opts, { runner });
  if (apply.dryRun) {
    if (plan.steps.length === 0) log(`# ${plan.name}: already set up (${describePair(plan.interfaces, opts)})`);
    printDryRun(plan, log);
    return { interfaces: plan.interfaces, plan, changed: false };
  }
  for (const note of plan.notes) log(`note: ${note}`);
  if (plan.steps.length === 0) {
    log(`${plan.name}: already set up (${describePair(plan.interfaces, opts)})`);
    return { interfaces: plan.interfaces, plan, changed: false };
  }
  assertPrivileged(apply);
  executeSetupSteps(plan.steps, log, runner);
  if (opts.uplink !== undefined) saveUplinkChanges(plan, opts.uplink, savedUplinkPath(plan.name, apply.runtimeDir), log);
  log(`${plan.name}: set up (${describePair(plan.interfaces, opts)}; ${plan.steps.length} change(s))`);
  return { interfaces: plan.interfaces, plan, changed: true };
}

function oursStillPresent(names: PairNames, runner: CommandRunner): string[] {
  const host = readHostSnapshot({ interfaces: [], offloads: false }, runner);
  return createdInterfaceNames(names).filter((ifname) => host.links.get(ifname)?.alias === names.alias);
}

/**
 * `shadowvm teardown`: removes the taps and the veth pair that carry this
 * pair's alias, and nothing else, and puts a user-given uplink back as setup
 * found it (from the state setup saved under the runtime folder).
 * Idempotent; needs no running shadowvm process. Runs every step even when
 * one fails, then throws TeardownIncompleteError if something of ours is
 * still there or the uplink could not be restored (its saved state is kept).
 */
export function applyTeardown(name: string, log: SetupLog, apply: ApplyOptions = {}): TeardownResult {
  const runner = apply.runner ?? run;
  const names = pairNames(name);
  const plan = planTeardown(name, { runner, runtimeDir: apply.runtimeDir });
  if (apply.dryRun) {
    if (plan.steps.length === 0) log(`# ${name}: nothing to tear down`);
    printDryRun(plan, log);
    return { plan, changed: false };
  }
  for (const note of plan.notes) log(`note: ${note}`);
  if (plan.steps.length === 0) {
    // A saved state whose uplink is gone has nothing left to restore.
    removeSavedUplink(savedUplinkPath(names.name, apply.runtimeDir));
    log(`${name}: nothing to tear down`);
    return { plan, changed: false };
  }
  assertPrivileged(apply);
  const failures: string[] = [];
  const restoreFailures: string[] = [];
  for (const step of plan.steps) {
    log(step.why);
    try {
      runStep(runner, step.argv);
    } catch (err) {
      const failure = classifyFailure(step.argv, err);
      if (failure instanceof SetupPermissionError) throw failure;
      failures.push(failure.message);
      if (step.undo === undefined && step.ifname !== undefined && !createdInterfaceNames(names).includes(step.ifname)) restoreFailures.push(failure.message);
    }
  }
  const savedPath = savedUplinkPath(names.name, apply.runtimeDir);
  const leftovers = failures.length > 0 ? oursStillPresent(names, runner) : [];
  if (restoreFailures.length > 0) {
    throw new TeardownIncompleteError(failures, [...leftovers, `settings of the uplink (kept in ${savedPath})`]);
  }
  removeSavedUplink(savedPath);
  // A veth end vanishes with its peer; a failure on something already gone is no failure.
  if (leftovers.length > 0) throw new TeardownIncompleteError(failures, leftovers);
  log(`${name}: torn down`);
  return { plan, changed: true };
}

export type InterfaceRole = 'primary' | 'backup' | 'uplink' | 'bridge-port';

export interface InterfaceStatus {
  readonly role: InterfaceRole;
  readonly ifname: string;
  readonly exists: boolean;
  /** Carries this pair's alias (setup created it). */
  readonly ours: boolean;
  readonly kind?: string;
  readonly up: boolean;
  readonly mtu?: number;
  readonly addresses: readonly string[];
  readonly master?: string;
  readonly promisc: boolean;
  /** Undefined when the kernel has no IPv6 or the interface does not exist. */
  readonly ipv6Disabled?: boolean;
}

export interface SetupStatus {
  readonly name: string;
  /**
   * `absent`: nothing of this pair exists; `complete`: both taps (and the veth
   * uplink, when there is one) are ours and up (and, with options, nothing
   * drifted); `partial`: anything else.
   */
  readonly state: 'absent' | 'partial' | 'complete';
  readonly interfaces: readonly InterfaceStatus[];
  /** The names `shadowvm run` should use; the uplink is known when it is our veth or given in the options. */
  readonly pair?: PairInterfaces;
  /** With options: the steps setup would run now (empty when nothing drifted). */
  readonly drift?: readonly Step[];
}

function interfaceStatus(role: InterfaceRole, ifname: string, host: HostSnapshot, names: PairNames): InterfaceStatus {
  const link: LinkState | undefined = host.links.get(ifname);
  const disabled = host.sysctls.get(disableIpv6Key(ifname));
  return {
    role,
    ifname,
    exists: link !== undefined,
    ours: link?.alias === names.alias,
    kind: link?.tap ? 'tap' : link?.kind,
    up: link?.flags.includes('UP') ?? false,
    mtu: link?.mtu,
    addresses: (host.addresses.get(ifname) ?? []).map((a) => `${a.local}/${a.prefixlen}`),
    master: link?.master,
    promisc: link?.flags.includes('PROMISC') ?? false,
    ipv6Disabled: link && host.ipv6 && disabled !== undefined ? disabled === '1' : undefined,
  };
}

/**
 * What exists of this pair. Without options it reports the interfaces setup
 * creates; with the options setup was run with, it also reports the uplink
 * and what drifted.
 */
export function setupStatus(name: string, opts?: SetupOptions, apply: ApplyOptions = {}): SetupStatus {
  const names = pairNames(name);
  const runner = apply.runner ?? run;
  if (opts && opts.name !== name) throw new Error(`setupStatus: options are for ${opts.name}, not ${name}`);
  const request = opts ? snapshotRequest(opts, names) : { interfaces: createdInterfaceNames(names), offloads: false };
  const host = readHostSnapshot(request, runner);
  const interfaces: InterfaceStatus[] = [
    interfaceStatus('primary', names.primaryTap, host, names),
    interfaceStatus('backup', names.backupTap, host, names),
  ];
  const vethPresent = host.links.has(names.vethUplink) || host.links.has(names.vethBridgePort);
  if (opts?.uplink !== undefined) {
    interfaces.push(interfaceStatus('uplink', opts.uplink, host, names));
  } else if (opts?.bridge !== undefined || vethPresent) {
    interfaces.push(interfaceStatus('uplink', names.vethUplink, host, names));
    interfaces.push(interfaceStatus('bridge-port', names.vethBridgePort, host, names));
  }
  const created = interfaces.filter((i) => i.role !== 'uplink' || opts?.uplink === undefined);
  let drift: Step[] | undefined;
  if (opts) {
    try {
      drift = [...computeSetupPlan(opts, host).steps];
    } catch {
      drift = undefined;
    }
  }
  const ourCount = created.filter((i) => i.ours).length;
  const allGood = created.every((i) => i.ours && i.up)
    && (opts?.uplink === undefined || interfaces.some((i) => i.role === 'uplink' && i.exists && i.up))
    && (opts === undefined || (drift !== undefined && drift.length === 0));
  const state = ourCount === 0 ? 'absent' : allGood ? 'complete' : 'partial';
  const uplink = opts?.uplink ?? (vethPresent ? names.vethUplink : undefined);
  return {
    name,
    state,
    interfaces,
    pair: uplink !== undefined ? { uplink, primary: names.primaryTap, backup: names.backupTap } : undefined,
    drift,
  };
}
