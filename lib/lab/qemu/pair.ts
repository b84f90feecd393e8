/**
 * The QEMU lab: two live VMs with the same memory, shadowvm between them and
 * a client namespace.
 *
 *   <p>-client ns ── <p>c ─┐                  ┌─ tap <p>p ── QEMU (the first VM, booted)
 *   (curl, lftp)           └── shadowvm ──────┤
 *                              │              └─ tap <p>b ── QEMU (a copy of it: -incoming
 *                              │ agent socket                  defer, then migrated into)
 *                              └──────────────── sync agent (a factory: the lab agent by default)
 *
 * The first VM boots from the cached guest image (guest.ts); the second is
 * made by `cloneInto`: the first is paused, its memory and device state
 * migrated over a unix socket into a QEMU started with `-incoming defer`
 * (same MAC, its own tap), and both resumed. Both VMs then answer alike.
 *
 * Every VM runs under the lab's run directory (QMP sockets, serial logs,
 * pidfiles), so `teardownLab(prefix)` finds them even after a crash.
 */
import { UserFacingError } from '../../errors';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LabAgent, runLabAgent } from '../../agents/lab-agent';
import { Bridge, LinkEventSource } from '../../bridge';
import { IoBackend, openOneLater, openPorts } from '../../cli/ports';
import { LogFn, noLog } from '../../control/logger';
import { LinkWatcher } from '../../io/link-watch';
import { PacketPort } from '../../io/port';
import { DEFAULT_PIPELINE_CONFIG, PipelineConfig, makePipelineConfig } from '../../pipeline/config';
import { AccelChoice, chooseAccel } from '../../qemu/accel';
import { Accel, QemuLaunchOptions, QemuProcess } from '../../qemu/process';
import { startLoadedVm } from '../../qemu/migration';
import { waitFor } from '../bridged';
import { run, runQuietly } from '../exec';
import {
  LAB_CLIENT_IPV4, LAB_CLIENT_MAC, LAB_DEFAULT_PREFIX, LAB_VM_IPV4, LAB_VM_IPV6, LAB_VM_MAC, LabNode,
  describeLab, labNames, setUpNode, teardownLab, waitUntilQuiet,
} from '../netns';
import { GuestImage, buildGuest, guestCacheRoot, guestCmdline } from './guest';
import { GUEST_PROBE_MARKER, GUEST_READY_MARKER } from './guest-files';

export type QemuLabMem = 128 | 512;
export const QEMU_LAB_MEM_SIZES: readonly QemuLabMem[] = [128, 512];

export class QemuLabError extends UserFacingError {
  constructor(message: string) {
    super(message);
    this.name = 'QemuLabError';
  }
}

/** What `cloneInto` measured (from the source's query-migrate and our own clock). */
export interface CloneReport {
  /** Source paused → both running again (the pause the source's guest sees, plus the `cont` round trips). */
  ms: number;
  /** QEMU's total-time of the migration. */
  migrateMs: number;
  /** QEMU's downtime figure. */
  downtimeMs: number;
  /** RAM bytes sent. */
  bytes: number;
  /** Pages sent in full (`normal`) and as zero pages (`duplicate`). */
  pages: number;
  zeroPages: number;
  /** Dirty-bitmap passes: 1 for a stop-and-copy of a paused source. */
  passes: number;
}

export class CloneError extends UserFacingError {
  constructor(readonly source: string, readonly target: string, message: string) {
    super(`copy of VM ${source} into ${target} failed: ${message}`);
    this.name = 'CloneError';
  }
}

interface MigrateStatus {
  status: string;
  'total-time'?: number;
  downtime?: number;
  'error-desc'?: string;
  ram?: { transferred: number; normal: number; duplicate: number; 'dirty-sync-count': number };
}

/**
 * The QEMU lab's timing under TCG. Emulated guests on a shared CPU answer up
 * to several hundred ms apart and stall for tens of ms: the defaults (100 ms
 * unmatched age; 20 ms silence + 10 ms probe) would call that a timeout, or
 * promote the backup of a primary that is only slow (seen here).
 */
export const TCG_MAX_UNMATCHED_AGE_MS = 1000;
export const TCG_FAILOVER_SILENCE_MS = 1000;
export const TCG_FAILOVER_PROBE_TIMEOUT_MS = 500;

/** The pipeline settings of the QEMU lab: `resync: 'copy'`, TCG timing when TCG runs, then the caller's. */
export function qemuLabConfig(accel: Accel, config: Partial<PipelineConfig> = {}): Partial<PipelineConfig> {
  const tcg = accel === 'tcg';
  return {
    resync: 'copy',
    ...(tcg ? { maxUnmatchedAgeMs: TCG_MAX_UNMATCHED_AGE_MS } : {}),
    ...config,
    failover: {
      ...DEFAULT_PIPELINE_CONFIG.failover,
      ...(tcg ? { silenceMs: TCG_FAILOVER_SILENCE_MS, probeTimeoutMs: TCG_FAILOVER_PROBE_TIMEOUT_MS } : {}),
      ...config.failover,
    },
  };
}

const CLONE_MAX_BANDWIDTH = 10 * 1024 * 1024 * 1024;

/**
 * Stop-and-copy: pauses `source` (if it runs), migrates its whole state into
 * `target` (a QEMU started with `incoming: true`, same memory size and
 * devices), then starts `target` and resumes `source`. Both run afterwards
 * with the same memory. On failure `source` is resumed and `target` left as
 * it is (the caller kills it). A paused source stays paused.
 */
export interface CloneOptions {
  /** Give up (and resume the source) after this long; default 30 s. */
  timeoutMs?: number;
  /**
   * Migration channels: 1 (default) is plain migration; 2 or more turns on
   * multifd on both sides (MACHINE-NOTES: 2 channels repeat in 36–41 ms for
   * 128 MiB locally, against 53–66 ms for one).
   */
  channels?: number;
  /**
   * Let the copy announce itself after the migration (QEMU's RARP rounds and
   * the guest's gratuitous ARP/NA via VIRTIO_NET_F_GUEST_ANNOUNCE). Default
   * false: the bridge is the only switch here, and captures stay quiet.
   */
  announce?: boolean;
  /**
   * Leave `target` paused once it has loaded the copy (the caller starts it,
   * e.g. once a bridge listens on its tap). Default false: both run.
   */
  leaveTargetPaused?: boolean;
  log?: LogFn;
}

export async function cloneInto(source: QemuProcess, target: QemuProcess, options: CloneOptions = {}): Promise<CloneReport> {
  const log = options.log ?? noLog;
  const timeoutMs = options.timeoutMs ?? 30_000;
  const channels = options.channels ?? 1;
  const uri = `unix:${path.join(path.dirname(target.qmpSocket), `${target.name}.migrate`)}`;
  const fail = (m: string) => new CloneError(source.name, target.name, m);
  // Capabilities must agree on both sides and be set before migrate-incoming.
  const multifd = [{ capability: 'multifd', state: channels > 1 }];
  await target.qmp.execute('migrate-set-capabilities', { capabilities: multifd });
  await source.qmp.execute('migrate-set-capabilities', { capabilities: multifd });
  if (channels > 1) {
    await target.qmp.execute('migrate-set-parameters', { 'multifd-channels': channels });
    await source.qmp.execute('migrate-set-parameters', { 'multifd-channels': channels });
  }
  if (!options.announce) await target.qmp.execute('migrate-set-parameters', { 'announce-rounds': 0 });
  await target.qmp.execute('migrate-incoming', { uri });
  await source.qmp.execute('migrate-set-parameters', { 'max-bandwidth': CLONE_MAX_BANDWIDTH });
  const before = await source.qmp.execute<{ status: string; running: boolean }>('query-status');
  const started = Date.now();
  if (before.running) await source.qmp.execute('stop');
  let resumed = !before.running;
  const resumeSource = async () => {
    if (!resumed) {
      resumed = true;
      // postmigrate (or a failed migration) → running; QMP `cont` works in both.
      await source.qmp.execute('cont');
    }
  };
  try {
    await source.qmp.execute('migrate', { uri });
    let status: MigrateStatus;
    for (;;) {
      status = await source.qmp.execute<MigrateStatus>('query-migrate');
      if (status.status === 'completed') break;
      if (status.status === 'failed' || status.status === 'cancelled') throw fail(`migration ${status.status}: ${status['error-desc'] ?? 'no reason given'}`);
      if (Date.now() - started > timeoutMs) {
        await source.qmp.execute('migrate_cancel').catch(() => {});
        throw fail(`migration still ${status.status} after ${timeoutMs} ms`);
      }
      await new Promise((r) => setTimeout(r, 2));
    }
    // The destination finishes loading a moment after the source says completed.
    if (options.leaveTargetPaused) await waitIncomingDone(target, timeoutMs, started);
    else await startLoadedVm(target.qmp, timeoutMs);
    await resumeSource();
    const ram = status.ram ?? { transferred: 0, normal: 0, duplicate: 0, 'dirty-sync-count': 0 };
    const report: CloneReport = {
      ms: Date.now() - started,
      migrateMs: status['total-time'] ?? 0,
      downtimeMs: status.downtime ?? 0,
      bytes: ram.transferred,
      pages: ram.normal,
      zeroPages: ram.duplicate,
      passes: ram['dirty-sync-count'],
    };
    log('info', 'vm-cloned', { source: source.name, target: target.name, ...report });
    return report;
  } catch (e) {
    await resumeSource().catch((err: Error) => log('error', 'clone-resume-failed', { source: source.name, error: err.message }));
    if (e instanceof CloneError) throw e;
    throw fail((e as Error).message);
  }
}

/** Waits until an incoming migration has loaded everything (the target is paused, no longer in `inmigrate`). */
async function waitIncomingDone(target: QemuProcess, timeoutMs: number, started: number): Promise<void> {
  for (;;) {
    const st = await target.qmp.execute<{ status: string }>('query-status');
    if (st.status !== 'inmigrate') return;
    if (Date.now() - started > timeoutMs) throw new CloneError('source', target.name, `${target.name} still loading after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** What an agent factory gets: enough to speak to the bridge and to both VMs. */
export interface QemuLabAgentContext {
  /** The bridge's agent socket. */
  agentSocket: string;
  /** Sent in hello. */
  name: string;
  lab: QemuLab;
  log: LogFn;
}

/** A running sync agent, as the lab needs it: stoppable. */
export interface QemuLabAgent {
  stop(): Promise<void>;
}

export type QemuLabAgentFactory = (ctx: QemuLabAgentContext) => QemuLabAgent | Promise<QemuLabAgent>;

/** The default agent: the lab agent, which answers checkpoints without copying anything. */
export const answeringAgent: QemuLabAgentFactory = (ctx) => runLabAgent({
  socketPath: ctx.agentSocket, name: ctx.name, delayMs: 0, reconnectInitialMs: 20, log: ctx.log,
}) as LabAgent;

export interface QemuLabOptions {
  /** Name prefix (as the netns lab's); default `svm`. */
  prefix?: string;
  /** Guest RAM; default 128. */
  memMiB?: QemuLabMem;
  io?: IoBackend;
  /** Pipeline settings; `resync` defaults to 'copy' (a checkpoint copies real state). */
  config?: Partial<PipelineConfig>;
  /** The sync agent; default `answeringAgent` (no state moves). */
  agent?: QemuLabAgentFactory;
  /** Carrier events for the taps; default: an own LinkWatcher; 'none': none. */
  links?: LinkEventSource | 'none';
  /** Give the guests IPv6 (fd77::2/64) too; default off (the guest then asks for the client's MAC by ND). */
  ipv6?: boolean;
  /** vsftpd's passive ports in the guests (default: a 10-port range, so the replicas' 227 replies differ). */
  ftpPassivePorts?: { min: number; max: number };
  /** Migration channels of the copy that makes the second VM (see CloneOptions.channels). */
  cloneChannels?: number;
  /** Boot the bzImage instead of the PVH vmlinux. */
  bootBzImage?: boolean;
  /** The QEMU every VM of the lab runs; default the one on PATH. COLO checkpoints (sync `colo`) need the patched build: `findColoQemu()`. */
  qemuBinary?: string;
  /** Guest cache root (default $SHADOWVM_GUEST_CACHE or /var/cache/shadowvm/guest). */
  guestCacheDir?: string;
  /** How long the first VM may take to boot; default 90 s (TCG on a shared CPU). */
  bootTimeoutMs?: number;
  log?: LogFn;
}

export interface QemuLabVmOptions {
  /** An existing tap; default: a fresh one, `<prefix>s<N>`. */
  tap?: string;
  /** Wait for an incoming migration (default true: a standby for `cloneInto`). */
  incoming?: boolean;
  /** Extra `-object`s (e.g. the COLO gate, lib/qemu/colo.ts). */
  objects?: string[];
}

export interface QemuLab {
  readonly prefix: string;
  readonly runDir: string;
  readonly memMiB: QemuLabMem;
  readonly accel: AccelChoice;
  readonly guest: GuestImage;
  /** The client namespace and its veth (host end `<prefix>c` is the bridge's uplink). */
  readonly client: LabNode;
  readonly serviceIpv4: string;
  /** The service's IPv6 address, when the lab was started with `ipv6: true`. */
  readonly serviceIpv6: string | null;
  readonly serviceMac: string;
  readonly taps: { readonly primary: string; readonly backup: string };
  /** The VM behind the primary tap and the one behind the backup tap, as started. */
  readonly vms: { primary: QemuProcess; backup: QemuProcess };
  readonly bridge: Bridge;
  readonly ports: { uplink: PacketPort; primary: PacketPort; backup: PacketPort };
  readonly agent: QemuLabAgent;
  readonly agentSocket: string;
  readonly controlSocket: string;
  /** First VM: QEMU start → ready marker on its console. */
  readonly bootMs: number;
  /** The copy that made the second VM. */
  readonly clone: CloneReport;
  /** What every VM of this lab is launched with, apart from its name, tap and `incoming` (for an agent that launches its own). */
  readonly vmTemplate: QemuVmTemplate;
  /** `<runDir>/lab.json`: `describeQemuLab` as written when the lab came up (for an agent in another process). */
  readonly descriptionFile: string;
  /** Starts another VM of this lab (same guest, memory, MAC; a fresh tap unless given), by default waiting for a migration. */
  launchVm(options?: QemuLabVmOptions): Promise<QemuProcess>;
  /** Stops agent and bridge, kills every VM, removes taps, namespace and run directory. Idempotent. */
  stop(): Promise<void>;
}

export type QemuVmTemplate = Omit<QemuLaunchOptions, 'name' | 'tap' | 'incoming' | 'log' | 'qmpTimeoutMs'> & { mac: string };

/** The lab as JSON: paths, addresses and VMs, for a sync agent that runs in another process. */
export function describeQemuLab(lab: QemuLab): Record<string, unknown> {
  const vm = (v: QemuProcess) => ({
    name: v.name, pid: v.pid, tap: v.tap, running: v.running,
    qmpSocket: v.qmpSocket, agentQmpSocket: v.agentQmpSocket, consoleSocket: v.consoleSocket, serialLog: v.serialLog,
  });
  return {
    prefix: lab.prefix, runDir: lab.runDir, memMiB: lab.memMiB, accel: lab.accel.accel,
    service: { ipv4: lab.serviceIpv4, ipv6: lab.serviceIpv6, mac: lab.serviceMac },
    client: { netns: lab.client.netns, hostIf: lab.client.hostIf },
    taps: lab.taps, agentSocket: lab.agentSocket, controlSocket: lab.controlSocket,
    vms: { primary: vm(lab.vms.primary), backup: vm(lab.vms.backup) },
    vmTemplate: lab.vmTemplate,
  };
}

/** A tap for a VM, ready to be a bridge port (no IPv6, no forwarding, no GRO, up). */
export function createTap(name: string): void {
  run('ip', ['tuntap', 'add', 'dev', name, 'mode', 'tap']);
  // A bridge port, not a host interface: no IPv6 (no MLD from the host), no forwarding, no GRO.
  run('sysctl', ['-qw', `net.ipv6.conf.${name}.disable_ipv6=1`]);
  run('sysctl', ['-qw', `net.ipv4.conf.${name}.forwarding=0`]);
  runQuietly('ethtool', ['-K', name, 'gro', 'off']);
  run('ip', ['link', 'set', name, 'up']);
}

/**
 * Builds the QEMU lab. Leftovers of a lab with the same prefix are removed
 * first; on failure everything built so far is torn down and the error
 * rethrown.
 */
export async function startQemuLab(options: QemuLabOptions = {}): Promise<QemuLab> {
  const log = options.log ?? noLog;
  const prefix = options.prefix ?? LAB_DEFAULT_PREFIX;
  const memMiB = options.memMiB ?? 128;
  if (!QEMU_LAB_MEM_SIZES.includes(memMiB)) throw new QemuLabError(`QEMU lab memory must be one of ${QEMU_LAB_MEM_SIZES.join(', ')} MiB, not ${String(memMiB)}`);
  const names = labNames(prefix);
  teardownLab(prefix);
  const described = describeLab(prefix);
  const vms: QemuProcess[] = [];
  let bridge: Bridge | null = null;
  let agent: QemuLabAgent | null = null;
  let ownLinks: LinkWatcher | null = null;
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    await agent?.stop().catch((e: Error) => log('warn', 'agent-stop-failed', { error: e.message }));
    await bridge?.stop();
    ownLinks?.close();
    await Promise.all(vms.map((vm) => vm.kill()));
    const report = teardownLab(prefix);
    if (report.failures.length) log('warn', 'lab-teardown-failures', { lab: prefix, failures: report.failures });
  };
  try {
    const cacheDir = guestCacheRoot({ cacheDir: options.guestCacheDir });
    const guest = await buildGuest({ cacheDir, log });
    const accel = await chooseAccel({ kernel: guest.vmlinux, initrd: guest.initrd, imageKey: guest.key, marker: GUEST_PROBE_MARKER, cacheDir, log });
    log('info', 'qemu-lab-accel', { accel: accel.accel, reason: accel.reason, probeMs: accel.probeMs, source: accel.source });

    fs.mkdirSync(names.runDir, { recursive: true, mode: 0o755 });
    const client = described.client;
    setUpNode(client, described.primary);
    const taps = { primary: names.hostIfs.primary, backup: names.hostIfs.backup };
    createTap(taps.primary);
    createTap(taps.backup);

    const cmdline = guestCmdline({ ipv4: LAB_VM_IPV4, prefixLength: described.ipv4PrefixLength, peerIpv4: LAB_CLIENT_IPV4, peerMac: LAB_CLIENT_MAC,
      ftpPassivePorts: options.ftpPassivePorts, ...(options.ipv6 ? { ipv6: `${LAB_VM_IPV6}/${described.ipv6PrefixLength}` } : {}),
    });
    const vmTemplate: QemuVmTemplate = {
      runDir: names.runDir, memMiB, accel: accel.accel, mac: LAB_VM_MAC,
      ...(options.qemuBinary ? { binary: options.qemuBinary } : {}),
      boot: { kernel: options.bootBzImage ? guest.bzImage : guest.vmlinux, initrd: guest.initrd, cmdline },
    };
    let vmCount = 0;
    let standbyTaps = 0;
    const launchVm = async (o: QemuLabVmOptions & { accel?: Accel } = {}): Promise<QemuProcess> => {
      let tap = o.tap;
      if (!tap) {
        tap = `${prefix}s${++standbyTaps}`;
        createTap(tap);
      }
      const vm = await QemuProcess.launch({
        ...vmTemplate, name: `${prefix}-vm${++vmCount}`, accel: o.accel ?? accel.accel, tap, incoming: o.incoming ?? true, log,
        ...(o.objects ? { objects: o.objects } : {}),
      });
      vms.push(vm);
      return vm;
    };

    const bootStarted = Date.now();
    const first = await launchVm({ tap: taps.primary, incoming: false });
    await first.waitForSerial(GUEST_READY_MARKER, options.bootTimeoutMs ?? 90_000);
    const bootMs = Date.now() - bootStarted;
    log('info', 'vm-ready', { vm: first.name, bootMs, accel: accel.accel });
    const second = await launchVm({ tap: taps.backup, incoming: true });
    const clone = await cloneInto(first, second, { log, channels: options.cloneChannels });
    await waitUntilQuiet(described);

    const agentSocket = path.join(names.runDir, 'agent.sock');
    const controlSocket = path.join(names.runDir, 'control.sock');
    const ports = openPorts(options.io ?? 'afpacket', { uplink: client.hostIf, primary: taps.primary, backup: taps.backup }, { vnetHdr: false });
    bridge = new Bridge(ports, {
      name: prefix,
      config: makePipelineConfig(qemuLabConfig(accel.accel, options.config)),
      agentSocket,
      controlSocket,
      log,
      links: options.links === 'none' ? undefined : options.links ?? (ownLinks = LinkWatcher.open()),
      // An agent that copies into a fresh VM names its tap (protocol v2): the bridge opens a port there.
      openPort: (ifname) => openOneLater(options.io ?? 'afpacket', ifname, { vnetHdr: false }),
    });
    await bridge.start();
    const lab: QemuLab = {
      prefix, runDir: names.runDir, memMiB, accel, guest, client,
      serviceIpv4: LAB_VM_IPV4, serviceIpv6: options.ipv6 ? LAB_VM_IPV6 : null, serviceMac: LAB_VM_MAC, taps,
      vms: { primary: first, backup: second },
      bridge, ports, agentSocket, controlSocket, bootMs, clone,
      get agent(): QemuLabAgent {
        if (!agent) throw new QemuLabError('the QEMU lab agent is not running yet');
        return agent;
      },
      vmTemplate, descriptionFile: path.join(names.runDir, 'lab.json'),
      launchVm: (o) => launchVm(o),
      stop,
    };
    fs.writeFileSync(lab.descriptionFile, `${JSON.stringify(describeQemuLab(lab), null, 2)}\n`);
    agent = await (options.agent ?? answeringAgent)({ agentSocket, name: `${prefix}-qemu-lab-agent`, lab, log });
    const b = bridge;
    // The first checkpoint (asked for as soon as an agent connects) takes the bridge out of DEGRADED.
    if (!(await waitFor(() => b.pipeline.state === 'COMPARING', 15_000))) {
      throw new QemuLabError(`QEMU lab bridge did not reach COMPARING (state ${b.pipeline.state}): is the agent connected to ${agentSocket}?`);
    }
    return lab;
  } catch (e) {
    await stop();
    throw e;
  }
}
