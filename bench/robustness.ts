/**
 * bench/robustness: 10^6 mutated frames through the whole ShadowPipeline,
 * from the client, the primary and the backup, while a simulated sync agent
 * answers checkpoints (done), fails them and lets them time out, and now
 * and then the primary is failed over, the backup lost and re-protected.
 *
 * A report, not a test. It prints a table, PASS/FAIL lines for the bounds
 * (no exception, flows and held output within the config's limits, heap
 * after a forced GC), saves bench/results/robustness-<time>.json, and
 * exits 1 on a FAIL.
 *
 *   npx tsc -p tsconfig.json && node --expose-gc dist/bench/robustness.js [--frames 1000000] [--seed N]
 *
 * Frames: the fixtures' recorded frames (byte mutations as in the fuzz test,
 * structural ones: VLAN stacks, bad checksums, TCP option garbage, fragment
 * bits) and generated ones (QinQ, 3+ tags, IPv6 extension chains, IPv4/IPv6
 * fragments, TCP option garbage, UDP with a bad checksum). Time is the
 * pipeline's own clock (µs), advanced by the bench, so a timeout costs no
 * wall time.
 */
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { loadavg } from 'node:os';
import { readPcapFile } from '../lib/io';
import { ShadowPipeline, makePipelineConfig } from '../lib/pipeline';
import { CheckpointRequest, DEFAULT_REPLICATOR_CONFIG } from '../lib/replicate/replicator';
import { SlotId } from '../lib/failover/roles';
import { BACKUP, PRIMARY } from '../lib/compare';
import { generatedFrame, mutateFrameNamed, mutateStructure } from '../test/support/mutate';
import { seededRandom } from '../test/support/random';

const FIXTURES = join(__dirname, '..', '..', 'fixtures');
const RESULTS = join(__dirname, '..', '..', 'bench', 'results');

/** Small limits, so the run reaches every one of them and the bounds can fail. */
const LIMITS = {
  maxFlows: 256,
  reportLimit: 1000,
  totalHighWater: { bytes: 64 << 10, frames: 64 },
  flowHighWater: { bytes: 32 << 10, frames: 32 },
  ingressHold: { bytes: 64 << 10, frames: 64 },
};
/** Retained heap after a forced GC, end minus start: flows, held slabs and reports are all bounded above. */
const HEAP_GROWTH_LIMIT = 64 << 20;
/** What the simulated agent does with a request (per mille, of requests it picks up). */
const CHECKPOINT_FATE = { done: 700, failed: 150 }; // the rest: no answer, time advanced past the timeout
const REPROTECT_FATE = { done: 800, failed: 100 };
/** Every this many frames: a failover, a lost backup (each done at the first frame after that when the pair is COMPARING), an agent reconnect. */
const FAILOVER_EVERY = 50_000;
const BACKUP_LOST_EVERY = 170_000;
const AGENT_BOUNCE_EVERY = 90_000;

type Side = 'client' | 'primary' | 'backup';
const SIDES: readonly Side[] = ['client', 'primary', 'backup'];
const SLOT_OF: Record<'primary' | 'backup', SlotId> = { primary: PRIMARY, backup: BACKUP };

interface Options { frames: number; seed: number }

function parseArgs(argv: string[]): Options {
  const o: Options = { frames: 1_000_000, seed: 0x5eed };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      const v = Number(argv[++i]);
      if (!Number.isInteger(v) || v < 0) throw new Error(`${a} needs a non-negative integer, got ${argv[i]}`);
      return v;
    };
    if (a === '--frames') o.frames = value();
    else if (a === '--seed') o.seed = value();
    else if (a === '--help') {
      console.log('node --expose-gc dist/bench/robustness.js [--frames 1000000] [--seed N]');
      process.exit(0);
    } else throw new Error(`unknown option ${a} (--frames N, --seed N)`);
  }
  return o;
}

/** A real collector: `gc` from --expose-gc, else the flag set at run time and `gc` read from a fresh context. */
function collector(): { gc: () => void; how: string } {
  const g = (globalThis as { gc?: () => void }).gc;
  if (g) return { gc: g, how: '--expose-gc' };
  setFlagsFromString('--expose-gc');
  return { gc: runInNewContext('gc') as () => void, how: 'flag set at run time (run node with --expose-gc)' };
}

function fixturePool(): { side: Side; frame: Buffer }[] {
  const pool: { side: Side; frame: Buffer }[] = [];
  for (const name of readdirSync(FIXTURES).sort()) {
    const dir = join(FIXTURES, name);
    if (!existsSync(join(dir, 'client.pcap'))) continue;
    SIDES.forEach((side) => readPcapFile(join(dir, `${side}.pcap`)).forEach((r) => pool.push({ side, frame: r.frame })));
  }
  return pool;
}

const bump = (m: Record<string, number>, k: string, n = 1) => { m[k] = (m[k] ?? 0) + n; };

interface Pending { epoch: number; kind: 'checkpoint' | 'reprotect'; reason: string }

function main(): void {
  const opts = parseArgs(process.argv.slice(2));
  const rnd = seededRandom(opts.seed);
  const pool = fixturePool();
  if (pool.length < 100) throw new Error(`only ${pool.length} fixture frames found under ${FIXTURES}`);
  const maxFrameBytes = Math.max(...pool.map((p) => p.frame.length)) + 64 + 16 /* 4 tags */;
  const config = makePipelineConfig({
    maxFlows: LIMITS.maxFlows, totalHighWater: LIMITS.totalHighWater, flowHighWater: LIMITS.flowHighWater, ingressHold: LIMITS.ingressHold,
    // The bench's clock runs ~0.1 ms per frame: with the default back-off (1 s doubling to 30 s) one
    // failure would leave the pipeline DEGRADED for 300k frames, and most of the run would test nothing.
    replicator: { ...DEFAULT_REPLICATOR_CONFIG, retryInitialMs: 20, retryMaxMs: 500 },
  });
  const loadBefore = loadavg();

  const pending: Pending[] = [];
  const requested: Record<string, number> = {};
  /** "<kind>:<reason>" → outcome → count, as the bench decided it. */
  const outcomes: Record<string, Record<string, number>> = {};
  const logEvents: Record<string, number> = {};
  const out = { toClient: 0, toReplica: 0 };
  const pipeline = new ShadowPipeline(config, {
    toReplica: () => { out.toReplica++; },
    toClient: () => { out.toClient++; },
    sendCheckpoint: (req: CheckpointRequest) => { pending.push({ epoch: req.epoch, kind: 'checkpoint', reason: req.reason }); bump(requested, `checkpoint:${req.reason}`); },
    sendReprotect: (req: CheckpointRequest) => { pending.push({ epoch: req.epoch, kind: 'reprotect', reason: 'reprotect' }); bump(requested, 'reprotect'); },
    log: (level, event) => bump(logEvents, `${level}:${event}`),
  }, 0, true, LIMITS.reportLimit);

  const thrown: Record<string, number> = {};
  const firstErrors: { call: string; frame: number; message: string; stack: string; frameHex?: string }[] = [];
  const guard = (call: string, i: number, fn: () => void, frame?: Buffer) => {
    try {
      fn();
    } catch (e) {
      bump(thrown, call);
      if (firstErrors.length < 10) {
        const err = e as Error;
        firstErrors.push({ call, frame: i, message: String(err?.message ?? e), stack: String(err?.stack ?? '').split('\n').slice(0, 6).join('\n'), frameHex: frame?.toString('hex') });
      }
    }
  };

  const { gc, how: gcHow } = collector();
  gc();
  const heapBefore = process.memoryUsage().heapUsed;
  const mutations: Record<string, Record<Side, number>> = {};
  const sideFrames: Record<Side, number> = { client: 0, primary: 0, backup: 0 };
  const events: Record<string, number> = {};
  const peak = { flows: 0, heldFrames: 0, heldBytes: 0, ingressHolding: 0, outstandingRun: 0 };
  const states: Record<string, number> = {};
  let framesWithOutstanding = 0;
  let failoverDue = false;
  let backupLostDue = false;
  let nowUs = 1_000_000;
  let pipelineMs = 0;
  const t0 = performance.now();

  const answer = (i: number) => {
    const p = pending.shift()!;
    const live = pipeline.replicator.pending?.epoch === p.epoch;
    const key = p.kind === 'reprotect' ? 'reprotect' : `${p.kind}:${p.reason}`;
    outcomes[key] ??= {};
    if (!live) { bump(outcomes[key], 'abandoned-before-answer'); return; }
    const fate = p.kind === 'reprotect' ? REPROTECT_FATE : CHECKPOINT_FATE;
    const roll = Math.floor(rnd() * 1000);
    if (roll < fate.done) {
      guard('checkpointDone', i, () => pipeline.checkpointDone(p.epoch, nowUs));
      bump(outcomes[key], 'done');
    } else if (roll < fate.done + fate.failed) {
      guard('checkpointFailed', i, () => pipeline.checkpointFailed(p.epoch, 'bench: agent says no', nowUs));
      bump(outcomes[key], 'failed');
    } else {
      // No answer: the pipeline's clock runs past the timeout, and its tick gives up.
      const timeoutMs = p.kind === 'reprotect' ? config.replicator.reprotectTimeoutMs : config.replicator.checkpointTimeoutMs;
      nowUs += timeoutMs * 1000 + 1000;
      guard('tick', i, () => pipeline.tick(nowUs));
      bump(outcomes[key], pipeline.replicator.pending?.epoch === p.epoch ? 'still-pending-after-timeout' : 'timed-out');
    }
  };

  for (let i = 0; i < opts.frames; i++) {
    // 40 %: the fuzz test's byte mutations of a real frame (1 in 6 unchanged, which keeps real flows alive);
    // 30 %: structural mutations of a real frame; 30 %: generated edge frames.
    const pick = rnd();
    let side: Side;
    let frame: Buffer;
    let kind: string;
    if (pick < 0.7) {
      const a = pool[Math.floor(rnd() * pool.length)];
      side = a.side;
      if (pick < 0.4) {
        const m = mutateFrameNamed(a.frame, pool[Math.floor(rnd() * pool.length)].frame, rnd);
        frame = m.frame; kind = `bytes:${m.kind}`;
      } else {
        const m = mutateStructure(a.frame, rnd);
        frame = m.frame; kind = `struct:${m.kind}`;
      }
    } else {
      side = SIDES[Math.floor(rnd() * 3)];
      const m = generatedFrame(rnd, { from: side === 'client' ? 'client' : 'vm' });
      frame = m.frame; kind = `gen:${m.kind}`;
    }
    (mutations[kind] ??= { client: 0, primary: 0, backup: 0 })[side]++;
    sideFrames[side]++;
    nowUs += Math.floor(rnd() * 200);

    const c0 = performance.now();
    if (side === 'client') guard('fromClient', i, () => pipeline.fromClient(frame, nowUs), frame);
    else guard('fromVm', i, () => pipeline.fromVm(SLOT_OF[side as 'primary' | 'backup'], frame, nowUs), frame);
    if (i % 16 === 0) guard('tick', i, () => pipeline.tick(nowUs));
    if (i % 8 === 0) guard('endBreath', i, () => pipeline.endBreath());
    pipelineMs += performance.now() - c0;

    if (pending.length > 0 && rnd() < 0.3) answer(i);
    if (i > 0 && i % FAILOVER_EVERY === 0) failoverDue = true;
    if (i > 0 && i % BACKUP_LOST_EVERY === 0) backupLostDue = true;
    if (failoverDue && pipeline.state === 'COMPARING') {
      let ok = false;
      guard('failoverNow', i, () => { ok = pipeline.failoverNow('manual', 'bench', nowUs) === 'promoted'; });
      bump(events, ok ? 'failover' : 'failover-refused');
      failoverDue = false;
    } else if (backupLostDue && pipeline.state === 'COMPARING') {
      let ok = false;
      guard('backupLost', i, () => { ok = pipeline.backupLost('bench', nowUs); });
      bump(events, ok ? 'backup-lost' : 'backup-lost-refused');
      backupLostDue = false;
    }
    if (i > 0 && i % AGENT_BOUNCE_EVERY === 0) {
      guard('agentConnected', i, () => pipeline.agentConnected(false, nowUs));
      nowUs += 2000;
      guard('agentConnected', i, () => pipeline.agentConnected(true, nowUs));
      bump(events, 'agent-reconnect');
    }
    if (i % 1000 === 0) bump(states, pipeline.state);
    peak.flows = Math.max(peak.flows, pipeline.flows.size);
    peak.heldFrames = Math.max(peak.heldFrames, pipeline.held.frames);
    peak.heldBytes = Math.max(peak.heldBytes, pipeline.held.bytes);
    // `ingressHeldFrames` counts every frame ever held; what is held now is the ingress stage's `holding`.
    if (pipeline.state === 'CHECKPOINTING') peak.ingressHolding = Math.max(peak.ingressHolding, pipeline.ingress.counters().holding);
    framesWithOutstanding = pipeline.replicator.pending ? framesWithOutstanding + 1 : 0;
    peak.outstandingRun = Math.max(peak.outstandingRun, framesWithOutstanding);
  }
  // The agent answers what is left; a tick lets the pipeline settle.
  for (let k = 0; k < 10 && pending.length > 0; k++) {
    while (pending.length > 0) {
      const p = pending.shift()!;
      if (pipeline.replicator.pending?.epoch === p.epoch) guard('checkpointDone', opts.frames, () => pipeline.checkpointDone(p.epoch, nowUs));
    }
    nowUs += 1000;
    guard('tick', opts.frames, () => pipeline.tick(nowUs));
    guard('endBreath', opts.frames, () => pipeline.endBreath());
  }
  const wallMs = performance.now() - t0;
  guard('reports', opts.frames, () => pipeline.reports);
  gc();
  const heapAfter = process.memoryUsage().heapUsed;

  const end = {
    state: pipeline.state,
    flows: pipeline.flows.size,
    heldFrames: pipeline.held.frames,
    heldBytes: pipeline.held.bytes,
    ingressHeldFrames: pipeline.ingressHeldFrames,
    reports: pipeline.reports.length,
    roles: pipeline.replicas.describe(),
  };
  const malformed = pipeline.malformed;
  const malformedTotal = Object.values(malformed).reduce((n, c) => n + c.client + c.primary + c.backup, 0);
  const stageCounters = pipeline.stageCounters();
  const timedOut = Object.values(outcomes).reduce((n, o) => n + (o['timed-out'] ?? 0), 0);
  const failed = Object.values(outcomes).reduce((n, o) => n + (o.failed ?? 0), 0);
  const done = Object.values(outcomes).reduce((n, o) => n + (o.done ?? 0), 0);
  const thrownTotal = Object.values(thrown).reduce((n, c) => n + c, 0);

  const checks: { what: string; pass: boolean; detail: string }[] = [];
  const check = (what: string, pass: boolean, detail: string) => checks.push({ what, pass, detail });
  check('no exception escaped the pipeline', thrownTotal === 0, thrownTotal === 0 ? '0 thrown' : `${thrownTotal} thrown: ${JSON.stringify(thrown)}`);
  check('flows ≤ maxFlows (peak and end)', peak.flows <= LIMITS.maxFlows && end.flows <= LIMITS.maxFlows, `peak ${peak.flows}, end ${end.flows}, limit ${LIMITS.maxFlows}`);
  check('held output at the end ≤ totalHighWater', end.heldFrames <= LIMITS.totalHighWater.frames && end.heldBytes <= LIMITS.totalHighWater.bytes,
    `${end.heldFrames} frames / ${end.heldBytes} B, limit ${LIMITS.totalHighWater.frames} / ${LIMITS.totalHighWater.bytes}`);
  check('held output peak ≤ totalHighWater + one frame per input while a checkpoint was outstanding',
    peak.heldFrames <= LIMITS.totalHighWater.frames + peak.outstandingRun && peak.heldBytes <= LIMITS.totalHighWater.bytes + peak.outstandingRun * maxFrameBytes,
    `peak ${peak.heldFrames} frames / ${peak.heldBytes} B; longest outstanding run ${peak.outstandingRun} frames`);
  check('client frames held during a checkpoint ≤ ingressHold (peak)', peak.ingressHolding <= LIMITS.ingressHold.frames, `peak ${peak.ingressHolding}, limit ${LIMITS.ingressHold.frames}; ${end.ingressHeldFrames} held in all, ${pipeline.ingressHoldDropped} dropped`);
  check('flow reports ≤ report limit', end.reports <= LIMITS.reportLimit, `${end.reports}, limit ${LIMITS.reportLimit}`);
  check(`retained heap growth after GC < ${HEAP_GROWTH_LIMIT >> 20} MiB`, heapAfter - heapBefore < HEAP_GROWTH_LIMIT, `${((heapAfter - heapBefore) / 2 ** 20).toFixed(1)} MiB`);
  check('malformed frames seen on every side', SIDES.every((s) => Object.values(malformed).some((c) => c[s] > 0)), `${malformedTotal} malformed in all`);
  check('checkpoints answered, failed and timed out (each at least once)', done > 0 && failed > 0 && timedOut > 0, `done ${done}, failed ${failed}, timed out ${timedOut}`);
  check('flow table filled and evicted', pipeline.flowsCreated > 10 * LIMITS.maxFlows, `${pipeline.flowsCreated} flows created`);
  const fail = checks.some((c) => !c.pass);

  const load = loadavg();
  const result = {
    time: new Date().toISOString(), node: process.version, options: opts, limits: LIMITS, config,
    gc: gcHow, loadavgBefore: loadBefore, loadavgAfter: load,
    frames: opts.frames, wallMs, pipelineMs, framesPerSecond: opts.frames / (wallMs / 1000), pipelineFramesPerSecond: opts.frames / (pipelineMs / 1000),
    sideFrames, mutations, thrown, firstErrors, malformed, malformedTotal,
    policyActions: pipeline.policyActions, badTcpOptions: pipeline.badTcpOptions,
    checkpointsRequested: requested, checkpointOutcomes: outcomes, events, statesSampled: states,
    failover: pipeline.failover, failoverHistory: pipeline.failoverHistory.length,
    flowsCreated: pipeline.flowsCreated, peak, end, out, heap: { before: heapBefore, after: heapAfter, growth: heapAfter - heapBefore },
    stageCounters, logEvents, totals: pipeline.totals, checks, pass: !fail,
  };
  mkdirSync(RESULTS, { recursive: true });
  const file = join(RESULTS, `robustness-${result.time.replace(/[:.]/g, '-')}.json`);
  writeFileSync(file, JSON.stringify(result, null, 2));

  const mb = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;
  const lines: [string, string][] = [
    ['frames', `${opts.frames} (client ${sideFrames.client}, primary ${sideFrames.primary}, backup ${sideFrames.backup}), seed ${opts.seed}`],
    ['frames/s (whole loop, incl. mutation)', Math.round(result.framesPerSecond).toLocaleString('en')],
    ['frames/s (pipeline calls only)', Math.round(result.pipelineFramesPerSecond).toLocaleString('en')],
    ['exceptions escaped', String(thrownTotal)],
    ['flows created / end / peak (limit)', `${pipeline.flowsCreated} / ${end.flows} / ${peak.flows} (${LIMITS.maxFlows})`],
    ['held frames end / peak (high water)', `${end.heldFrames} / ${peak.heldFrames} (${LIMITS.totalHighWater.frames})`],
    ['held bytes end / peak (high water)', `${end.heldBytes} / ${peak.heldBytes} (${LIMITS.totalHighWater.bytes})`],
    ['heap used before / after forced GC', `${mb(heapBefore)} / ${mb(heapAfter)} (${gcHow})`],
    ['failovers / refused / backups lost / reprotects', `${events.failover ?? 0} / ${events['failover-refused'] ?? 0} / ${events['backup-lost'] ?? 0} / ${stageCounters.replicate?.reprotects_done ?? 0} done, ${stageCounters.replicate?.reprotects_failed ?? 0} failed`],
    ['final state', `${end.state} (${end.roles})`],
    ['loadavg before → after', `${loadBefore.map((x) => x.toFixed(2)).join(' ')} → ${load.map((x) => x.toFixed(2)).join(' ')}`],
  ];
  const w = Math.max(...lines.map(([k]) => k.length));
  console.log(`robustness: ${opts.frames} mutated frames through ShadowPipeline (node ${process.version})`);
  for (const [k, v] of lines) console.log(`  ${k.padEnd(w)}  ${v}`);
  console.log('\nmalformed by reason          client   primary    backup');
  for (const [reason, c] of Object.entries(malformed).sort()) {
    console.log(`  ${reason.padEnd(26)}${String(c.client).padStart(8)}${String(c.primary).padStart(10)}${String(c.backup).padStart(10)}`);
  }
  console.log('\ncheckpoints by reason        requested  outcomes (as the bench drove them)');
  for (const key of Object.keys({ ...requested, ...outcomes }).sort()) {
    const o = outcomes[key] ?? {};
    console.log(`  ${key.padEnd(26)}${String(requested[key] ?? 0).padStart(9)}  ${Object.entries(o).map(([k, v]) => `${k} ${v}`).join(', ')}`);
  }
  const rc = stageCounters.replicate ?? {};
  console.log(`  replicator: done ${rc.checkpoints_done}, failed ${rc.checkpoints_failed} (timeouts included), coalesced ${rc.checkpoints_coalesced}, budget denied ${rc.budget_denied}`);
  console.log('');
  for (const c of checks) console.log(`${c.pass ? 'PASS' : 'FAIL'}  ${c.what}: ${c.detail}`);
  if (firstErrors.length) console.log(`first error: ${firstErrors[0].call} at frame ${firstErrors[0].frame}: ${firstErrors[0].stack}`);
  console.log(`saved ${file}`);
  if (fail) process.exitCode = 1;
}

main();
