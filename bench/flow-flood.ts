/**
 * bench/flow-flood: 200,000 distinct flows (TCP SYNs and UDP datagrams from
 * spoofed client addresses and ports) against a live netns-lab bridge while
 * an established HTTP connection stays open and a download runs. A report,
 * not a test; needs root.
 * Run: `npx tsc -p tsconfig.json && node dist/bench/flow-flood.js` (`--prefix rb`, `--flows 200000`, `--per-ms 10`,
 * `--run-option FLAG` for the bridge's ports: default run's own, `--vnet-hdr` with split rings; stops 19-24 ran `--no-vnet-hdr`).
 *
 * Half the flows are SYNs to port 80, half datagrams to a UDP echo server
 * (port 7777) in both replicas. The replicas route 198.18.0.0/15 (the
 * spoofed sources) to the client, which drops what it gets: so both
 * replicas answer (SYN-ACKs, echoes), as they would real clients, and the
 * bridge compares the answers.
 *
 *   client ns ── <p>c ── `shadowvm run` (its own process) ─┬─ <p>p ── primary ns (nginx)
 *   frame-injector (SYN + UDP flood)                        └─ <p>b ── backup ns  (nginx)
 *   keep-alive HTTP client, curl download   `shadowvm agent lab` (its own process)
 *
 * The bridge runs with `policy.newFlowsPerSecond` 0 (no SYN admission
 * budget; the default 2000/s would drop most SYNs before they make a flow)
 * and the default `maxFlows` (65,536), so the table fills and evicts.
 *
 * Memory: the bridge's VmRSS before the flood, its peak (sampled every
 * 100 ms) and after; VmHWM at the end. The stated bound is the baseline RSS
 * plus maxFlows × the bytes one flow costs (measured in this process: heap
 * and external memory after a forced GC, per flow, over 50,000 SYN and UDP
 * flows fed to a ShadowPipeline with the same settings) plus a fixed
 * allowance for V8's garbage between collections.
 *
 * Results: a table on stdout, bench/results/flow-flood-<timestamp>.json.
 * The lab and the children are always removed.
 */
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { LAB_FILES, fixedSeedBytes, labContent } from '../lib/lab/content';
import { runInAsync } from '../lib/lab/exec';
import { Lab, buildLab, teardownLab, waitUntilQuiet } from '../lib/lab/netns';
import { serveOnBoth, startLabServers } from '../lib/lab/servers';
import { ShadowPipeline, makePipelineConfig, DEFAULT_PIPELINE_CONFIG } from '../lib/pipeline';
import { hostileFrame } from '../test/support/frame-injector';
import { BACKUP, PRIMARY } from '../lib/compare';
import { seededRandom } from '../test/support/random';
import { Child, JsonLineChild, inNs, memoryOf } from './lib/children';
import { RssSampler, bridgeStatus, floodFlows, prepareFloodReplicas, startBridgeProcess } from './lib/flood-bridge';

const ROOT = join(__dirname, '..', '..');
const BIG_FILE = 'flood-big.bin';
const BIG_BYTES = 32 << 20;
const BIG_SEED = 0xf100d;
const DOWNLOAD_RATE = '1500K';
/** Flows fed to an in-process pipeline to measure one flow's cost. */
const PER_FLOW_SAMPLE = 50_000;
/** V8 keeps garbage between collections (new space, unswept old pages): allowed on top of the live flows. */
const GC_ALLOWANCE_MIB = 48;
/** Flow reports the bridge keeps (`Bridge`'s default: ShadowPipeline's reportLimit). */
const REPORT_LIMIT = 100_000;
/** The flood's flows (half-open, and datagrams) expire 15 s after their last frame, so the give-back can be seen within the run. */
const FLOOD_IDLE_MS = 15_000;
const PIPELINE_SETTINGS = { policy: { ...DEFAULT_PIPELINE_CONFIG.policy, newFlowsPerSecond: 0 }, halfOpenIdleMs: FLOOD_IDLE_MS, datagramIdleMs: FLOOD_IDLE_MS };

interface Options { prefix: string; flows: number; perMs: number; seed: number; giveBackWaitS: number; runOptions: string[] }

function parseArgs(argv: string[]): Options {
  const o: Options = { prefix: 'rb', flows: 200_000, perMs: 10, seed: 7, giveBackWaitS: 60, runOptions: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const num = () => {
      const v = Number(argv[++i]);
      if (!(v > 0)) throw new Error(`${a} needs a positive number, got ${argv[i]}`);
      return v;
    };
    if (a === '--prefix') o.prefix = argv[++i];
    else if (a === '--flows') o.flows = Math.floor(num());
    else if (a === '--per-ms') o.perMs = num();
    else if (a === '--seed') o.seed = Math.floor(num());
    else if (a === '--give-back-wait-s') o.giveBackWaitS = num();
    else if (a === '--run-option') o.runOptions.push(argv[++i]);
    else if (a === '--help') {
      process.stdout.write('node dist/bench/flow-flood.js [--prefix rb] [--flows 200000] [--per-ms 10 (frames per ms)] [--seed 7] [--give-back-wait-s 60] [--run-option FLAG …: the bridge\'s ports; default run\'s own, --vnet-hdr with split rings]\n');
      process.exit(0);
    } else throw new Error(`unknown option ${a}`);
  }
  return o;
}

const delay = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const mib = (b: number) => b / 2 ** 20;

// ───────────────────────── children ─────────────────────────

// ───────────────────────── one flow's cost, measured here ─────────────────────────

function collector(): () => void {
  const g = (globalThis as { gc?: () => void }).gc;
  if (g) return g;
  setFlagsFromString('--expose-gc');
  return runInNewContext('gc') as () => void;
}

/**
 * The replicas' answer to a client datagram: MACs, addresses and ports
 * swapped (the IPv4 header checksum does not change), UDP checksum 0 (none).
 */
function echoOf(frame: Buffer): Buffer {
  const r = Buffer.from(frame);
  frame.copy(r, 0, 6, 12); frame.copy(r, 6, 0, 6);
  frame.copy(r, 26, 30, 34); frame.copy(r, 30, 26, 30);
  frame.copy(r, 34, 36, 38); frame.copy(r, 36, 34, 36);
  r.writeUInt16BE(0, 40);
  return r;
}

/**
 * Heap + external bytes retained per flow after a forced GC: SYN flows
 * (the SYN alone; the replicas' SYN-ACKs are not fed) and UDP flows (the
 * datagram and both replicas' echo, which is what makes a datagram flow).
 */
function bytesPerFlow(): { syn: number; udp: number; sample: number } {
  const gc = collector();
  const measure = (kind: 'syn-flood' | 'udp-flood'): number => {
    const config = makePipelineConfig({ ...PIPELINE_SETTINGS, maxFlows: PER_FLOW_SAMPLE + 1 });
    const pipeline = new ShadowPipeline(config, { toReplica: () => {}, toClient: () => {}, sendCheckpoint: () => {}, log: () => {} }, 0, true);
    const rnd = seededRandom(1);
    gc();
    const used = () => { const m = process.memoryUsage(); return m.heapUsed + m.external; };
    const before = used();
    let nowUs = 1_000_000;
    for (let i = 0; i < PER_FLOW_SAMPLE; i++) {
      const frame = hostileFrame(kind, i, rnd, 'client');
      pipeline.fromClient(frame, (nowUs += 5));
      if (kind === 'udp-flood') {
        const echo = echoOf(frame);
        pipeline.fromVm(PRIMARY, echo, nowUs);
        pipeline.fromVm(BACKUP, Buffer.from(echo), nowUs);
      }
      if (i % 64 === 0) pipeline.endBreath();
    }
    pipeline.endBreath();
    // A live bridge ticks every 10 ms, and its tick lets go of the frames already released.
    pipeline.tick(nowUs + 1000);
    gc();
    const perFlow = (used() - before) / Math.max(1, pipeline.flows.size);
    if (pipeline.flows.size < PER_FLOW_SAMPLE * 0.99) throw new Error(`only ${pipeline.flows.size} of ${PER_FLOW_SAMPLE} ${kind} flows were created`);
    return perFlow;
  };
  return { syn: measure('syn-flood'), udp: measure('udp-flood'), sample: PER_FLOW_SAMPLE };
}

// ───────────────────────── an established connection ─────────────────────────

/** One keep-alive HTTP/1.1 connection; each `go` line on stdin sends one GET and prints one JSON line. */
const KEEPALIVE_CLIENT = `
const net = require('node:net');
const { createHash } = require('node:crypto');
const [host, path] = process.argv.slice(1);
const s = net.connect(80, host);
let buf = Buffer.alloc(0), waiting = null, closed = null;
const out = (o) => process.stdout.write(JSON.stringify(o) + '\\n');
s.on('data', (d) => { buf = Buffer.concat([buf, d]); check(); });
s.on('error', (e) => { closed = e.message; });
s.on('close', () => { closed = closed || 'closed'; if (waiting) { waiting({ error: closed }); waiting = null; } });
function check() {
  if (!waiting) return;
  const i = buf.indexOf('\\r\\n\\r\\n');
  if (i < 0) return;
  const head = buf.subarray(0, i).toString();
  const len = Number(/content-length:\\s*(\\d+)/i.exec(head)?.[1] ?? 0);
  if (buf.length < i + 4 + len) return;
  const body = buf.subarray(i + 4, i + 4 + len);
  buf = buf.subarray(i + 4 + len);
  const w = waiting; waiting = null;
  w({ status: Number(head.split(' ')[1]), bytes: body.length, sha256: createHash('sha256').update(body).digest('hex') });
}
let lines = '';
process.stdin.on('data', (d) => {
  lines += d;
  for (let nl; (nl = lines.indexOf('\\n')) >= 0; lines = lines.slice(nl + 1)) {
    const t0 = Date.now();
    if (closed) { out({ error: 'connection ' + closed }); continue; }
    const timer = setTimeout(() => { if (waiting) { waiting = null; out({ error: 'no answer within 10 s', localPort: s.localPort }); } }, 10000);
    waiting = (r) => { clearTimeout(timer); out({ ...r, ms: Date.now() - t0, localPort: s.localPort }); };
    s.write('GET /' + path + ' HTTP/1.1\\r\\nHost: ' + host + '\\r\\n\\r\\n');
  }
});
`;

interface KeepaliveReply { status?: number; bytes?: number; sha256?: string; ms?: number; localPort?: number; error?: string }

class KeepaliveConnection {
  private readonly c: JsonLineChild<KeepaliveReply>;

  constructor(lab: Lab, path: string) {
    this.c = new JsonLineChild(inNs(lab.client.netns, [process.execPath, '-e', KEEPALIVE_CLIENT, lab.serviceIpv4, path]), 'keep-alive client');
  }

  request(): Promise<KeepaliveReply> {
    return this.c.ask('go');
  }

  stop(): void { this.c.stop(); }
}

// ───────────────────────── main ─────────────────────────

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  if (process.getuid?.() !== 0) throw new Error('the flow flood builds network namespaces: run it as root');
  const startedAt = new Date();
  const loadBefore = readFileSync('/proc/loadavg', 'utf8').trim();
  process.stderr.write('flow-flood: measuring one flow\'s cost in-process\n');
  const perFlow = bytesPerFlow();
  const maxFlows = makePipelineConfig(PIPELINE_SETTINGS).maxFlows;

  const lab = buildLab({ prefix: o.prefix });
  const children: Child[] = [];
  let keepalive: KeepaliveConnection | null = null;
  let sampler: RssSampler | null = null;
  const cleanup = () => {
    sampler?.stop();
    keepalive?.stop();
    for (const c of children) if (c.child.exitCode === null) c.child.kill('SIGKILL');
    teardownLab(lab);
  };
  process.once('SIGINT', () => { cleanup(); process.exit(130); });
  try {
    const servers = await startLabServers(lab);
    const big = fixedSeedBytes(BIG_BYTES, BIG_SEED);
    serveOnBoth(servers, BIG_FILE, big);
    // The replicas answer the spoofed sources through the client (which drops the answers: it does not forward),
    // and echo the flood's datagrams: a datagram flow is made when the replicas speak.
    children.push(...prepareFloodReplicas(lab));
    await waitUntilQuiet(lab);
    const bridge = await startBridgeProcess(lab, o.prefix, PIPELINE_SETTINGS, o.runOptions.length ? o.runOptions : ['--vnet-hdr']);
    children.push(bridge.proc, bridge.agent);
    const pid = bridge.proc.child.pid!;

    const blobSha = createHash('sha256').update(labContent().get(LAB_FILES.blob)!).digest('hex');
    keepalive = new KeepaliveConnection(lab, LAB_FILES.blob);
    const replies: { when: string; reply: KeepaliveReply }[] = [];
    replies.push({ when: 'before the flood', reply: await keepalive.request() });
    await delay(2000);
    const before = memoryOf(pid);
    const statusBefore = await bridgeStatus(bridge.controlSocket);

    const t0 = Date.now();
    sampler = new RssSampler(pid);

    // The download runs through the whole flood.
    const downloadFile = join(lab.runDir, 'flood-download');
    const download = (async () => {
      const d0 = Date.now();
      try {
        await runInAsync(lab.client.netns, 'curl', ['-sS', '--fail', '--limit-rate', DOWNLOAD_RATE, '--max-time', '300', '-o', downloadFile, `http://${lab.serviceIpv4}/${BIG_FILE}`], 310_000);
        const got = createHash('sha256').update(readFileSync(downloadFile)).digest('hex');
        return { ok: got === createHash('sha256').update(big).digest('hex'), sha256: got, seconds: (Date.now() - d0) / 1000, error: null as string | null };
      } catch (e) {
        return { ok: false, sha256: null, seconds: (Date.now() - d0) / 1000, error: (e as Error).message.split('\n')[0] };
      } finally {
        rmSync(downloadFile, { force: true });
      }
    })();
    await delay(1000);

    const { syn, udp } = await floodFlows(lab, o, async () => {
      replies.push({ when: 'between the SYNs and the datagrams', reply: await keepalive!.request() });
    }, (s) => process.stderr.write(`flow-flood: ${s}\n`));
    const floodMs = Date.now() - t0;
    await delay(2000);
    replies.push({ when: 'after the flood', reply: await keepalive.request() });
    const statusAfterFlood = await bridgeStatus(bridge.controlSocket);
    process.stderr.write('flow-flood: waiting for the download\n');
    const dl = await download;
    await delay(1000);
    sampler.stop();
    const { peakMiB: peakRssMiB, samples } = sampler;
    sampler = null;
    const after = memoryOf(pid);
    // The flood's flows expire FLOOD_IDLE_MS after their last frame; the table then falls far below its peak
    // and the bridge gives the memory back at its first quiet moment (memory_give_back in status).
    process.stderr.write('flow-flood: waiting for the flood\'s flows to expire and the memory to be given back\n');
    const gbUntil = Date.now() + o.giveBackWaitS * 1000;
    let giveBacks = 0;
    let lastRunAt = Date.now();
    while (Date.now() < gbUntil) {
      const s = await bridgeStatus(bridge.controlSocket);
      const runs = s?.components.memory_give_back?.runs ?? 0;
      if (runs > giveBacks) lastRunAt = Date.now();
      giveBacks = runs;
      // Every flood flow expired, and a collection since the last of them went: done.
      if (giveBacks > 0 && (s?.flows.active ?? Infinity) < 1000 && Date.now() - lastRunAt < 1000) break;
      await delay(1000);
    }
    await delay(1500);
    const givenBack = memoryOf(pid);
    const statusEnd = await bridgeStatus(bridge.controlSocket);
    bridge.proc.child.kill('SIGTERM');
    bridge.agent.child.kill('SIGTERM');
    const exitCode = await Promise.race([bridge.proc.exited, delay(10_000).then(() => 'no exit within 10 s')]);

    const worstPerFlow = Math.max(perFlow.syn, perFlow.udp);
    const boundMiB = before.rssMiB + mib(maxFlows * worstPerFlow) + GC_ALLOWANCE_MIB;
    const peak = Math.max(peakRssMiB, after.hwmMiB);
    const boundHeld = peak <= boundMiB;
    // The bridge also keeps the report of every flow it saw, evicted ones included, up to its report limit
    // (the in-process figure per flow includes one report): the bound with those counted in full.
    const reportLimit = REPORT_LIMIT;
    const boundWithReportsMiB = boundMiB + mib(reportLimit * worstPerFlow);
    const sameConnection = replies.every((r) => r.reply.localPort === replies[0].reply.localPort);
    const connectionOk = replies.every((r) => r.reply.status === 200 && r.reply.sha256 === blobSha) && sameConnection;
    const flows = statusEnd?.flows ?? statusAfterFlood?.flows;
    // Given back: the bridge ran its collection, and RSS came at least halfway back from the peak to the baseline.
    const givenBackOk = giveBacks > 0 && givenBack.rssMiB <= before.rssMiB + (peak - before.rssMiB) / 2;
    const pass = boundHeld && connectionOk && dl.ok && exitCode === 0 && givenBackOk;
    const loadAfter = readFileSync('/proc/loadavg', 'utf8').trim();

    const rows: [string, string][] = [
      ['flood', `${syn.sent} SYNs + ${udp.sent} UDP datagrams from spoofed sources, ${o.perMs} frames/ms asked; sent in ${((syn.ms + udp.ms) / 1000).toFixed(1)} s (${Math.round((syn.sent + udp.sent) / ((syn.ms + udp.ms) / 1000))}/s), tx errors ${syn.txErrors + udp.txErrors}`],
      ['bridge settings', `maxFlows ${maxFlows} (default), policy.newFlowsPerSecond 0 (no SYN budget: every SYN makes a flow)`],
      ['flows created / evicted / active', flows ? `${flows.created - (statusBefore?.flows.created ?? 0)} / ${flows.evicted} / ${flows.active}` : 'status did not answer'],
      ['bridge VmRSS before / peak / after', `${before.rssMiB.toFixed(1)} / ${peak.toFixed(1)} / ${after.rssMiB.toFixed(1)} MiB (VmHWM ${after.hwmMiB.toFixed(1)})`],
      ['after the flows expired (15 s idle)', `VmRSS ${givenBack.rssMiB.toFixed(1)} MiB, ${giveBacks} give-back collection(s), ${statusEnd?.flows.active ?? '?'} flows left: ${givenBackOk ? 'memory given back' : 'NOT given back'}`],
      ['bytes per flow (in-process, after GC)', `SYN ${perFlow.syn.toFixed(0)}, UDP ${perFlow.udp.toFixed(0)} (over ${perFlow.sample} flows each)`],
      ['stated bound', `baseline ${before.rssMiB.toFixed(1)} + ${maxFlows} × ${worstPerFlow.toFixed(0)} B (${mib(maxFlows * worstPerFlow).toFixed(1)} MiB) + ${GC_ALLOWANCE_MIB} MiB GC allowance = ${boundMiB.toFixed(1)} MiB: ${boundHeld ? 'held' : 'NOT held'}`],
      ['bound counting flow reports too', `+ ${reportLimit} reports × ${worstPerFlow.toFixed(0)} B = ${boundWithReportsMiB.toFixed(1)} MiB: ${peak <= boundWithReportsMiB ? 'held' : 'NOT held'} (an upper estimate: a report is part of the per-flow figure)`],
      ['uplink ring drops', `${statusEnd?.ports.find((p) => p.role === 'uplink')?.rxDrops ?? '?'} frames the bridge did not read in time (those flows were never created)`],
      ['established connection', `${replies.map((r) => `${r.when}: ${r.reply.error ?? `${r.reply.status} ${r.reply.bytes} B ${r.reply.sha256 === blobSha ? 'identical' : 'DIFFERENT'} ${r.reply.ms} ms`}`).join('; ')}; ${sameConnection ? 'same connection (local port ' + replies[0].reply.localPort + ')' : 'NOT the same connection'}`],
      ['download', `${BIG_BYTES >> 20} MiB at ${DOWNLOAD_RATE}/s: ${dl.ok ? 'byte-identical' : `FAILED (${dl.error ?? `sha256 ${dl.sha256}`})`} in ${dl.seconds.toFixed(1)} s`],
      ['bridge state at the end', `${statusEnd?.state ?? '?'}; exit after SIGTERM: ${String(exitCode)}`],
      ['loadavg before → after', `${loadBefore} → ${loadAfter}`],
    ];
    const w = Math.max(...rows.map(([k]) => k.length));
    const lines = [`flow-flood ${startedAt.toISOString()}  node ${process.version}`, ...rows.map(([k, v]) => `  ${k.padEnd(w)}  ${v}`), `${pass ? 'PASS' : 'FAIL'}`];
    process.stdout.write(`${lines.join('\n')}\n`);
    const outDir = join(ROOT, 'bench', 'results');
    mkdirSync(outDir, { recursive: true });
    const file = join(outDir, `flow-flood-${startedAt.toISOString().replace(/[:.]/g, '-')}.json`);
    writeFileSync(file, `${JSON.stringify({
      bench: 'flow-flood', startedAt: startedAt.toISOString(), node: process.version, options: o, settings: PIPELINE_SETTINGS, maxFlows,
      loadavgBefore: loadBefore, loadavgAfter: loadAfter, floodMs, injected: { syn, udp },
      memory: { before, after, peakRssMiB: peak, samples, givenBack, giveBacks, givenBackOk }, perFlowBytes: perFlow, bound: { miB: boundMiB, gcAllowanceMiB: GC_ALLOWANCE_MIB, held: boundHeld, withReportsMiB: boundWithReportsMiB, reportLimit },
      flows: { before: statusBefore?.flows ?? null, afterFlood: statusAfterFlood?.flows ?? null, end: statusEnd?.flows ?? null },
      keepalive: replies, download: { bytes: BIG_BYTES, rate: DOWNLOAD_RATE, ...dl }, statusEnd, exitAfterSigterm: exitCode, pass, table: lines,
    }, null, 1)}\n`);
    process.stdout.write(`results: ${file}\n`);
    if (!pass) process.exitCode = 1;
  } finally {
    cleanup();
  }
}

main().catch((e) => {
  process.stderr.write(`flow-flood: ${(e as Error).stack ?? String(e)}\n`);
  process.exitCode = 1;
});
