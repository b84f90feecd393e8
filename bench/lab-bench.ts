/**
 * bench/lab-bench: the kernel bridge and shadowvm on the same netns lab, in
 * interleaved rounds, reported as medians with their range and as ratios to
 * the kernel baselines, next to issue 9's targets. A report, not a test;
 * needs root. Run: `npx tsc -p tsconfig.json && node dist/bench/lab-bench.js`
 * (`--rounds 3`, `--seconds 5`, `--modes kernel,kernel2,afpacket,…`,
 * `--prefix svmlb`, `--flood-flows 100000`, `--iperf`; `--help`).
 *
 *   kernel   (KB):  client ns ── <p>c ── <p>br (Linux bridge) ── <p>p ── primary ns      backup left out
 *   kernel2  (KB2): the same, and client2 ns (the client's addresses) ── <p>c2 ── <p>br2 ── <p>b ── backup ns,
 *                   given the same load at the same time: both replicas serve, nothing compares
 *   afpacket:       client ns ── <p>c ── shadowvm (in this process) ─┬─ <p>p ── primary ns
 *                                                                   └─ <p>b ── backup ns
 *   sink:           the same, every flow `pass` (no comparison, the primary's output goes out at once) and a
 *                   backup that serves nothing (a discard server on port 80): the bridge's own I/O cost
 *   cap:            afpacket's topology with libpcap ports
 *   afpacket-date:  afpacket with normalize.httpDate on (issue 10's before/after of nginx's Date: headers)
 *   afpacket-perport: afpacket with one breath per epoll event (sweepOnWake off: the wake-up path before
 *                   issue 9's cut), for an A/B in one run
 *   afpacket-nofanout: with -offload, two rings a port but no fanout group (as on Linux before 6.2)
 *   afpacket-onering: with -offload, each port read through one ring of 68 KiB slots (run --no-split-rings)
 *                   instead of two (run's default: 2 KiB slots for MTU-sized frames, 68 KiB for super-frames)
 *   <mode>-offload: the namespaces' offloads on (checksum, TSO, GSO); shadowvm exchanges virtio-net headers
 *
 * Every (round, mode) gets a fresh lab built by the same lib/lab code (same
 * names, addresses, servers); the modes run interleaved (ABC ABC …) because
 * the host's speed drifts between minutes. Per lab: sanity fetches, a 1 s
 * wrk warm-up with 1000 pings alongside, idle ping, wrk 1 KiB and 100 KiB
 * (-t2 -c32), wrk on one connection (-t1 -c1 --latency, 1 KiB), iperf3 if asked. /proc/stat, the
 * bridge's counters and process.cpuUsage() are read around each phase; a
 * LatencyProbe (bench/lib) says where the idle round trip goes. After the
 * rounds, a 100,000-flow flood (bench/lib/flood-bridge, as flow-flood) gives
 * the RSS of a bridge process holding them. The load generators are child
 * processes in the client namespaces, run asynchronously so the in-process
 * bridge keeps its event loop.
 *
 * Results: tables on stdout (medians [min–max], ratios, targets, timeout
 * storms: FAIL when a shadowvm run asked ≥ 3 `timeout` checkpoints) and
 * bench/results/lab-<timestamp>.json. The exit status is non-zero only when a
 * run failed or something was left behind, not for targets or storms, so
 * `make bench` goes on to the other benches. The labs are always torn down
 * (finally, SIGINT/SIGTERM/SIGHUP, uncaught errors).
 */
import { setFlagsFromString } from 'node:v8';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { loadAfPacketAddon } from '../lib/io/afpacket-native';
import { platformThreadIds } from '../lib/dataplane/scheduling';
import { DEFAULT_SEND_INLINE_FRAMES, DEFAULT_SEND_INLINE_MAX_FPS } from '../lib/cli/commands/run';
import { join } from 'node:path';
import { Bridge, TICK_MS } from '../lib/bridge';
import type { IoBackend } from '../lib/cli/ports';
import type { LogFn } from '../lib/control/logger';
import type { BridgeSnapshot } from '../lib/control/snapshot';
import { BridgedLab, startBridgedLab } from '../lib/lab/bridged';
import { Lab, LabNode, buildLab, findLabLeftovers, teardownLab, waitUntilQuiet } from '../lib/lab/netns';
import { startLabServers } from '../lib/lab/servers';
import type { PipelineConfig } from '../lib/pipeline/config';
import {
  BENCH_OBJECTS, addKernelBridge, addTwinClient, describeOffloads, hostCpuBusyPercent, hostCpuBusyUs, hostFacts, iperfLogFile, kernelBridgeName,
  linkExists, offloadsOn, readHostCpu, readOffloads, readTail, removeKernelBridge, removeTwinClient, replaceWithDiscardServer, startIperfServers,
  twinBridgeName, twinHostIf, writeBenchObjects,
} from './lib/lab-setup';
import {
  IperfResult, PingResult, WrkOptions, WrkResult, fetchStatus, iperfServerSummary, runIperf, runPing, runWrk,
} from './lib/load-tools';
import { run } from '../lib/lab/exec';
import { LatencyProbe, LatencyProbeReport } from './lib/latency-probe';
import { Child, memoryOf } from './lib/children';
import { RssSampler, bridgeStatus, floodFlows, prepareFloodReplicas, startBridgeProcess } from './lib/flood-bridge';
import { Spread, cell, fmt, layout, ratioCell, ratioOf, spread } from './lib/report';

// ------------------------------------------------------------------ modes

/** afpacket-spin: how long the rings are polled after each breath (run --busy-poll-us). */
const SPIN_US = 50;
/** afpacket-rt: the SCHED_RR priority of the thread that runs the bridge (here the bench's own) and of its send thread. */
const RT_PRIORITY = 10;

/**
 * afpacket-rt: this process runs the bridge on its main thread, so that
 * thread takes SCHED_RR for the run (as run --realtime gives the data-plane
 * thread). A send thread started during the run inherits it; one an earlier
 * mode started at the normal policy gets it with chrt. V8's helper threads
 * (this process's platform threads) get SCHED_RR one step below and V8
 * scavenges with them, as run --realtime-helpers (the default) does; with
 * `normalHelpers` they stay at the normal policy, and with `scavengeAlone`
 * scavenges go without them (run --no-realtime-helpers). Returns the undo.
 */
function realtimeForRun(o: { normalHelpers: boolean; scavengeAlone: boolean }): () => void {
  const addon = loadAfPacketAddon();
  const r = addon.setThreadScheduling('', 'rr', RT_PRIORITY);
  if (r.errno) throw new Error(`afpacket-rt: SCHED_RR refused (errno ${r.errno})`);
  for (const t of sendThreads()) run('chrt', ['-r', '-p', String(RT_PRIORITY), t]);
  const helpers = o.normalHelpers ? [] : HELPER_TIDS;
  for (const t of helpers) addon.setTaskScheduling(t, 'rr', RT_PRIORITY - 1);
  if (o.scavengeAlone) setFlagsFromString('--no-parallel-scavenge');
  return () => {
    addon.setThreadScheduling('', 'other', 0);
    for (const t of sendThreads()) run('chrt', ['-o', '-p', '0', t]);
    for (const t of helpers) addon.setTaskScheduling(t, 'other', 0);
    setFlagsFromString('--parallel-scavenge');
  };
}

/** V8's helpers and Node's timer: the threads this process has at its start (before any send thread). */
const HELPER_TIDS = platformThreadIds();

/** This process's send threads (native/afpacket.c names them svm-send). */
function sendThreads(): string[] {
  return readdirSync('/proc/self/task').filter((t) => readFileSync(`/proc/self/task/${t}/comm`, 'utf8').trim() === 'svm-send');
}

type Base = 'kernel' | 'kernel2' | 'afpacket' | 'sink' | 'cap' | 'afpacket-date' | 'afpacket-perport' | 'afpacket-sync' | 'afpacket-spin' | 'afpacket-rt' | 'afpacket-rt-gchelpers' | 'afpacket-rt-normal-helpers' | 'afpacket-rt-inline1' | 'afpacket-rt-thread' | 'afpacket-onering' | 'afpacket-nofanout';
const BASES: readonly Base[] = ['kernel', 'kernel2', 'afpacket', 'sink', 'cap', 'afpacket-date', 'afpacket-perport', 'afpacket-sync', 'afpacket-spin', 'afpacket-rt', 'afpacket-rt-gchelpers', 'afpacket-rt-normal-helpers', 'afpacket-rt-inline1', 'afpacket-rt-thread', 'afpacket-onering', 'afpacket-nofanout'];
const BASE_LABELS: Record<Base, string> = {
  kernel: 'KB: kernel bridge, backup left out',
  kernel2: 'KB2: kernel bridge, the backup serves the same load from a second client',
  afpacket: 'shadowvm, AF_PACKET',
  sink: 'shadowvm, AF_PACKET, every flow `pass`, a backup that serves nothing (discard server)',
  cap: 'shadowvm, libpcap',
  'afpacket-date': 'shadowvm, AF_PACKET, normalize.httpDate on',
  'afpacket-perport': 'shadowvm, AF_PACKET, one breath per epoll event (sweepOnWake off)',
  'afpacket-sync': 'shadowvm, AF_PACKET, sends made by the data plane itself (sendThread off)',
  'afpacket-spin': `shadowvm, AF_PACKET, polling the rings ${SPIN_US} µs after each breath (busyPollUs)`,
  'afpacket-rt': `shadowvm, AF_PACKET, the data plane and its send thread at SCHED_RR ${RT_PRIORITY} (run --realtime), inline sends of up to ${DEFAULT_SEND_INLINE_FRAMES} frames while under ${DEFAULT_SEND_INLINE_MAX_FPS} frames/s (run's defaults)`,
  'afpacket-rt-gchelpers': 'afpacket-rt, but V8\'s helper threads at the normal policy and scavenging with them (run --no-realtime-helpers --scavenge-helpers)',
  'afpacket-rt-inline1': 'afpacket-rt, but inline sends of one frame at most (run --send-inline-frames 1)',
  'afpacket-rt-thread': 'afpacket-rt, but every send through the send thread (run --send-inline-frames 0: run\'s default of stops 20-22)',
  'afpacket-rt-normal-helpers': 'afpacket-rt, but V8\'s helper threads at the normal policy and scavenging alone (run --no-realtime-helpers)',
  'afpacket-nofanout': 'shadowvm, AF_PACKET, with offloads two rings a port whose sockets do not share a fanout group (each frame offered to both, sorted by their filters: run on Linux before 6.2)',
  'afpacket-onering': 'shadowvm, AF_PACKET, with offloads one ring of 512 slots of 68 KiB a port (run --no-split-rings; the other modes, as run, read two: 4,096 of 2 KiB and 128 of 68 KiB)',
};
const DEFAULT_MODES = ['kernel', 'kernel2', 'afpacket', 'afpacket-rt', 'sink', 'cap', 'afpacket-date', 'kernel-offload', 'afpacket-offload'] as const;
const OFFLOAD_SUFFIX = '-offload';

interface Mode {
  /** As written on the command line: a base, with `-offload` for offloads on. */
  id: string;
  base: Base;
  offloads: boolean;
}

/** A bad command line: its message is all the user needs. */
class UsageError extends Error {}

const isKernel = (m: Mode) => m.base === 'kernel' || m.base === 'kernel2';

function parseMode(id: string): Mode {
  const offloads = id.endsWith(OFFLOAD_SUFFIX);
  const base = (offloads ? id.slice(0, -OFFLOAD_SUFFIX.length) : id) as Base;
  if (!BASES.includes(base)) throw new UsageError(`unknown mode ${id}: one of ${BASES.join(', ')}, each with or without ${OFFLOAD_SUFFIX}`);
  // libpcap cannot exchange virtio-net headers: super-frames with partial checksums would leave broken.
  if (offloads && base === 'cap') throw new UsageError('cap-offload: libpcap ports cannot carry offloaded frames (no virtio-net headers); use cap');
  return { id, base, offloads };
}

/** Issue 9's targets. */
const TARGETS = {
  ratio1kVsKb2: 0.95,
  ratio100kOffloadVsKb: 0.6,
  addedRttP50Ms: 0.1,
  c1P99VsKb: 2,
  timeoutCheckpoints: 0,
  rss100kFlowsMiB: 200,
} as const;

/** Pings sent with the warm-up's wrk load (every 1 ms), so the ICMP path is optimized before the idle ping is measured. */
const WARM_UP_PINGS = 1000;
const WARM_UP_PING_INTERVAL_S = 0.001;

/** The flood size issue 9's memory target is stated for. */
const RSS_TARGET_FLOWS = 100_000;

/** A shadowvm run that asked this many `timeout` checkpoints had a storm: the bench's summary says FAIL. */
const TIMEOUT_STORM = 3;

interface Options {
  modes: Mode[];
  rounds: number;
  prefix: string;
  seconds: number;
  wrk: WrkOptions;
  /** One connection, for request latency without queueing. */
  c1: WrkOptions;
  pingCount: number;
  pingIntervalS: number;
  iperf: boolean;
  /** Flows of the memory flood after the rounds (0: none). */
  floodFlows: number;
  floodPerMs: number;
}

const USAGE = `node dist/bench/lab-bench.js [--rounds 3] [--seconds 5] [--modes ${DEFAULT_MODES.join(',')}]
  [--prefix svmlb] [--flood-flows 100000 (0: no flood)] [--iperf]
modes: ${BASES.join(', ')}; add ${OFFLOAD_SUFFIX} for offloads on (not cap)`;

function parseArgs(argv: string[]): Options {
  const o: Options = {
    modes: DEFAULT_MODES.map(parseMode), rounds: 3, prefix: 'svmlb', seconds: 5,
    wrk: { threads: 2, connections: 32, seconds: 5 }, c1: { threads: 1, connections: 1, seconds: 5 },
    pingCount: 200, pingIntervalS: 0.01, iperf: false, floodFlows: RSS_TARGET_FLOWS, floodPerMs: 5,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new UsageError(`${a} needs a value`);
      return argv[++i];
    };
    const num = (min: number) => {
      const v = Number(value());
      if (!(v >= min)) throw new UsageError(`${a} must be a number ≥ ${min}`);
      return v;
    };
    if (a === '--modes') o.modes = value().split(',').map((m) => parseMode(m.trim()));
    else if (a === '--rounds') o.rounds = Math.floor(num(1));
    else if (a === '--seconds') o.seconds = num(1);
    else if (a === '--prefix') o.prefix = value();
    else if (a === '--flood-flows') o.floodFlows = Math.floor(num(0));
    else if (a === '--iperf') o.iperf = true;
    else if (a === '--help') {
      process.stdout.write(`${USAGE}\n`);
      process.exit(0);
    } else throw new UsageError(`unknown option ${a}\n${USAGE}`);
  }
  o.wrk = { ...o.wrk, seconds: o.seconds };
  o.c1 = { ...o.c1, seconds: o.seconds };
  return o;
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
  rxFramesByPort: Record<string, number>;
  txFrames: number;
  txFramesByPort: Record<string, number>;
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
    const d = n - ((b.checkpoints.requested as Record<string, number>)[reason] ?? 0);
    if (d) requested[reason] = d;
  }
  return {
    wallMs,
    cpuUs,
    cpuSystemUs: after.cpu.system - before.cpu.system,
    cpuPercentOfOneCore: (cpuUs / 1000 / wallMs) * 100,
    rxFrames,
    rxFramesByPort: Object.fromEntries(a.ports.map((p, i) => [p.role, p.rxFrames - b.ports[i].rxFrames])),
    txFrames: sumPorts(a, 'txFrames') - sumPorts(b, 'txFrames'),
    txFramesByPort: Object.fromEntries(a.ports.map((p, i) => [p.role, p.txFrames - b.ports[i].txFrames])),
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

/** Collects the bridge's warnings while it is measured (not its start and stop) and the first mismatch events of each phase. */
class EventTap {
  /** null: not measuring (the lab's start, the agent's first checkpoint, the stop). */
  phase: string | null = null;
  readonly samples = new Map<string, string[]>();
  readonly counts: Record<string, number> = {};
  /** Each `timeout` checkpoint's `backup-late` line (its flow and why), at most 5 per run: a storm's first cases. */
  readonly timeouts: string[] = [];
  readonly log: LogFn = (level, event, fields) => {
    if (this.phase !== null && event === 'backup-late' && this.timeouts.length < 5) {
      const f = fields ?? {};
      this.timeouts.push(`${this.phase}: ${String(f.flow)}: held ${String(f.heldMs)} ms, backup quiet ${String(f.backupQuietMs)} ms, past the match: primary ${String(f.primaryAheadBytes)} B, backup ${String(f.backupAheadBytes)} B; ${String(f.heldFrames)} frame(s) held`);
    }
    if (level === 'debug' || level === 'info' || this.phase === null || event === 'backup-late') return;
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

function portsText(ports: PortInfo[] | undefined): string {
  if (!ports?.length) return '';
  const p = ports[0];
  const same = ports.every((q) => q.kind === p.kind && q.vnetHdr === p.vnetHdr && q.ringSlots === p.ringSlots && q.slotBytes === p.slotBytes);
  const one = (q: PortInfo) => `${q.kind}${q.vnetHdr !== undefined ? `, vnetHdr ${q.vnetHdr ? 'on' : 'off'}` : ''}${q.ringSlots ? `, receive ring ${q.ringSlots} slots × ${q.slotBytes} B` : ''}`;
  return same ? `${one(p)} (each of ${ports.map((q) => q.role).join(', ')})` : ports.map((q) => `${q.role} ${one(q)}`).join('; ');
}

// ------------------------------------------------------------------ one (round, mode)

interface Measured { hostCpuBusyPercent: number; hostCpuUs: number; bridge?: BridgePhase }

interface WrkPhase extends WrkResult, Measured {
  /** KB2: what the backup's own client got at the same time. */
  twin?: WrkResult;
  /** Machine CPU (all CPUs busy, /proc/stat) ÷ requests; KB2: ÷ request pairs ((first + second client's requests) / 2). */
  hostCpuUsPerRequest: number;
  /** process.cpuUsage() of this process (bridge and lab agent) ÷ requests; shadowvm only. */
  bridgeCpuUsPerRequest: number;
}

type PingPhase = PingResult & Measured & { probe?: LatencyProbeReport };
type IperfPhase = IperfResult & Measured & { primaryServer: string; backupServer: string; primaryServerLogTail: string; backupServerLogTail: string };

interface RunResult {
  mode: string;
  base: Base;
  offloads: boolean;
  round: number;
  ok: boolean;
  error?: string;
  setupMs: number;
  offloadState: Record<string, Record<string, string>>;
  offloadSummary: string;
  sanity: Record<string, { ok: boolean; status: number; bytes: number; error?: string }>;
  ping?: PingPhase;
  wrk1k?: WrkPhase;
  wrk100k?: WrkPhase;
  c1?: WrkPhase;
  iperf?: IperfPhase;
  /** shadowvm: the bridge's counters from the first sanity fetch to the end of the last phase. */
  whole?: BridgePhase;
  bridgeWarnings?: Record<string, number>;
  /** The flows (and why) of the run's first `timeout` checkpoints. */
  timeoutSamples?: string[];
  ports?: PortInfo[];
  leftovers: string[];
}

interface LabUnderTest {
  lab: Lab;
  bridge?: Bridge;
  tap?: EventTap;
  /** KB2: the backup's own client namespace. */
  twin?: string;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function sanityFetch(netns: string, url: string): Promise<{ ok: boolean; status: number; bytes: number; error?: string }> {
  // The path must work before it is measured; a kernel bridge's ports may take a moment to forward.
  let s = await fetchStatus(netns, url);
  for (let i = 0; i < 20 && !s.ok; i++) {
    await sleep(100);
    s = await fetchStatus(netns, url);
  }
  return s;
}

async function measure(t: LabUnderTest, o: Options, r: RunResult, say: (s: string) => void): Promise<void> {
  const { lab } = t;
  const ns = lab.client.netns;
  const url = (file: string) => `http://${lab.serviceIpv4}/${file}`;
  const start = t.bridge ? readCounters(t.bridge) : null;

  for (const obj of Object.values(BENCH_OBJECTS)) {
    for (const client of [ns, ...(t.twin ? [t.twin] : [])]) {
      const s = await sanityFetch(client, url(obj.file));
      r.sanity[`${client} ${obj.file}`] = s;
      if (!s.ok || s.bytes !== obj.bytes) throw new Error(`sanity fetch of ${url(obj.file)} from ${client} through ${r.mode} failed: ${s.error ?? `status ${s.status}, ${s.bytes} bytes (want ${obj.bytes})`}`);
    }
  }

  const phase = async <T extends object>(name: string, fn: () => Promise<T>): Promise<T & Measured> => {
    say(`    ${name}…`);
    if (t.tap) t.tap.phase = name;
    const before = t.bridge ? readCounters(t.bridge) : null;
    const hostBefore = readHostCpu();
    const value = await fn();
    const hostAfter = readHostCpu();
    const m: Measured = { hostCpuBusyPercent: hostCpuBusyPercent(hostBefore, hostAfter), hostCpuUs: hostCpuBusyUs(hostBefore, hostAfter) };
    if (t.bridge && before) m.bridge = phaseOf(before, readCounters(t.bridge), t.tap!.take(name));
    return { ...value, ...m };
  };
  /** wrk from the client and, in KB2, from the twin at the same moment (and `alongside`, if given). */
  const wrkPhase = async (name: string, file: string, w: WrkOptions, alongside?: () => Promise<unknown>): Promise<WrkPhase> => {
    const p = await phase(name, async () => {
      const [first, twin] = await Promise.all([runWrk(ns, url(file), w), t.twin ? runWrk(t.twin, url(file), w) : null, alongside?.()]);
      return { ...first, ...(twin ? { twin } : {}) };
    });
    const pairs = p.twin ? (p.requests + p.twin.requests) / 2 : p.requests;
    return {
      ...p,
      hostCpuUsPerRequest: p.ok && pairs > 0 ? p.hostCpuUs / pairs : NaN,
      bridgeCpuUsPerRequest: p.ok && p.bridge && p.requests > 0 ? p.bridge.cpuUs / p.requests : NaN,
    };
  };

  // Warm-up: JIT of the bridge's hot path, nginx's caches, the flow table; not reported. Pings go with
  // the wrk load: code that V8 optimized on TCP alone is deoptimized by the first ICMP frames (Egress.fromVm,
  // Ingress.forward: %GetOptimizationStatus) and takes thousands of frames to be optimized again, so without
  // them the idle ping measured that transient (about 0.1 ms of its p50) rather than the bridge.
  await wrkPhase('warm-up', BENCH_OBJECTS.small.file, { ...o.wrk, seconds: 1 }, () => runPing(ns, lab.serviceIpv4, WARM_UP_PINGS, WARM_UP_PING_INTERVAL_S));
  await sleep(1000);
  const probe = t.bridge ? new LatencyProbe(t.bridge, r.base !== 'cap') : null;
  try {
    r.ping = await phase('ping idle', () => runPing(ns, lab.serviceIpv4, o.pingCount, o.pingIntervalS));
  } finally {
    const report = probe?.stop();
    if (r.ping && report) r.ping.probe = report;
  }
  r.wrk1k = await wrkPhase('wrk 1 KiB', BENCH_OBJECTS.small.file, o.wrk);
  r.wrk100k = await wrkPhase('wrk 100 KiB', BENCH_OBJECTS.large.file, o.wrk);
  r.c1 = await wrkPhase('wrk 1 KiB, one connection', BENCH_OBJECTS.small.file, o.c1);
  if (o.iperf) {
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
  if (t.bridge && start) r.whole = phaseOf(start, readCounters(t.bridge), []);
}

function newResult(mode: Mode, round: number): RunResult {
  return { mode: mode.id, base: mode.base, offloads: mode.offloads, round, ok: false, setupMs: 0, offloadState: {}, offloadSummary: '', sanity: {}, leftovers: [] };
}

/** The KB2 twin's namespace: not one of the lab's, so teardownLab leaves it; removeTwinClient takes it. */
const twinNetns = (prefix: string) => `${prefix}-client2`;

/** Everything of this prefix that is still there (after a run's teardown: nothing). */
function leftoversOf(prefix: string): string[] {
  const left = findLabLeftovers(prefix);
  const out = [...left.namespaces.map((n) => `namespace ${n}`), ...left.links.map((l) => `link ${l}`), ...left.processes.map((p) => `process ${p}`)];
  for (const link of [kernelBridgeName(prefix), twinBridgeName(prefix), twinHostIf(prefix)]) if (linkExists(link)) out.push(`link ${link}`);
  if (existsSync(`/run/netns/${twinNetns(prefix)}`)) out.push(`namespace ${twinNetns(prefix)}`);
  return out;
}

async function turnOffloadsOn(nodes: readonly Pick<LabNode, 'netns' | 'nsIf'>[]): Promise<void> {
  for (const node of nodes) await offloadsOn(node);
}

async function runKernel(mode: Mode, round: number, o: Options, say: (s: string) => void): Promise<RunResult> {
  const r = newResult(mode, round);
  const t0 = Date.now();
  const lab = buildLab({ prefix: o.prefix });
  try {
    const servers = await startLabServers(lab);
    writeBenchObjects(servers);
    if (o.iperf) await startIperfServers(lab);
    await waitUntilQuiet(lab);
    addKernelBridge(lab);
    const twin = mode.base === 'kernel2' ? addTwinClient(o.prefix, twinNetns(o.prefix), lab.backup.hostIf, lab.backup) : undefined;
    if (mode.offloads) await turnOffloadsOn([...lab.nodes, ...(twin ? [{ netns: twin, nsIf: lab.client.nsIf }] : [])]);
    r.offloadState = readOffloads(lab);
    r.offloadSummary = describeOffloads(r.offloadState);
    r.setupMs = Date.now() - t0;
    await measure({ lab, twin }, o, r, say);
    r.ok = true;
  } catch (e) {
    r.error = (e as Error).message;
  } finally {
    removeTwinClient(o.prefix, twinNetns(o.prefix));
    removeKernelBridge(o.prefix);
    teardownLab(lab);
    r.leftovers = leftoversOf(o.prefix);
  }
  return r;
}

/** What the pipeline runs with in each shadowvm mode, beyond startBridgedLab's `resync: 'align'`. */
function configOf(base: Base): Partial<PipelineConfig> | undefined {
  if (base === 'afpacket-date') return { normalize: { httpDate: true, httpDateToleranceMs: 2000 } };
  // Every flow unchecked: the primary's output goes out at once, the backup still gets the client's frames.
  if (base === 'sink') return { flowPolicy: [{ action: 'pass' }] };
  return undefined;
}

async function runShadow(mode: Mode, round: number, o: Options, say: (s: string) => void): Promise<RunResult> {
  const r = newResult(mode, round);
  const t0 = Date.now();
  const tap = new EventTap();
  let bridged: BridgedLab | null = null;
  let undoRealtime: (() => void) | null = null;
  try {
    // The realtime modes run the data plane as `shadowvm run` does: SCHED_RR, its inline-send gate, and its --send-thread auto (off with virtio-net headers).
    const realtime = mode.base === 'afpacket-rt' || mode.base === 'afpacket-rt-gchelpers' || mode.base === 'afpacket-rt-normal-helpers' || mode.base === 'afpacket-rt-inline1' || mode.base === 'afpacket-rt-thread';
    if (realtime) undoRealtime = realtimeForRun({ normalHelpers: mode.base === 'afpacket-rt-gchelpers' || mode.base === 'afpacket-rt-normal-helpers', scavengeAlone: mode.base === 'afpacket-rt-normal-helpers' });
    const io: IoBackend = mode.base === 'cap' ? 'cap' : 'afpacket';
    bridged = await startBridgedLab({ prefix: o.prefix, io, log: tap.log, config: configOf(mode.base), vnetHdr: mode.offloads, sweepOnWake: mode.base !== 'afpacket-perport', sendThread: mode.base !== 'afpacket-sync' && !(realtime && mode.offloads), busyPollUs: mode.base === 'afpacket-spin' ? SPIN_US : 0, splitRings: mode.base !== 'afpacket-onering', splitRingsFanout: mode.base !== 'afpacket-nofanout', ...(realtime ? { sendInlineFrames: mode.base === 'afpacket-rt-inline1' ? 1 : mode.base === 'afpacket-rt-thread' ? 0 : DEFAULT_SEND_INLINE_FRAMES, inlineSendsMaxFps: DEFAULT_SEND_INLINE_MAX_FPS } : {}) });
    current.bridged = bridged;
    const { lab } = bridged;
    r.ports = describePorts(bridged.bridge);
    writeBenchObjects(bridged.servers);
    if (mode.base === 'sink') await replaceWithDiscardServer(lab, lab.backup, 'nginx', 80);
    if (o.iperf) await startIperfServers(lab);
    if (mode.offloads) await turnOffloadsOn(lab.nodes);
    r.offloadState = readOffloads(lab);
    r.offloadSummary = describeOffloads(r.offloadState);
    r.setupMs = Date.now() - t0;
    await measure({ lab, bridge: bridged.bridge, tap }, o, r, say);
    tap.phase = null;
    r.ok = true;
  } catch (e) {
    r.error = (e as Error).message;
  } finally {
    r.bridgeWarnings = tap.counts;
    r.timeoutSamples = tap.timeouts;
    if (bridged) await bridged.stop();
    undoRealtime?.();
    current.bridged = null;
    // startBridgedLab tears down on its own failures; make sure of it either way.
    teardownLab(o.prefix);
    r.leftovers = leftoversOf(o.prefix);
  }
  return r;
}

// ------------------------------------------------------------------ 100,000 flows: the bridge's RSS

/**
 * The port configurations the flood measures: `run`'s default (virtio-net
 * headers, each port read through two rings: 4,096 slots of 2 KiB and 128 of
 * 68 KiB), one ring of 512 68 KiB slots (`--no-split-rings`), and no virtio-net
 * headers (8 MiB of 2 KiB slots a port).
 */
const FLOOD_PORTS = {
  default: { args: ['--vnet-hdr'], label: 'run\'s default (--vnet-hdr, split rings)' },
  'one-ring': { args: ['--vnet-hdr', '--no-split-rings'], label: '--vnet-hdr --no-split-rings' },
  'no-vnet-hdr': { args: ['--no-vnet-hdr'], label: '--no-vnet-hdr' },
} as const;
type FloodPorts = keyof typeof FLOOD_PORTS;

interface FloodResult {
  ok: boolean;
  /** Which of FLOOD_PORTS `run` had. */
  ports: FloodPorts;
  error?: string;
  flows: number;
  maxFlows: number;
  /** Frames sent, over every pass (the first, and the top-ups of flows that were not made). */
  sent: number;
  passes: number;
  baselineRssMiB: number;
  /** The largest VmRSS sampled (every 100 ms) or VmHWM, whichever is larger. */
  peakRssMiB: number;
  rssAfterMiB: number;
  hwmMiB: number;
  /** Flows in the table once the flood was over (flows never created: ring drops). */
  flowsActive: number;
  flowsCreated: number;
  uplinkRxDrops: number;
  leftovers: string[];
}

/**
 * `shadowvm run` (its own process: its RSS is the bridge's alone) with a
 * table large enough for the flood (nothing evicted) and no SYN admission
 * budget, then `flows` flows as bench/flow-flood makes them (half SYNs, half
 * datagrams both replicas echo).
 */
async function measureFlowMemory(o: Options, say: (s: string) => void, ports: FloodPorts): Promise<FloodResult> {
  const maxFlows = 2 ** Math.ceil(Math.log2(o.floodFlows + 1024));
  const r: FloodResult = {
    ok: false, ports, flows: o.floodFlows, maxFlows, sent: 0, passes: 0, baselineRssMiB: NaN, peakRssMiB: NaN, rssAfterMiB: NaN, hwmMiB: NaN,
    flowsActive: NaN, flowsCreated: NaN, uplinkRxDrops: NaN, leftovers: [],
  };
  const lab = buildLab({ prefix: o.prefix });
  const children: Child[] = [];
  let sampler: RssSampler | null = null;
  try {
    await startLabServers(lab);
    children.push(...prepareFloodReplicas(lab));
    await waitUntilQuiet(lab);
    const bridge = await startBridgeProcess(lab, o.prefix, { maxFlows, policy: { newFlowsPerSecond: 0 } }, FLOOD_PORTS[ports].args);
    children.push(bridge.proc, bridge.agent);
    const pid = bridge.proc.child.pid!;
    await sleep(1000);
    r.baselineRssMiB = memoryOf(pid).rssMiB;
    const before = await bridgeStatus(bridge.controlSocket);
    sampler = new RssSampler(pid);
    // Some flows are never made (a datagram whose echo is lost; a SYN the ring dropped): top up, with fresh
    // spoofed sources, until the table holds the number asked for (at most three times).
    let want = o.floodFlows;
    for (let pass = 0; pass < 4 && want > 0; pass++) {
      const { syn, udp } = await floodFlows(lab, { flows: want, perMs: o.floodPerMs, seed: 7 + 1000 * pass }, undefined, (s) => say(`    ${s}…`));
      r.sent += syn.sent + udp.sent;
      r.passes = pass + 1;
      await sleep(2000);
      const active = (await bridgeStatus(bridge.controlSocket))?.flows.active ?? NaN;
      if (!(active < o.floodFlows)) break;
      want = Math.ceil((o.floodFlows - active) * 1.2) + 100;
    }
    sampler.stop();
    const after = memoryOf(pid);
    const status = await bridgeStatus(bridge.controlSocket);
    r.rssAfterMiB = after.rssMiB;
    r.hwmMiB = after.hwmMiB;
    r.peakRssMiB = Math.max(sampler.peakMiB, after.hwmMiB);
    if (status) {
      r.flowsActive = status.flows.active;
      r.flowsCreated = status.flows.created - (before?.flows.created ?? 0);
      r.uplinkRxDrops = (status.ports.find((p) => p.role === 'uplink')?.rxDrops ?? NaN) - (before?.ports.find((p) => p.role === 'uplink')?.rxDrops ?? 0);
    }
    r.ok = status !== null && Number.isFinite(r.peakRssMiB);
    if (!r.ok) r.error = 'the bridge did not answer status after the flood';
  } catch (e) {
    r.error = (e as Error).message;
  } finally {
    sampler?.stop();
    for (const c of children) if (c.child.exitCode === null) c.child.kill('SIGKILL');
    teardownLab(lab);
    r.leftovers = leftoversOf(o.prefix);
  }
  return r;
}

// ------------------------------------------------------------------ cleanup on interruption

const current: { prefix: string | null; bridged: BridgedLab | null } = { prefix: null, bridged: null };

/** Synchronous: usable from signal handlers and 'exit'. Kills everything in the namespaces, deletes them and the kernel bridges. */
function emergencyTeardown(): void {
  if (!current.prefix) return;
  const prefix = current.prefix;
  current.prefix = null;
  removeTwinClient(prefix, twinNetns(prefix));
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

// ------------------------------------------------------------------ summary

interface Metric {
  key: string;
  label: string;
  digits: number;
  value: (r: RunResult) => number;
}

const okWrk = (w: WrkPhase | undefined, f: (w: WrkPhase) => number) => (w?.ok ? f(w) : NaN);
/** wrk prints a latency of 0 when no request completed in time to be timed: no figure. */
const okLatency = (w: WrkPhase | undefined, f: (w: WrkPhase) => number) => {
  const v = okWrk(w, f);
  return v > 0 ? v : NaN;
};
const requested = (r: RunResult, reason: string) => (r.whole ? r.whole.checkpointsRequested[reason] ?? 0 : NaN);

const METRICS: Metric[] = [
  { key: 'rps1k', label: 'wrk 1 KiB req/s', digits: 0, value: (r) => okWrk(r.wrk1k, (w) => w.requestsPerSecond) },
  { key: 'rps100k', label: 'wrk 100 KiB req/s', digits: 0, value: (r) => okWrk(r.wrk100k, (w) => w.requestsPerSecond) },
  { key: 'twinRps1k', label: 'KB2 second client 1 KiB req/s', digits: 0, value: (r) => (r.wrk1k?.twin?.ok ? r.wrk1k.twin.requestsPerSecond : NaN) },
  { key: 'twinRps100k', label: 'KB2 second client 100 KiB req/s', digits: 0, value: (r) => (r.wrk100k?.twin?.ok ? r.wrk100k.twin.requestsPerSecond : NaN) },
  { key: 'hostCpu1k', label: 'machine CPU µs/req 1 KiB', digits: 0, value: (r) => okWrk(r.wrk1k, (w) => w.hostCpuUsPerRequest) },
  { key: 'hostCpu100k', label: 'machine CPU µs/req 100 KiB', digits: 0, value: (r) => okWrk(r.wrk100k, (w) => w.hostCpuUsPerRequest) },
  { key: 'bridgeCpu1k', label: 'bridge CPU µs/req 1 KiB', digits: 0, value: (r) => okWrk(r.wrk1k, (w) => w.bridgeCpuUsPerRequest) },
  { key: 'bridgeCpu100k', label: 'bridge CPU µs/req 100 KiB', digits: 0, value: (r) => okWrk(r.wrk100k, (w) => w.bridgeCpuUsPerRequest) },
  { key: 'busy1k', label: 'machine busy % 1 KiB', digits: 0, value: (r) => okWrk(r.wrk1k, (w) => w.hostCpuBusyPercent) },
  { key: 'busy100k', label: 'machine busy % 100 KiB', digits: 0, value: (r) => okWrk(r.wrk100k, (w) => w.hostCpuBusyPercent) },
  { key: 'c1P50', label: 'one connection p50 ms', digits: 3, value: (r) => okLatency(r.c1, (w) => w.latencyP50Ms) },
  { key: 'c1P99', label: 'one connection p99 ms', digits: 3, value: (r) => okLatency(r.c1, (w) => w.latencyP99Ms) },
  { key: 'c1Rps', label: 'one connection req/s', digits: 0, value: (r) => okWrk(r.c1, (w) => w.requestsPerSecond) },
  { key: 'c1Busy', label: 'machine busy % one connection', digits: 0, value: (r) => okWrk(r.c1, (w) => w.hostCpuBusyPercent) },
  { key: 'pingP50', label: 'idle ping p50 ms', digits: 3, value: (r) => (r.ping?.ok ? r.ping.p50Ms : NaN) },
  { key: 'pingP99', label: 'idle ping p99 ms', digits: 3, value: (r) => (r.ping?.ok ? r.ping.p99Ms : NaN) },
  { key: 'iperfGbps', label: 'iperf3 Gbit/s', digits: 2, value: (r) => (r.iperf?.ok ? r.iperf.receivedGbps : NaN) },
  { key: 'timeouts', label: 'timeout checkpoints per run', digits: 0, value: (r) => requested(r, 'timeout') },
  { key: 'mismatchCkpts', label: 'mismatch checkpoints per run', digits: 0, value: (r) => requested(r, 'mismatch') },
  { key: 'dateNormalized', label: 'Date values normalized per run', digits: 0, value: (r) => r.whole?.httpDateNormalized ?? NaN },
];

/** The table's columns: figures kernel modes do not have are left to the shadowvm ones, and so on. */
const TABLES: { title: string; keys: string[] }[] = [
  { title: 'Throughput and CPU (KB2: the first client\'s req/s; machine CPU per request pair)', keys: ['rps1k', 'rps100k', 'hostCpu1k', 'hostCpu100k', 'bridgeCpu1k', 'bridgeCpu100k'] },
  { title: 'Latency, load and checkpoints', keys: ['pingP50', 'c1P50', 'c1P99', 'c1Busy', 'busy1k', 'busy100k', 'timeouts', 'mismatchCkpts'] },
];

type Summary = Record<string, Record<string, Spread>>;

function summarize(results: RunResult[], modes: Mode[]): Summary {
  const s: Summary = {};
  for (const m of modes) {
    s[m.id] = {};
    for (const metric of METRICS) s[m.id][metric.key] = spread(results.filter((r) => r.mode === m.id).map(metric.value));
  }
  return s;
}

/** Per-round ratio of a mode's figure to a baseline's in the same round (paired), over the rounds. */
function pairedRatio(results: RunResult[], mode: string, base: string, metric: string): Spread {
  const m = METRICS.find((x) => x.key === metric)!;
  const ratios: number[] = [];
  for (const r of results.filter((x) => x.mode === mode)) {
    const b = results.find((x) => x.mode === base && x.round === r.round);
    if (b) ratios.push(ratioOf(m.value(r), m.value(b)));
  }
  return spread(ratios);
}

/** The figures issue 9 names, from the medians. NaN (JSON null) where a mode they need did not run or failed. */
interface Headline {
  ratio_1k_vs_kb: number;
  ratio_1k_vs_kb2: number;
  ratio_100k_vs_kb: number;
  ratio_100k_vs_kb2: number;
  /** The 100 KiB target's figure: afpacket-offload ÷ kernel-offload. */
  ratio_100k_offload_vs_kb: number;
  added_rtt_p50_ms: number;
  c1_p99_ms: number;
  c1_p99_ms_kb: number;
  /** The same figures with the data plane at SCHED_RR (afpacket-rt: what `run --realtime auto` gives as root). */
  ratio_1k_vs_kb2_rt: number;
  ratio_100k_vs_kb_rt: number;
  added_rtt_p50_ms_rt: number;
  c1_p99_ms_rt: number;
  timeout_checkpoints: number;
  /** Runs with a timeout storm (≥ TIMEOUT_STORM timeout checkpoints). */
  timeout_storms: { round: number; mode: string; timeouts: number }[];
  /** With `run`'s default ports (--vnet-hdr, split rings). */
  rss_100k_flows_mib: number;
  rss_100k_flows_mib_one_ring: number;
  rss_100k_flows_mib_no_vnet_hdr: number;
}

function headlineOf(results: RunResult[], summary: Summary, floods: FloodResult[]): Headline {
  const peak = (ports: FloodPorts) => {
    const f = floods.find((x) => x.ports === ports);
    return f?.ok && f.flows === RSS_TARGET_FLOWS ? f.peakRssMiB : NaN;
  };
  const med = (mode: string, key: string) => summary[mode]?.[key]?.median ?? NaN;
  const shadowRuns = results.filter((r) => !isKernel(parseMode(r.mode)));
  const timeouts = shadowRuns.map((r) => requested(r, 'timeout'));
  return {
    ratio_1k_vs_kb: ratioOf(med('afpacket', 'rps1k'), med('kernel', 'rps1k')),
    ratio_1k_vs_kb2: ratioOf(med('afpacket', 'rps1k'), med('kernel2', 'rps1k')),
    ratio_100k_vs_kb: ratioOf(med('afpacket', 'rps100k'), med('kernel', 'rps100k')),
    ratio_100k_vs_kb2: ratioOf(med('afpacket', 'rps100k'), med('kernel2', 'rps100k')),
    ratio_100k_offload_vs_kb: ratioOf(med('afpacket-offload', 'rps100k'), med('kernel-offload', 'rps100k')),
    added_rtt_p50_ms: med('afpacket', 'pingP50') - med('kernel', 'pingP50'),
    c1_p99_ms: med('afpacket', 'c1P99'),
    c1_p99_ms_kb: med('kernel', 'c1P99'),
    ratio_1k_vs_kb2_rt: ratioOf(med('afpacket-rt', 'rps1k'), med('kernel2', 'rps1k')),
    ratio_100k_vs_kb_rt: ratioOf(med('afpacket-rt', 'rps100k'), med('kernel', 'rps100k')),
    added_rtt_p50_ms_rt: med('afpacket-rt', 'pingP50') - med('kernel', 'pingP50'),
    c1_p99_ms_rt: med('afpacket-rt', 'c1P99'),
    // Runs that failed before their counters were read count nothing: the per-run lines show them.
    timeout_checkpoints: shadowRuns.length ? timeouts.filter(Number.isFinite).reduce((a, b) => a + b, 0) : NaN,
    timeout_storms: shadowRuns.filter((r) => requested(r, 'timeout') >= TIMEOUT_STORM).map((r) => ({ round: r.round, mode: r.mode, timeouts: requested(r, 'timeout') })),
    rss_100k_flows_mib: peak('default'),
    rss_100k_flows_mib_one_ring: peak('one-ring'),
    rss_100k_flows_mib_no_vnet_hdr: peak('no-vnet-hdr'),
  };
}

function verdict(ok: boolean | null): string {
  return ok === null ? 'n/a' : ok ? 'met' : 'NOT met';
}

const known = (...v: number[]) => v.every(Number.isFinite);

function targetLines(h: Headline, results: RunResult[], floods: FloodResult[]): string[] {
  const pr = (mode: string, base: string, key: string) => {
    const s = pairedRatio(results, mode, base, key);
    return s.n ? `(per round ${ratioCell(s)})` : '';
  };
  const rows: string[][] = [['figure (afpacket unless said)', 'value', 'target', '', 'notes']];
  rows.push(['1 KiB req/s ÷ KB2', fmt(h.ratio_1k_vs_kb2, 2), `≥ ${TARGETS.ratio1kVsKb2}`, verdict(known(h.ratio_1k_vs_kb2) ? h.ratio_1k_vs_kb2 >= TARGETS.ratio1kVsKb2 : null), pr('afpacket', 'kernel2', 'rps1k')]);
  rows.push(['1 KiB req/s ÷ KB', fmt(h.ratio_1k_vs_kb, 2), '', '', pr('afpacket', 'kernel', 'rps1k')]);
  rows.push(['100 KiB req/s ÷ KB (tx csum off)', fmt(h.ratio_100k_vs_kb, 2), '', '', pr('afpacket', 'kernel', 'rps100k')]);
  rows.push(['100 KiB req/s ÷ KB2 (tx csum off)', fmt(h.ratio_100k_vs_kb2, 2), '', '', pr('afpacket', 'kernel2', 'rps100k')]);
  rows.push(['100 KiB req/s ÷ KB, offloads on', fmt(h.ratio_100k_offload_vs_kb, 2), `≥ ${TARGETS.ratio100kOffloadVsKb}`,
    verdict(known(h.ratio_100k_offload_vs_kb) ? h.ratio_100k_offload_vs_kb >= TARGETS.ratio100kOffloadVsKb : null), `afpacket-offload ÷ kernel-offload ${pr('afpacket-offload', 'kernel-offload', 'rps100k')}`]);
  rows.push(['added idle RTT p50 ms (− KB)', fmt(h.added_rtt_p50_ms, 3), `≤ ${TARGETS.addedRttP50Ms}`, verdict(known(h.added_rtt_p50_ms) ? h.added_rtt_p50_ms <= TARGETS.addedRttP50Ms : null), '']);
  rows.push(['one-connection p99 ms', fmt(h.c1_p99_ms, 3), `≤ ${TARGETS.c1P99VsKb}× KB's`,
    verdict(known(h.c1_p99_ms, h.c1_p99_ms_kb) ? h.c1_p99_ms <= TARGETS.c1P99VsKb * h.c1_p99_ms_kb : null), `KB ${fmt(h.c1_p99_ms_kb, 3)} ms (${fmt(ratioOf(h.c1_p99_ms, h.c1_p99_ms_kb), 2)}×)`]);
  rows.push(['1 KiB req/s ÷ KB2, afpacket-rt', fmt(h.ratio_1k_vs_kb2_rt, 2), `≥ ${TARGETS.ratio1kVsKb2}`, verdict(known(h.ratio_1k_vs_kb2_rt) ? h.ratio_1k_vs_kb2_rt >= TARGETS.ratio1kVsKb2 : null), `run --realtime auto (the default, as root) ${pr('afpacket-rt', 'kernel2', 'rps1k')}`]);
  rows.push(['100 KiB req/s ÷ KB (tx csum off), afpacket-rt', fmt(h.ratio_100k_vs_kb_rt, 2), '', '', pr('afpacket-rt', 'kernel', 'rps100k')]);
  rows.push(['added idle RTT p50 ms (− KB), afpacket-rt', fmt(h.added_rtt_p50_ms_rt, 3), `≤ ${TARGETS.addedRttP50Ms}`, verdict(known(h.added_rtt_p50_ms_rt) ? h.added_rtt_p50_ms_rt <= TARGETS.addedRttP50Ms : null), '']);
  rows.push(['one-connection p99 ms, afpacket-rt', fmt(h.c1_p99_ms_rt, 3), `≤ ${TARGETS.c1P99VsKb}× KB's`,
    verdict(known(h.c1_p99_ms_rt, h.c1_p99_ms_kb) ? h.c1_p99_ms_rt <= TARGETS.c1P99VsKb * h.c1_p99_ms_kb : null), `KB ${fmt(h.c1_p99_ms_kb, 3)} ms (${fmt(ratioOf(h.c1_p99_ms_rt, h.c1_p99_ms_kb), 2)}×)`]);
  rows.push(['timeout checkpoints, all shadowvm runs', fmt(h.timeout_checkpoints, 0), `${TARGETS.timeoutCheckpoints}`,
    verdict(known(h.timeout_checkpoints) ? h.timeout_checkpoints <= TARGETS.timeoutCheckpoints : null), '']);
  for (const ports of Object.keys(FLOOD_PORTS) as FloodPorts[]) {
    const flood = floods.find((f) => f.ports === ports);
    const value = ports === 'default' ? h.rss_100k_flows_mib : ports === 'one-ring' ? h.rss_100k_flows_mib_one_ring : h.rss_100k_flows_mib_no_vnet_hdr;
    const otherFlood = flood?.ok && flood.flows !== RSS_TARGET_FLOWS;
    const how = FLOOD_PORTS[ports].label;
    rows.push([`RSS MiB, bridge process with ${otherFlood ? `${flood!.flows} (not 100,000)` : '100,000'} flows, ${how}`, fmt(otherFlood ? flood!.peakRssMiB : value, 0), `≤ ${TARGETS.rss100kFlowsMiB}`,
      verdict(known(value) ? value <= TARGETS.rss100kFlowsMiB : null),
      flood ? (flood.ok ? `baseline ${fmt(flood.baselineRssMiB, 0)}, after ${fmt(flood.rssAfterMiB, 0)}; ${flood.flowsActive} flows in the table of ${flood.maxFlows}` : `FAILED: ${flood.error}`) : 'not measured (--flood-flows 0)']);
  }
  return layout(rows).map((l) => `  ${l}`);
}

function runLine(r: RunResult): string[] {
  const out: string[] = [];
  const head = `  round ${r.round} ${r.mode}: ${r.ok ? 'ok' : `FAILED: ${r.error}`}; setup ${(r.setupMs / 1000).toFixed(1)} s${r.leftovers.length ? `; LEFTOVERS ${r.leftovers.join(', ')}` : ''}`;
  out.push(head);
  const w = r.whole;
  if (w) {
    const reasons = Object.entries(w.checkpointsRequested).map(([k, n]) => `${k} ${n}`).join(', ') || 'none';
    const parts = [
      `checkpoints asked: ${reasons} (done ${w.checkpointsDone}, failed ${w.checkpointsFailed})${requested(r, 'timeout') >= TIMEOUT_STORM ? ' TIMEOUT STORM' : ''}`,
      `mismatches ${w.mismatches}`,
      w.httpDateNormalized ? `Date values normalized ${w.httpDateNormalized}` : '',
      w.ingressHeldFrames ? `ingress held ${w.ingressHeldFrames} (dropped ${w.ingressHoldDropped})` : '',
      w.rxDrops || w.txErrors ? `rx drops ${Object.entries(w.rxDropsByPort).map(([k, n]) => `${k} ${n}`).join(' ')}, tx errors ${w.txErrors}` : '',
      w.malformed ? `malformed ${w.malformed}` : '',
      `state ${w.stateAfter}`,
    ].filter(Boolean);
    out.push(`      ${parts.join('; ')}`);
    const phases = [['1 KiB', r.wrk1k], ['100 KiB', r.wrk100k]] as const;
    const perPhase = phases.filter(([, p]) => p?.bridge).map(([name, p]) => {
      const b = p!.bridge!;
      const perReq = (n: number) => (p!.requests > 0 ? (n / p!.requests).toFixed(1) : '—');
      const ports = (by: Record<string, number>) => ['uplink', 'primary', 'backup'].map((role) => `${role} ${perReq(by[role] ?? NaN)}`).join(' ');
      return `${name}: ${b.cpuUsPerFrame.toFixed(1)} µs/frame (${b.cpuUs > 0 ? ((b.cpuSystemUs / b.cpuUs) * 100).toFixed(0) : '—'}% system), `
        + `${b.framesPerBreath !== undefined ? `${b.framesPerBreath.toFixed(1)} frames/wake-up, ` : ''}frames per request in: ${ports(b.rxFramesByPort)}, out: ${ports(b.txFramesByPort)}`;
    });
    if (perPhase.length) out.push(`      ${perPhase.join('; ')}`);
    const pr = r.ping?.probe;
    if (pr) {
      const us = (v: number) => (Number.isFinite(v) ? v.toFixed(0) : '—');
      out.push(`      idle RTT: kernel timestamp → JS ${pr.kernelToJsUs ? `p50 ${us(pr.kernelToJsUs.p50)} µs, p99 ${us(pr.kernelToJsUs.p99)} µs` : 'n/a (cap stamps frames in JS)'};`
        + ` backup's echo reply later than the primary's: p50 ${us(pr.backupLagUs.p50)} µs, p99 ${us(pr.backupLagUs.p99)} µs (${pr.backupLagUs.replies});`
        + ` ${pr.tick.calls} ticks (${TICK_MS} ms), mean ${pr.tick.meanUs.toFixed(1)} µs`);
    }
    const samples = [r.wrk1k, r.wrk100k, r.c1].flatMap((p) => p?.bridge?.mismatchSamples ?? []).slice(0, 2);
    for (const s of samples) out.push(`      mismatch: ${s}`);
  }
  const errs = (label: string, p: WrkResult | undefined) => {
    if (!p) return '';
    const e = p.socketErrors;
    const n = e.connect + e.read + e.write + e.timeout + p.non2xx3xx;
    return n || !p.ok ? `${label}: ${p.ok ? '' : `FAILED ${p.error ?? ''}; `}socket errors connect ${e.connect} read ${e.read} write ${e.write} timeout ${e.timeout}, non-2xx/3xx ${p.non2xx3xx}` : '';
  };
  const wrkErrs = [errs('wrk 1 KiB', r.wrk1k), errs('wrk 100 KiB', r.wrk100k), errs('one connection', r.c1), errs('second client 1 KiB', r.wrk1k?.twin), errs('second client 100 KiB', r.wrk100k?.twin)].filter(Boolean);
  if (wrkErrs.length) out.push(`      ${wrkErrs.join('; ')}`);
  if (r.ping?.error) out.push(`      ping: ${r.ping.error}`);
  if (r.iperf) out.push(`      iperf3: ${r.iperf.ok ? `${r.iperf.receivedGbps.toFixed(2)} Gbit/s, ${r.iperf.retransmits} retransmits` : `FAILED ${r.iperf.error}`}; primary ns server: ${r.iperf.primaryServer}; backup ns server: ${r.iperf.backupServer}`);
  const warn = Object.entries(r.bridgeWarnings ?? {}).filter(([k]) => k !== 'warn:mismatch').map(([k, n]) => `${k}×${n}`).join(' ');
  if (warn) out.push(`      bridge warnings: ${warn}`);
  for (const t of r.timeoutSamples ?? []) out.push(`      timeout checkpoint: ${t}`);
  return out;
}

function report(results: RunResult[], o: Options, summary: Summary, h: Headline, floods: FloodResult[], facts: Record<string, string>, factsAfter: Record<string, string>, totalS: number): string[] {
  const out: string[] = [];
  out.push(`lab bench: kernel bridge vs shadowvm on the netns lab (node ${process.version}, kernel ${facts.kernel}, ${facts.cpus} CPUs)`);
  out.push(`  ${o.rounds} round(s) of ${o.modes.map((m) => m.id).join(', ')} (interleaved, a fresh lab each); run took ${totalS.toFixed(0)} s`);
  out.push(`  wrk -t${o.wrk.threads} -c${o.wrk.connections} -d${o.wrk.seconds}s on 1 KiB and 100 KiB; wrk -t1 -c1 -d${o.c1.seconds}s --latency on 1 KiB; ping -c ${o.pingCount} -i ${o.pingIntervalS} at idle${o.iperf ? `; iperf3 -t ${o.seconds}` : ''}`);
  const offOff = results.find((r) => !r.offloads && r.offloadSummary)?.offloadSummary;
  const offOn = results.find((r) => r.offloads && r.offloadSummary)?.offloadSummary;
  if (offOff) out.push(`  offloads off (the lab's own): ${offOff}`);
  if (offOn) out.push(`  offloads on (-offload modes; shadowvm with virtio-net headers): ${offOn}`);
  out.push(`  host: bridge-nf-call-iptables=${facts['bridge-nf-call-iptables']} (read, not changed); loadavg before ${facts.loadavg.split(' ').slice(0, 3).join(' ')}, after ${factsAfter.loadavg.split(' ').slice(0, 3).join(' ')}`);
  out.push('  cells: median [min–max] over the rounds; — : failed or not applicable');
  for (const m of o.modes) out.push(`    ${m.id.padEnd(22)} ${BASE_LABELS[m.base]}${m.offloads ? '; offloads on' : ''}`);
  for (const t of TABLES) {
    out.push('');
    out.push(`${t.title}:`);
    const metrics = t.keys.map((k) => METRICS.find((m) => m.key === k)!);
    const rows = [['mode', ...metrics.map((m) => m.label)]];
    for (const m of o.modes) rows.push([m.id, ...metrics.map((x) => cell(summary[m.id][x.key], x.digits))]);
    out.push(...layout(rows));
  }
  if (o.modes.some((m) => m.base === 'kernel2')) {
    const k2 = summary.kernel2 ?? summary['kernel2-offload'];
    if (k2) out.push(`  KB2's second client (the backup's): 1 KiB ${cell(k2.twinRps1k, 0)} req/s, 100 KiB ${cell(k2.twinRps100k, 0)} req/s`);
  }
  if (o.iperf) out.push(`  iperf3 Gbit/s: ${o.modes.map((m) => `${m.id} ${cell(summary[m.id].iperfGbps, 2)}`).join('; ')}`);
  out.push('');
  out.push('Ratios to the baselines (ratios of the medians above):');
  const shadowModes = o.modes.filter((m) => !isKernel(m));
  const ratioRows = [['mode', '1 KiB ÷ KB', '1 KiB ÷ KB2', '100 KiB ÷ KB', '100 KiB ÷ KB2', 'machine µs/req 1 KiB ÷ KB2', 'machine µs/req 100 KiB ÷ KB2']];
  for (const m of shadowModes) {
    const kb = m.offloads ? 'kernel-offload' : 'kernel';
    const kb2 = m.offloads ? 'kernel2-offload' : 'kernel2';
    const r = (key: string, base: string) => {
      const v = ratioOf(summary[m.id][key].median, summary[base]?.[key]?.median ?? NaN);
      return Number.isFinite(v) ? `${v.toFixed(2)}×` : '—';
    };
    ratioRows.push([m.id, r('rps1k', kb), r('rps1k', kb2), r('rps100k', kb), r('rps100k', kb2), r('hostCpu1k', kb2), r('hostCpu100k', kb2)]);
  }
  if (shadowModes.length) out.push(...layout(ratioRows));
  out.push('  (an -offload mode is compared with kernel-offload and kernel2-offload)');
  out.push('');
  out.push('Issue 9\'s targets:');
  out.push(...targetLines(h, results, floods));
  out.push('');
  out.push('Runs (shadowvm: checkpoints asked by reason over the whole run, from the first sanity fetch to the end):');
  for (const r of results) out.push(...runLine(r));
  for (const flood of floods) {
    out.push(`  flood (${FLOOD_PORTS[flood.ports].label}): ${flood.ok ? 'ok' : `FAILED: ${flood.error}`}; ${flood.sent} frames sent in ${flood.passes} pass(es) for ${flood.flows} flows (half SYNs, half datagrams), maxFlows ${flood.maxFlows}, no SYN budget;`
      + ` flows created ${flood.flowsCreated}, in the table ${flood.flowsActive}, uplink ring drops ${flood.uplinkRxDrops};`
      + ` VmRSS before ${fmt(flood.baselineRssMiB, 1)} MiB, peak ${fmt(flood.peakRssMiB, 1)}, after ${fmt(flood.rssAfterMiB, 1)} (VmHWM ${fmt(flood.hwmMiB, 1)})${flood.leftovers.length ? `; LEFTOVERS ${flood.leftovers.join(', ')}` : ''}`);
  }
  out.push('');
  const failed = results.filter((r) => !r.ok || r.leftovers.length).map((r) => `round ${r.round} ${r.mode}`);
  const storms = h.timeout_storms.map((s) => `round ${s.round} ${s.mode} (${s.timeouts} timeout checkpoints)`);
  const problems = [
    ...(storms.length ? [`timeout storm (≥ ${TIMEOUT_STORM} timeout checkpoints in one run) in ${storms.join(', ')}`] : []),
    ...(failed.length ? [`failed or left something behind: ${failed.join(', ')}`] : []),
    ...(floods.some((f) => !f.ok || f.leftovers.length) ? ['a flow flood failed or left something behind'] : []),
  ];
  out.push(problems.length ? `summary: FAIL: ${problems.join('; ')}` : `summary: PASS: every run ok, no timeout storm (≥ ${TIMEOUT_STORM} timeout checkpoints in one shadowvm run); targets above`);
  return out;
}

// ------------------------------------------------------------------ main

async function main(): Promise<number> {
  const o = parseArgs(process.argv.slice(2));
  if (process.getuid?.() !== 0) {
    process.stderr.write('lab-bench builds network namespaces: run it as root\n');
    return 1;
  }
  current.prefix = o.prefix;
  installCleanupHandlers();
  // Leftovers of an interrupted earlier run (the kernel bridges are outside every namespace).
  removeTwinClient(o.prefix, twinNetns(o.prefix));
  removeKernelBridge(o.prefix);
  teardownLab(o.prefix);

  const startedAt = new Date();
  const facts = hostFacts();
  const say = (s: string) => process.stderr.write(`${s}\n`);
  const results: RunResult[] = [];
  const t0 = Date.now();
  for (let round = 1; round <= o.rounds; round++) {
    for (const mode of o.modes) {
      say(`round ${round}/${o.rounds}, ${mode.id}:`);
      const r = isKernel(mode) ? await runKernel(mode, round, o, say) : await runShadow(mode, round, o, say);
      if (r.error) say(`  failed: ${r.error}`);
      results.push(r);
    }
  }
  const floods: FloodResult[] = [];
  if (o.floodFlows > 0) {
    // run's default first, then one ring of super-frame slots, then without virtio-net headers.
    for (const ports of Object.keys(FLOOD_PORTS) as FloodPorts[]) {
      say(`flow memory: ${o.floodFlows} flows against a bridge process (${FLOOD_PORTS[ports].label}):`);
      const flood = await measureFlowMemory(o, say, ports);
      if (flood.error) say(`  failed: ${flood.error}`);
      floods.push(flood);
    }
  }
  const factsAfter = hostFacts();
  const totalS = (Date.now() - t0) / 1000;
  const summary = summarize(results, o.modes);
  const h = headlineOf(results, summary, floods);
  const lines = report(results, o, summary, h, floods, facts, factsAfter, totalS);
  process.stdout.write(`${lines.join('\n')}\n`);

  const outDir = join(__dirname, '..', '..', 'bench', 'results');
  mkdirSync(outDir, { recursive: true });
  const file = join(outDir, `lab-${startedAt.toISOString().replace(/[:.]/g, '-')}.json`);
  // NaN is not JSON: failed or not applicable figures become null.
  const json = JSON.stringify({
    bench: 'lab', startedAt: startedAt.toISOString(), totalS, node: process.version, host: facts, hostAfter: factsAfter,
    ...h, targets: { ...TARGETS, timeoutStormAt: TIMEOUT_STORM },
    options: { ...o, modes: o.modes.map((m) => m.id) }, summary, floods, runs: results, table: lines,
  }, (_k, v) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2);
  writeFileSync(file, json);
  process.stdout.write(`saved ${file} (run took ${totalS.toFixed(0)} s)\n`);
  const broken = results.some((r) => !r.ok || r.leftovers.length) || floods.some((f) => !f.ok || f.leftovers.length > 0);
  return broken ? 1 : 0;
}

main()
  .then((code) => {
    emergencyTeardown();
    process.exit(code);
  })
  .catch((e: Error) => {
    process.stderr.write(`lab-bench: ${e instanceof UsageError ? e.message : e.stack ?? e.message}\n`);
    emergencyTeardown();
    process.exit(e instanceof UsageError ? 2 : 1);
  });
