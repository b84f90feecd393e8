/**
 * bench/lab-bench: the kernel bridge and shadowvm on the same netns lab, in
 * one run, reported as ratios to the kernel bridge. A report, not a test;
 * needs root. Run: `npx tsc -p tsconfig.json && node dist/bench/lab-bench.js`
 * (`--modes kernel,afpacket`, `--seconds 3`, `--prefix svmlb`). Mode
 * "afpacket-date" is "afpacket" with `normalize.httpDate` on: nginx's `Date:`
 * headers, a second apart now and then, before (afpacket) and after.
 *
 *   client ns ── <p>c ─┬─ <p>br (Linux bridge) ─── <p>p ── primary ns     mode "kernel" (backup left out)
 *                      └─ shadowvm ──────────────┬─ <p>p ── primary ns    mode "afpacket" / "cap"
 *                                                └─ <p>b ── backup ns
 *
 * Each mode gets a fresh lab built by the same lib/lab code (same names,
 * addresses, servers, offloads); the shadowvm modes use startBridgedLab
 * (Bridge in this process, lab agent, resync 'align'). The load generators
 * (wrk, iperf3, ping, curl) are child processes in the client namespace,
 * run asynchronously so the in-process bridge keeps its event loop.
 *
 * Per mode: sanity fetch of both objects, 1 s wrk warm-up, idle ping, wrk
 * 1 KiB, wrk 100 KiB, iperf3. Bridge counters, process.cpuUsage() and
 * /proc/stat are read around each phase; during the ping a LatencyProbe
 * (bench/lib) says where the added round trip goes. Results: a table on stdout and
 * bench/results/lab-<timestamp>.json. The lab is always torn down (finally,
 * SIGINT/SIGTERM, uncaught errors).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Bridge, TICK_MS } from '../lib/bridge';
import type { IoBackend } from '../lib/cli/ports';
import type { LogFn } from '../lib/control/logger';
import type { BridgeSnapshot } from '../lib/control/snapshot';
import { BridgedLab, startBridgedLab } from '../lib/lab/bridged';
import { Lab, buildLab, findLabLeftovers, teardownLab, waitUntilQuiet } from '../lib/lab/netns';
import { LabServers, startLabServers } from '../lib/lab/servers';
import {
  BENCH_OBJECTS, addKernelBridge, describeOffloads, hostCpuBusyPercent, hostFacts, readHostCpu, iperfLogFile, kernelBridgeName, linkExists,
  readOffloads, readTail, removeKernelBridge, startIperfServers, writeBenchObjects,
} from './lib/lab-setup';
import {
  IperfResult, PingResult, WrkOptions, WrkResult, fetchStatus, iperfServerSummary, runIperf, runPing, runWrk,
} from './lib/load-tools';
import { LatencyProbe, LatencyProbeReport } from './lib/latency-probe';
import { Row, formatTable, ratioOf } from './lib/report';

type Mode = 'kernel' | 'afpacket' | 'cap' | 'afpacket-date';
const ALL_MODES: readonly Mode[] = ['kernel', 'afpacket', 'cap', 'afpacket-date'];
const LABELS: Record<Mode, string> = { kernel: 'kernel bridge', afpacket: 'shadowvm afpacket', cap: 'shadowvm cap', 'afpacket-date': 'afpacket httpDate' };

const TARGETS = { smallRatio: 0.95, largeRatio: 0.5, addedRttP50Ms: 0.05 } as const;

interface Options {
  modes: Mode[];
  prefix: string;
  seconds: number;
  wrk: WrkOptions;
  pingCount: number;
  pingIntervalS: number;
}

function parseArgs(argv: string[]): Options {
  const get = (name: string): string | undefined => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const modes = (get('modes') ?? ALL_MODES.join(',')).split(',').map((m) => m.trim()) as Mode[];
  for (const m of modes) if (!ALL_MODES.includes(m)) throw new Error(`unknown mode ${m}: one of ${ALL_MODES.join(', ')}`);
  const seconds = Number(get('seconds') ?? 5);
  if (!(seconds >= 1)) throw new Error('--seconds must be ≥ 1');
  return {
    modes,
    prefix: get('prefix') ?? 'svmlb',
    seconds,
    wrk: { threads: 2, connections: 32, seconds },
    pingCount: 200,
    pingIntervalS: 0.01,
  };
}

// ------------------------------------------------------------------ bridge counters

/** What the bridge counted during one phase (differences of two snapshots). */
interface BridgePhase {
  wallMs: number;
  /** process.cpuUsage() of this process (bridge, lab agent, idle orchestration): user + system. */
  cpuUs: number;
  /** Of which in the kernel (sendmmsg/poll, and the receiving namespaces' softirq work run in this process's context). */
  cpuSystemUs: number;
  cpuPercentOfOneCore: number;
  /** Frames received on the three ports (uplink + primary + backup): what the bridge handled. */
  rxFrames: number;
  txFrames: number;
  cpuUsPerFrame: number;
  /** AF_PACKET only: wake-ups that delivered frames, and frames per wake-up. */
  breaths?: number;
  framesPerBreath?: number;
  rxDrops: number;
  /** Per port role (uplink, primary, backup): ring full or truncated. */
  rxDropsByPort: Record<string, number>;
  txErrors: number;
  mismatches: number;
  /** HTTP `Date:` values that differed and were settled as equal (normalize.httpDate). */
  httpDateNormalized: number;
  checkpointsRequested: Record<string, number>;
  checkpointsDone: number;
  checkpointsFailed: number;
  ingressHeldFrames: number;
  ingressHoldDropped: number;
  malformed: number;
  stateAfter: string;
  /** First mismatches logged during the phase (flow, kind, offset). */
  mismatchSamples: string[];
}

interface Counters { snap: BridgeSnapshot; cpu: NodeJS.CpuUsage; atMs: number }

function sumPorts(s: BridgeSnapshot, key: string): number {
  return s.ports.reduce((n, p) => n + (Number((p as unknown as Record<string, unknown>)[key]) || 0), 0);
}

function malformedTotal(s: BridgeSnapshot): number {
  return Object.values(s.malformed).reduce((n, c) => n + c.client + c.primary + c.backup, 0);
}

function readCounters(bridge: Bridge): Counters {
  return { snap: bridge.snapshot(), cpu: process.cpuUsage(), atMs: performance.now() };
}

function phaseOf(before: Counters, after: Counters, samples: string[]): BridgePhase {
  const a = after.snap;
  const b = before.snap;
  const cpuUs = after.cpu.user - before.cpu.user + after.cpu.system - before.cpu.system;
  const wallMs = after.atMs - before.atMs;
  const rxFrames = sumPorts(a, 'rxFrames') - sumPorts(b, 'rxFrames');
  const breathsAvailable = a.ports.some((p) => 'breaths' in p);
  const breaths = breathsAvailable ? sumPorts(a, 'breaths') - sumPorts(b, 'breaths') : undefined;
  const requested: Record<string, number> = {};
  for (const [reason, n] of Object.entries(a.checkpoints.requested)) {
    const d = n - (b.checkpoints.requested as Record<string, number>)[reason];
    if (d) requested[reason] = d;
  }
  return {
    wallMs,
    cpuUs,
    cpuSystemUs: after.cpu.system - before.cpu.system,
    cpuPercentOfOneCore: (cpuUs / 1000 / wallMs) * 100,
    rxFrames,
    txFrames: sumPorts(a, 'txFrames') - sumPorts(b, 'txFrames'),
    cpuUsPerFrame: rxFrames > 0 ? cpuUs / rxFrames : NaN,
    ...(breaths !== undefined ? { breaths, framesPerBreath: breaths > 0 ? rxFrames / breaths : NaN } : {}),
    rxDrops: sumPorts(a, 'rxDrops') - sumPorts(b, 'rxDrops'),
    rxDropsByPort: Object.fromEntries(a.ports.map((p, i) => [p.role, p.rxDrops - b.ports[i].rxDrops])),
    txErrors: sumPorts(a, 'txErrors') - sumPorts(b, 'txErrors'),
    mismatches: a.mismatches - b.mismatches,
    httpDateNormalized: (a.stages.compare?.http_date_normalized ?? 0) - (b.stages.compare?.http_date_normalized ?? 0),
    checkpointsRequested: requested,
    checkpointsDone: a.checkpoints.done - b.checkpoints.done,
    checkpointsFailed: a.checkpoints.failed - b.checkpoints.failed,
    ingressHeldFrames: a.ingress.heldFrames - b.ingress.heldFrames,
    ingressHoldDropped: a.ingress.holdDropped - b.ingress.holdDropped,
    malformed: malformedTotal(a) - malformedTotal(b),
    stateAfter: a.state,
    mismatchSamples: samples,
  };
}

/** Collects the bridge's mismatch events per phase (the bridge logs nothing else we need). */
class EventTap {
  phase = 'setup';
  readonly samples = new Map<string, string[]>();
  readonly counts: Record<string, number> = {};
  readonly log: LogFn = (level, event, fields) => {
    if (level === 'debug' || level === 'info') return;
    const key = `${level}:${event}`;
    this.counts[key] = (this.counts[key] ?? 0) + 1;
    if (event !== 'mismatch') return;
    const list = this.samples.get(this.phase) ?? [];
    if (list.length < 3) {
      const f = fields ?? {};
      const excerpt = (v: unknown) => JSON.stringify(String(v ?? '').slice(0, 40));
      list.push(`${String(f.flow)} ${String(f.kind)} at ${String(f.offset)}: primary ${excerpt(f.primary)} backup ${excerpt(f.backup)}`);
    }
    this.samples.set(this.phase, list);
  };
  take(phase: string): string[] {
    const list = this.samples.get(phase) ?? [];
    this.samples.delete(phase);
    return list;
  }
}

// ------------------------------------------------------------------ ports

interface PortInfo { role: string; name: string; kind: string; vnetHdr?: boolean; ringSlots?: number; slotBytes?: number }

/** What startBridgedLab opened: back-end, virtio-net headers, ring geometry. Reads the Bridge's private `ports`; changes nothing. */
function describePorts(bridge: Bridge): PortInfo[] {
  const ports = (bridge as unknown as { ports?: Record<string, { name: string; vnetHdr?: boolean; ring?: { frames: number; frameSize: number } }> }).ports ?? {};
  return Object.entries(ports).map(([role, port]) => ({
    role,
    name: port.name,
    kind: port.constructor?.name ?? 'unknown',
    ...(port.vnetHdr !== undefined ? { vnetHdr: port.vnetHdr } : {}),
    ...(port.ring ? { ringSlots: port.ring.frames, slotBytes: port.ring.frameSize } : {}),
  }));
}

function portsLine(ports: PortInfo[] | undefined): string {
  if (!ports?.length) return '';
  const p = ports[0];
  const same = ports.every((q) => q.kind === p.kind && q.vnetHdr === p.vnetHdr && q.ringSlots === p.ringSlots && q.slotBytes === p.slotBytes);
  const one = (q: PortInfo) => `${q.kind}${q.vnetHdr !== undefined ? `, vnetHdr ${q.vnetHdr ? 'on' : 'off'}` : ''}${q.ringSlots ? `, receive ring ${q.ringSlots} slots × ${q.slotBytes} B` : ''}`;
  return same ? `    ports: ${one(p)} (each of ${ports.map((q) => q.role).join(', ')})` : `    ports: ${ports.map((q) => `${q.role} ${one(q)}`).join('; ')}`;
}

// ------------------------------------------------------------------ one mode

interface ModeResult {
  mode: Mode;
  label: string;
  ok: boolean;
  error?: string;
  setupMs: number;
  offloads: Record<string, Record<string, string>>;
  offloadSummary: string;
  sanity: Record<string, { ok: boolean; status: number; bytes: number; error?: string }>;
  ping?: PingResult & { bridge?: BridgePhase; hostCpuBusyPercent: number; probe?: LatencyProbeReport };
  wrkSmall?: WrkResult & { bridge?: BridgePhase; hostCpuBusyPercent: number };
  wrkLarge?: WrkResult & { bridge?: BridgePhase; hostCpuBusyPercent: number };
  iperf?: IperfResult & {
    bridge?: BridgePhase; hostCpuBusyPercent: number;
    primaryServer: string; backupServer: string; primaryServerLogTail: string; backupServerLogTail: string;
  };
  bridgeWarnings?: Record<string, number>;
  /** The bridge's ports as opened by startBridgedLab (read from the running Bridge, for the report). */
  ports?: PortInfo[];
  teardown: { namespaces: string[]; links: string[]; processes: number[]; kernelBridgeLeft: boolean };
}

interface MeasureContext {
  lab: Lab;
  servers: LabServers;
  bridge?: Bridge;
  tap?: EventTap;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function measureMode(ctx: MeasureContext, o: Options, r: ModeResult, say: (s: string) => void): Promise<void> {
  const { lab } = ctx;
  const ns = lab.client.netns;
  const url = (file: string) => `http://${lab.serviceIpv4}/${file}`;

  // The path must work before it is measured; a kernel bridge's ports may take a moment to forward.
  for (const obj of Object.values(BENCH_OBJECTS)) {
    let s = await fetchStatus(ns, url(obj.file));
    for (let i = 0; i < 20 && !s.ok; i++) {
      await sleep(100);
      s = await fetchStatus(ns, url(obj.file));
    }
    r.sanity[obj.file] = s;
    if (!s.ok || s.bytes !== obj.bytes) throw new Error(`sanity fetch of ${url(obj.file)} through ${r.label} failed: ${s.error ?? `status ${s.status}, ${s.bytes} bytes (want ${obj.bytes})`}`);
  }

  type Measured<T> = T & { bridge?: BridgePhase; hostCpuBusyPercent: number };
  const phase = async <T extends object>(name: string, fn: () => Promise<T>): Promise<Measured<T>> => {
    say(`  ${name}…`);
    if (ctx.tap) ctx.tap.phase = name;
    const before = ctx.bridge ? readCounters(ctx.bridge) : null;
    const hostBefore = readHostCpu();
    const value = await fn();
    const hostCpu = hostCpuBusyPercent(hostBefore, readHostCpu());
    if (!ctx.bridge || !before) return { ...value, hostCpuBusyPercent: hostCpu };
    const after = readCounters(ctx.bridge);
    return { ...value, hostCpuBusyPercent: hostCpu, bridge: phaseOf(before, after, ctx.tap!.take(name)) };
  };

  // Warm-up: JIT of the bridge's hot path, nginx's caches, the flow table; not reported.
  await phase('warm-up', () => runWrk(ns, url(BENCH_OBJECTS.small.file), { ...o.wrk, seconds: 1 }));
  await sleep(1000);
  const probe = ctx.bridge ? new LatencyProbe(ctx.bridge.pipeline, r.mode === 'afpacket' || r.mode === 'afpacket-date') : null;
  try {
    r.ping = await phase('ping idle', () => runPing(ns, lab.serviceIpv4, o.pingCount, o.pingIntervalS));
  } finally {
    const report = probe?.stop();
    if (r.ping && report) r.ping.probe = report;
  }
  r.wrkSmall = await phase('wrk 1 KiB', () => runWrk(ns, url(BENCH_OBJECTS.small.file), o.wrk));
  r.wrkLarge = await phase('wrk 100 KiB', () => runWrk(ns, url(BENCH_OBJECTS.large.file), o.wrk));
  const iperf = await phase('iperf3', () => runIperf(ns, lab.serviceIpv4, o.seconds));
  // The servers flush their logs (--forceflush); give them a moment to finish the test's summary.
  await sleep(1000);
  const primaryLog = readTail(iperfLogFile(lab, lab.primary));
  const backupLog = readTail(iperfLogFile(lab, lab.backup));
  r.iperf = {
    ...iperf,
    primaryServer: iperfServerSummary(primaryLog),
    backupServer: iperfServerSummary(backupLog),
    primaryServerLogTail: primaryLog.slice(-1500),
    backupServerLogTail: backupLog.slice(-1500),
  };
}

function newResult(mode: Mode): ModeResult {
  return {
    mode, label: LABELS[mode], ok: false, setupMs: 0, offloads: {}, offloadSummary: '', sanity: {},
    teardown: { namespaces: [], links: [], processes: [], kernelBridgeLeft: false },
  };
}

function recordTeardown(r: ModeResult, prefix: string): void {
  const left = findLabLeftovers(prefix);
  r.teardown = { namespaces: left.namespaces, links: left.links, processes: left.processes, kernelBridgeLeft: linkExists(kernelBridgeName(prefix)) };
}

async function runKernelMode(o: Options, say: (s: string) => void): Promise<ModeResult> {
  const r = newResult('kernel');
  const t0 = Date.now();
  const lab = buildLab({ prefix: o.prefix });
  try {
    const servers = await startLabServers(lab);
    writeBenchObjects(servers);
    await startIperfServers(lab);
    await waitUntilQuiet(lab);
    r.offloads = readOffloads(lab);
    r.offloadSummary = describeOffloads(r.offloads);
    addKernelBridge(lab);
    r.setupMs = Date.now() - t0;
    await measureMode({ lab, servers }, o, r, say);
    r.ok = true;
  } catch (e) {
    r.error = (e as Error).message;
  } finally {
    removeKernelBridge(o.prefix);
    teardownLab(lab);
    recordTeardown(r, o.prefix);
  }
  return r;
}

async function runShadowMode(mode: 'afpacket' | 'cap' | 'afpacket-date', o: Options, say: (s: string) => void): Promise<ModeResult> {
  const r = newResult(mode);
  const t0 = Date.now();
  const tap = new EventTap();
  let bridged: BridgedLab | null = null;
  try {
    const io: IoBackend = mode === 'afpacket-date' ? 'afpacket' : mode;
    const config = mode === 'afpacket-date' ? { normalize: { httpDate: true, httpDateToleranceMs: 2000 } } : undefined;
    bridged = await startBridgedLab({ prefix: o.prefix, io, log: tap.log, config });
    current.bridged = bridged;
    r.ports = describePorts(bridged.bridge);
    writeBenchObjects(bridged.servers);
    await startIperfServers(bridged.lab);
    r.offloads = readOffloads(bridged.lab);
    r.offloadSummary = describeOffloads(r.offloads);
    r.setupMs = Date.now() - t0;
    await measureMode({ lab: bridged.lab, servers: bridged.servers, bridge: bridged.bridge, tap }, o, r, say);
    r.ok = true;
  } catch (e) {
    r.error = (e as Error).message;
  } finally {
    r.bridgeWarnings = tap.counts;
    if (bridged) await bridged.stop();
    current.bridged = null;
    // startBridgedLab tears down on its own failures; make sure of it either way.
    teardownLab(o.prefix);
    recordTeardown(r, o.prefix);
  }
  return r;
}

// ------------------------------------------------------------------ cleanup on interruption

const current: { prefix: string | null; bridged: BridgedLab | null } = { prefix: null, bridged: null };

/** Synchronous: usable from signal handlers and 'exit'. Kills everything in the namespaces, deletes them and the kernel bridge. */
function emergencyTeardown(): void {
  if (!current.prefix) return;
  const prefix = current.prefix;
  current.prefix = null;
  removeKernelBridge(prefix);
  const report = teardownLab(prefix);
  if (report.failures.length) process.stderr.write(`teardown problems:\n${report.failures.join('\n')}\n`);
}

function installCleanupHandlers(): void {
  for (const [signal, code] of [['SIGINT', 130], ['SIGTERM', 143], ['SIGHUP', 129]] as const) {
    process.on(signal, () => {
      process.stderr.write(`\n${signal}: tearing the lab down\n`);
      emergencyTeardown();
      process.exit(code);
    });
  }
  process.on('uncaughtException', (e) => {
    process.stderr.write(`uncaught: ${e.stack ?? e.message}\n`);
    emergencyTeardown();
    process.exit(1);
  });
  process.on('exit', emergencyTeardown);
}

// ------------------------------------------------------------------ report

function rowsOf(results: ModeResult[]): Row[] {
  const by = (f: (r: ModeResult) => number | undefined): Record<string, number> => {
    const v: Record<string, number> = {};
    for (const r of results) {
      const x = f(r);
      v[r.mode] = typeof x === 'number' ? x : NaN;
    }
    return v;
  };
  const okRps = (w: WrkResult | undefined) => (w?.ok ? w.requestsPerSecond : NaN);
  const kernel = results.find((r) => r.mode === 'kernel');
  const kernelP50 = kernel?.ping?.ok ? kernel.ping.p50Ms : NaN;
  return [
    {
      metric: 'wrk 1 KiB req/s', values: by((r) => okRps(r.wrkSmall)), digits: 0, ratio: true,
      target: { text: `≥ ${TARGETS.smallRatio}× kernel`, met: (v, k) => v / k >= TARGETS.smallRatio },
    },
    {
      metric: 'wrk 100 KiB req/s', values: by((r) => okRps(r.wrkLarge)), digits: 0, ratio: true,
      target: { text: `≥ ${TARGETS.largeRatio}× kernel`, met: (v, k) => v / k >= TARGETS.largeRatio },
    },
    { metric: 'iperf3 Gbit/s (receiver)', values: by((r) => (r.iperf?.ok ? r.iperf.receivedGbps : NaN)), digits: 2, ratio: true },
    { metric: 'ping RTT p50 ms (idle)', values: by((r) => (r.ping?.ok ? r.ping.p50Ms : NaN)), digits: 3, ratio: true },
    { metric: 'ping RTT p99 ms (idle)', values: by((r) => (r.ping?.ok ? r.ping.p99Ms : NaN)), digits: 3, ratio: true },
    {
      metric: 'added RTT p50 ms (− kernel)', values: by((r) => (r.mode === 'kernel' ? NaN : r.ping?.ok ? r.ping.p50Ms - kernelP50 : NaN)), digits: 3, ratio: false,
      target: { text: `≤ ${TARGETS.addedRttP50Ms} ms`, met: (v) => v <= TARGETS.addedRttP50Ms },
    },
    { metric: 'bridge CPU µs/frame (wrk 1 KiB)', values: by((r) => r.wrkSmall?.bridge?.cpuUsPerFrame), digits: 2, ratio: false },
    { metric: 'bridge CPU µs/frame (wrk 100 KiB)', values: by((r) => r.wrkLarge?.bridge?.cpuUsPerFrame), digits: 2, ratio: false },
    { metric: 'bridge CPU % of a core (wrk 1 KiB)', values: by((r) => r.wrkSmall?.bridge?.cpuPercentOfOneCore), digits: 0, ratio: false },
    { metric: 'host CPU busy % (wrk 1 KiB, all CPUs)', values: by((r) => r.wrkSmall?.hostCpuBusyPercent), digits: 0, ratio: false },
    { metric: 'host CPU busy % (wrk 100 KiB)', values: by((r) => r.wrkLarge?.hostCpuBusyPercent), digits: 0, ratio: false },
    { metric: 'wrk latency p99 ms (1 KiB, loaded)', values: by((r) => (r.wrkSmall?.ok ? r.wrkSmall.latencyP99Ms : NaN)), digits: 2, ratio: true },
    { metric: 'mismatch checkpoints (both wrk runs)', values: by((r) => wrkSum(r, (p) => p.checkpointsRequested.mismatch ?? 0)), digits: 0, ratio: false },
    { metric: 'Date values normalized (both wrk runs)', values: by((r) => wrkSum(r, (p) => p.httpDateNormalized)), digits: 0, ratio: false },
  ];
}

/** A bridge figure summed over the two wrk phases (NaN for the kernel bridge). */
function wrkSum(r: ModeResult, f: (p: BridgePhase) => number): number {
  const phases = [r.wrkSmall?.bridge, r.wrkLarge?.bridge];
  return phases.every((p) => p !== undefined) ? phases.reduce((n, p) => n + f(p!), 0) : NaN;
}

function describePhase(name: string, p: BridgePhase | undefined): string {
  if (!p) return `    ${name}: —`;
  const reasons = Object.entries(p.checkpointsRequested).map(([k, n]) => `${k} ${n}`).join(', ') || 'none';
  const parts = [
    `${p.rxFrames} frames in (${p.txFrames} out)`,
    `CPU ${p.cpuUsPerFrame.toFixed(1)} µs/frame (${p.cpuUs > 0 ? ((p.cpuSystemUs / p.cpuUs) * 100).toFixed(0) : '—'}% system), ${p.cpuPercentOfOneCore.toFixed(0)}% of a core`,
    p.framesPerBreath !== undefined ? `${p.framesPerBreath.toFixed(1)} frames/wake-up` : '',
    `mismatches ${p.mismatches}`,
    p.httpDateNormalized ? `Date values normalized ${p.httpDateNormalized}` : '',
    `checkpoints asked ${reasons}, done ${p.checkpointsDone}, failed ${p.checkpointsFailed}`,
    p.ingressHeldFrames ? `ingress held ${p.ingressHeldFrames} (dropped ${p.ingressHoldDropped})` : '',
    p.rxDrops || p.txErrors ? `rx drops ${Object.entries(p.rxDropsByPort).map(([k, n]) => `${k} ${n}`).join(' ')}, tx errors ${p.txErrors}` : '',
    p.malformed ? `malformed ${p.malformed}` : '',
    `state after ${p.stateAfter}`,
  ].filter(Boolean);
  const lines = [`    ${name}: ${parts.join('; ')}`];
  for (const s of p.mismatchSamples) lines.push(`      mismatch: ${s}`);
  return lines.join('\n');
}

function loadLine(label: string, w: WrkResult | undefined): string {
  if (!w) return '';
  const errs = w.socketErrors;
  const bad = errs.connect + errs.read + errs.write + errs.timeout + w.non2xx3xx;
  return bad || !w.ok ? `    ${label}: ${w.ok ? '' : `FAILED ${w.error ?? ''}; `}socket errors connect ${errs.connect} read ${errs.read} write ${errs.write} timeout ${errs.timeout}; non-2xx/3xx ${w.non2xx3xx}` : '';
}

function report(results: ModeResult[], o: Options, facts: Record<string, string>, factsAfter: Record<string, string>): string[] {
  const out: string[] = [];
  const shadows = results.filter((r) => r.mode !== 'kernel').map((r) => r.mode);
  const hasKernel = results.some((r) => r.mode === 'kernel');
  out.push(`lab bench: kernel bridge vs shadowvm on the netns lab (node ${process.version}, kernel ${facts.kernel}, ${facts.cpus} CPUs)`);
  out.push(`  wrk -t${o.wrk.threads} -c${o.wrk.connections} -d${o.wrk.seconds}s; iperf3 -t ${o.seconds} (client ns → service address; servers in primary and backup ns); ping -c ${o.pingCount} -i ${o.pingIntervalS} at idle`);
  out.push(`  offloads (same lab code for every mode; tx checksum offload off in the namespaces, so checksums are complete): ${results[0]?.offloadSummary || '—'}`);
  out.push(`  host: bridge-nf-call-iptables=${facts['bridge-nf-call-iptables']} (host-wide, not changed: bridged IPv4 frames of the kernel baseline pass the netfilter hooks); loadavg before ${facts.loadavg.split(' ').slice(0, 3).join(' ')}, after ${factsAfter.loadavg.split(' ').slice(0, 3).join(' ')}`);
  out.push('');
  out.push(...formatTable(rowsOf(results), hasKernel ? 'kernel' : '—', shadows, LABELS));
  out.push('');
  out.push('  ratios are shadowvm ÷ kernel bridge (for RTT and latency: higher is worse); bridge CPU = process.cpuUsage() of the bench process');
  out.push('  (bridge + lab agent) over the phase ÷ frames received on the three ports; the kernel bridge works in softirq (not attributable: —).');
  for (const r of results) {
    out.push('');
    out.push(`${r.label}: ${r.ok ? 'ok' : `FAILED: ${r.error}`} (setup ${r.setupMs} ms)`);
    if (r.ports) out.push(portsLine(r.ports));
    if (r.ping && r.ping.error) out.push(`    ping: ${r.ping.error}`);
    for (const l of [loadLine('wrk 1 KiB', r.wrkSmall), loadLine('wrk 100 KiB', r.wrkLarge)]) if (l) out.push(l);
    if (r.iperf) {
      out.push(`    iperf3 client: ${r.iperf.ok ? `${r.iperf.receivedGbps.toFixed(2)} Gbit/s received, ${r.iperf.retransmits} retransmits, run ${r.iperf.wallMs} ms` : `FAILED ${r.iperf.error}`}`);
      out.push(`    iperf3 server in primary ns: ${r.iperf.primaryServer}`);
      out.push(`    iperf3 server in backup ns:  ${r.iperf.backupServer}`);
    }
    if (r.mode !== 'kernel') {
      out.push('    bridge counters per phase:');
      out.push(describePhase('ping idle', r.ping?.bridge));
      const pr = r.ping?.probe;
      if (pr) {
        const us = (v: number) => (Number.isFinite(v) ? v.toFixed(0) : '—');
        out.push(`      where the idle RTT goes: kernel timestamp → JS ${pr.kernelToJsUs ? `p50 ${us(pr.kernelToJsUs.p50)} µs, p99 ${us(pr.kernelToJsUs.p99)} µs, max ${us(pr.kernelToJsUs.max)} µs` : 'n/a (cap stamps frames in JS)'};`
          + ` backup reply later than primary's: p50 ${us(pr.backupLagUs.p50)} µs, p99 ${us(pr.backupLagUs.p99)} µs (${pr.backupLagUs.replies} replies);`
          + ` ${pr.tick.calls} ticks (timer ${TICK_MS} ms), mean ${pr.tick.meanUs.toFixed(1)} µs, max ${us(pr.tick.maxUs)} µs`);
      }
      out.push(describePhase('wrk 1 KiB', r.wrkSmall?.bridge));
      out.push(describePhase('wrk 100 KiB', r.wrkLarge?.bridge));
      out.push(describePhase('iperf3', r.iperf?.bridge));
    }
    const t = r.teardown;
    const clean = !t.namespaces.length && !t.links.length && !t.processes.length && !t.kernelBridgeLeft;
    out.push(`    teardown: ${clean ? 'clean' : `LEFTOVERS ${JSON.stringify(t)}`}`);
  }
  return out;
}

// ------------------------------------------------------------------ main

async function main(): Promise<number> {
  if (process.getuid?.() !== 0) {
    process.stderr.write('lab-bench builds network namespaces: run it as root\n');
    return 1;
  }
  const o = parseArgs(process.argv.slice(2));
  current.prefix = o.prefix;
  installCleanupHandlers();
  // Leftovers of an interrupted earlier run (a kernel bridge is outside every namespace).
  removeKernelBridge(o.prefix);
  teardownLab(o.prefix);

  const startedAt = new Date();
  const facts = hostFacts();
  const say = (s: string) => process.stderr.write(`${s}\n`);
  const results: ModeResult[] = [];
  const t0 = Date.now();
  for (const mode of o.modes) {
    say(`${LABELS[mode]}:`);
    const r = mode === 'kernel' ? await runKernelMode(o, say) : await runShadowMode(mode, o, say);
    if (r.error) say(`  failed: ${r.error}`);
    results.push(r);
  }
  const factsAfter = hostFacts();
  const lines = report(results, o, facts, factsAfter);
  process.stdout.write(`${lines.join('\n')}\n`);

  const kernel = results.find((r) => r.mode === 'kernel');
  const ratios: Record<string, Record<string, number>> = {};
  for (const r of results) {
    if (r.mode === 'kernel' || !kernel) continue;
    ratios[r.mode] = {
      wrkSmall: ratioOf(r.wrkSmall?.ok ? r.wrkSmall.requestsPerSecond : NaN, kernel.wrkSmall?.ok ? kernel.wrkSmall.requestsPerSecond : NaN),
      wrkLarge: ratioOf(r.wrkLarge?.ok ? r.wrkLarge.requestsPerSecond : NaN, kernel.wrkLarge?.ok ? kernel.wrkLarge.requestsPerSecond : NaN),
      iperf: ratioOf(r.iperf?.ok ? r.iperf.receivedGbps : NaN, kernel.iperf?.ok ? kernel.iperf.receivedGbps : NaN),
      rttP50: ratioOf(r.ping?.p50Ms ?? NaN, kernel.ping?.p50Ms ?? NaN),
      rttP99: ratioOf(r.ping?.p99Ms ?? NaN, kernel.ping?.p99Ms ?? NaN),
      addedRttP50Ms: (r.ping?.p50Ms ?? NaN) - (kernel.ping?.p50Ms ?? NaN),
    };
  }
  const outDir = join(__dirname, '..', '..', 'bench', 'results');
  mkdirSync(outDir, { recursive: true });
  const file = join(outDir, `lab-${startedAt.toISOString().replace(/[:.]/g, '-')}.json`);
  // NaN is not JSON: failed or not applicable figures become null.
  const json = JSON.stringify({
    bench: 'lab', startedAt: startedAt.toISOString(), totalMs: Date.now() - t0, node: process.version, host: facts, hostAfter: factsAfter,
    options: o, targets: TARGETS, ratios, results,
  }, (_k, v) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2);
  writeFileSync(file, json);
  process.stdout.write(`saved ${file} (run took ${((Date.now() - t0) / 1000).toFixed(0)} s)\n`);
  const leftovers = results.some((r) => r.teardown.namespaces.length || r.teardown.links.length || r.teardown.processes.length || r.teardown.kernelBridgeLeft);
  return results.every((r) => r.ok) && !leftovers ? 0 : 1;
}

main()
  .then((code) => {
    emergencyTeardown();
    process.exit(code);
  })
  .catch((e: Error) => {
    process.stderr.write(`lab-bench: ${e.stack ?? e.message}\n`);
    emergencyTeardown();
    process.exit(1);
  });
