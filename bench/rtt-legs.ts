/**
 * bench/rtt-legs: where an idle round trip through shadowvm goes, leg by
 * leg, from tcpdump captures taken inside the lab's three namespaces
 * (issue 9: "find where the +0.3 ms idle goes, pass by pass").
 *
 *   client ns ──► bridge ──► primary ns, backup ns ──► bridge ──► client ns
 *      t0          in leg      t1p, t1b   vm leg  t2p, t2b  out leg   t3
 *
 * Every mode gets a fresh netns lab (same names and addresses), a `ping`
 * of N echo requests from the client, and captures on the namespace end of
 * each veth (`-Q inout`, kernel timestamps in ns). The namespace ends are
 * used, not the host ends, because shadowvm's packet sockets bypass the
 * qdisc, and so the host end's taps never see what the bridge sends. An
 * echo request and its replies are matched by ICMP id and sequence number.
 *
 * Legs (per echo, then p50 over the echoes, then median [range] over rounds):
 *   in       t0 → t1p    the client's request reaching the primary: the host veth, the bridge's
 *                        wake-up, its pass, its send (KB: the Linux bridge in softirq)
 *   in b     t0 → t1b    the same to the backup
 *   vm       t1p → t2p   the primary namespace's own stack answering
 *   lag      t2p → t2b   the backup's reply after the primary's
 *   out      max(t2p, t2b) → t3   the later reply to the client: wake-up, comparison, release, send
 *   out p    t2p → t3    the primary's reply to the client
 *   rtt      t0 → t3     the whole round trip on the client's wire; ping's own p50 beside it
 * and ping's p50 over the same number of pings made just before, with no
 * capture running: tcpdump's sockets are woken from inside each send that
 * delivers a frame to a namespace, so the captures cost whoever sends (with
 * inline sends, the data plane), and that figure is the undisturbed one.
 *
 * Modes: `kernel` (a Linux bridge joins client and primary; the backup is
 * left out) and `run` (`shadowvm run --no-vnet-hdr` as a process, with
 * `shadowvm agent lab`, as a host runs it; the lab's namespaces have their
 * offloads off, and the soak runs it so), and any `run` variant named
 * NAME=FLAGS (`--mode 'inline8=--send-inline-frames 8'`; `--no-vnet-hdr` is
 * added unless FLAGS name `--vnet-hdr`). Interleaved: ABC ABC.
 *
 * Needs root, tcpdump, ping. Run:
 *   npx tsc -p tsconfig.json && node dist/bench/rtt-legs.js [--rounds 3] [--count 300] [--interval 0.01]
 *     [--mode NAME=FLAGS …] [--modes kernel,run,…] [--prefix svmrl]
 * Results: a table on stdout and bench/results/rtt-legs-<time>.json.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { queryControlSocket } from '../lib/control/control-socket';
import { readPcapFile } from '../lib/io/pcap-reader';
import { Lab, buildLab, describeLab, teardownLab, waitUntilQuiet } from '../lib/lab/netns';
import { startHeaderCapture, HeaderCapture } from './lib/capture';
import { Child, start } from './lib/children';
import { addKernelBridge, removeKernelBridge } from './lib/lab-setup';
import { percentile, runPing } from './lib/load-tools';
import { cell, layout, spread } from './lib/report';

const ROOT = join(__dirname, '..', '..');
const SHADOWVM = join(ROOT, 'bin', 'shadowvm');
const delay = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

interface Mode { name: string; flags: string[] }
interface Options { rounds: number; count: number; intervalS: number; prefix: string; modes: Mode[] }

const LEGS = ['in', 'inB', 'vm', 'lag', 'out', 'outP', 'rtt', 'ping', 'bare'] as const;
type Leg = typeof LEGS[number];
const LEG_LABELS: Record<Leg, string> = {
  in: 'in (client → primary)', inB: 'in (client → backup)', vm: 'vm (primary answers)', lag: 'backup reply after primary',
  out: 'out (later reply → client)', outP: 'out (primary reply → client)', rtt: 'rtt on the wire', ping: 'ping p50, captured', bare: 'ping p50, no captures',
};

function parseArgs(argv: string[]): Options {
  const o: Options = { rounds: 3, count: 300, intervalS: 0.01, prefix: 'svmrl', modes: [] };
  const variants = new Map<string, string[]>([['kernel', []], ['run', []]]);
  let names = ['kernel', 'run'];
  let namesGiven = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i], v = () => { const x = argv[++i]; if (x === undefined) throw new Error(`${a} needs a value`); return x; };
    if (a === '--rounds') o.rounds = Number(v());
    else if (a === '--count') o.count = Number(v());
    else if (a === '--interval') o.intervalS = Number(v());
    else if (a === '--prefix') o.prefix = v();
    else if (a === '--modes') { names = v().split(',').filter(Boolean); namesGiven = true; }
    else if (a === '--mode') {
      const spec = v(), eq = spec.indexOf('=');
      if (eq <= 0) throw new Error(`--mode wants NAME=FLAGS, got ${spec}`);
      const name = spec.slice(0, eq);
      variants.set(name, spec.slice(eq + 1).split(/\s+/).filter(Boolean));
      if (!namesGiven && !names.includes(name)) names.push(name);
    } else if (a === '--help') {
      process.stdout.write('node dist/bench/rtt-legs.js [--rounds 3] [--count 300] [--interval 0.01] [--mode NAME=FLAGS …] [--modes kernel,run,…] [--prefix svmrl]\n');
      process.exit(0);
    } else throw new Error(`unknown option ${a}`);
  }
  if (!(o.rounds >= 1) || !(o.count >= 10) || !(o.intervalS >= 0.002)) throw new Error('--rounds ≥ 1, --count ≥ 10, --interval ≥ 0.002');
  for (const n of names) {
    const flags = variants.get(n);
    if (!flags) throw new Error(`mode ${n}: not kernel, run, or a --mode NAME=FLAGS`);
    o.modes.push({ name: n, flags });
  }
  return o;
}

// ───────────────────────── captures ─────────────────────────

interface Echo { id: number; seq: number; type: number; timeUs: number }

/** ICMP echo requests (8) and replies (0) of an Ethernet/IPv4 capture. */
export function echoesOf(file: string): Echo[] {
  const out: Echo[] = [];
  for (const r of readPcapFile(file)) {
    const f = r.frame;
    if (f.length < 14 + 20 + 8 || f.readUInt16BE(12) !== 0x0800) continue;
    const ihl = (f[14] & 0x0f) * 4;
    if (f[14 + 9] !== 1) continue;
    const icmp = 14 + ihl;
    if (f.length < icmp + 8) continue;
    const type = f[icmp];
    if (type !== 0 && type !== 8) continue;
    out.push({ type, id: f.readUInt16BE(icmp + 4), seq: f.readUInt16BE(icmp + 6), timeUs: r.timeUs });
  }
  return out;
}

/** First time of each (type, id, seq). */
function index(echoes: readonly Echo[]): Map<string, number> {
  const m = new Map<string, number>();
  for (const e of echoes) {
    const k = `${e.type}/${e.id}/${e.seq}`;
    if (!m.has(k)) m.set(k, e.timeUs);
  }
  return m;
}

/** Per-echo legs (µs) from the three namespaces' captures; p50 of each. */
export function legsOf(client: Echo[], primary: Echo[], backup: Echo[] | null): { legs: Partial<Record<Leg, number>>; matched: number } {
  const c = index(client), p = index(primary), b = backup ? index(backup) : null;
  const per: Record<Leg, number[]> = { in: [], inB: [], vm: [], lag: [], out: [], outP: [], rtt: [], ping: [], bare: [] };
  let matched = 0;
  for (const e of client) {
    if (e.type !== 8) continue;
    const k = `${e.id}/${e.seq}`;
    const t0 = c.get(`8/${k}`)!, t3 = c.get(`0/${k}`), t1p = p.get(`8/${k}`), t2p = p.get(`0/${k}`);
    if (t3 === undefined || t1p === undefined || t2p === undefined) continue;
    const t1b = b?.get(`8/${k}`), t2b = b?.get(`0/${k}`);
    matched++;
    per.in.push(t1p - t0);
    per.vm.push(t2p - t1p);
    per.outP.push(t3 - t2p);
    per.rtt.push(t3 - t0);
    if (t1b !== undefined) per.inB.push(t1b - t0);
    if (t2b !== undefined) per.lag.push(t2b - t2p);
    per.out.push(t3 - Math.max(t2p, t2b ?? t2p));
  }
  const legs: Partial<Record<Leg, number>> = {};
  for (const leg of LEGS) if (per[leg].length) legs[leg] = percentile(per[leg], 50);
  return { legs, matched };
}

// ───────────────────────── one mode, one lab ─────────────────────────

interface RunResult { mode: string; round: number; legs: Partial<Record<Leg, number>>; matched: number; sent: number; pingP50Ms: number; error?: string }

async function startRun(lab: Lab, mode: Mode): Promise<{ stop: () => Promise<void>; output: () => string }> {
  const controlSocket = join(lab.runDir, 'run', 'control.sock');
  const agentSocket = join(lab.runDir, 'run', 'agent.sock');
  const children: Child[] = [];
  const stop = async () => {
    for (const c of children.reverse()) if (c.child.exitCode === null && c.child.signalCode === null) { c.child.kill('SIGTERM'); await Promise.race([c.exited, delay(3000)]); if (c.child.exitCode === null) c.child.kill('SIGKILL'); }
  };
  const bridge = start([process.execPath, SHADOWVM, 'run', '--name', lab.prefix, '--uplink', lab.client.hostIf, '--primary', lab.primary.hostIf, '--backup', lab.backup.hostIf,
    '--agent', agentSocket, '--control', controlSocket, ...(mode.flags.some((f) => /vnet-hdr/.test(f)) ? [] : ['--no-vnet-hdr']), '--log-level', 'warn', ...mode.flags], 'shadowvm run');
  children.push(bridge);
  const output = () => bridge.output.slice(-2000);
  const state = async () => {
    try { const r = await queryControlSocket(controlSocket, { cmd: 'status' }, 500); return r.ok ? r.status.state : null; } catch { return null; }
  };
  for (let i = 0; i < 200 && !(await state()); i++) {
    if (bridge.child.exitCode !== null) { await stop(); throw new Error(`shadowvm run exited: ${output()}`); }
    await delay(50);
  }
  children.push(start([process.execPath, SHADOWVM, 'agent', 'lab', '--name', lab.prefix, '--socket', agentSocket], 'shadowvm agent'));
  for (let i = 0; i < 200; i++) {
    if ((await state()) === 'COMPARING') return { stop, output };
    await delay(50);
  }
  await stop();
  throw new Error(`the bridge did not reach COMPARING: ${output()}`);
}

async function measure(o: Options, mode: Mode, round: number, dir: string): Promise<RunResult> {
  const lab = buildLab({ prefix: o.prefix });
  let stopBridge: (() => Promise<void>) | null = null;
  const caps: HeaderCapture[] = [];
  try {
    await waitUntilQuiet(lab);
    if (mode.name === 'kernel') addKernelBridge(lab);
    else stopBridge = (await startRun(lab, mode)).stop;
    const nodes = mode.name === 'kernel' ? [lab.client, lab.primary] : [lab.client, lab.primary, lab.backup];
    // A short warm-up, so the bridge's path is compiled and the ARP entries exist; not captured.
    await runPing(lab.client.netns, lab.serviceIpv4, 50, 0.002);
    // The same pings without captures first: tcpdump's wake-ups cost whoever sends (see the header).
    const bare = await runPing(lab.client.netns, lab.serviceIpv4, o.count, o.intervalS);
    for (const n of nodes) caps.push(await startHeaderCapture({ netns: n.netns, iface: n.nsIf, file: join(dir, `${mode.name}-${round}-${n.role}.pcap`), filter: 'icmp', direction: 'inout' }));
    const ping = await runPing(lab.client.netns, lab.serviceIpv4, o.count, o.intervalS);
    await delay(100);
    for (const c of caps) await c.stop();
    const [client, primary, backup] = caps.map((c) => echoesOf(c.file));
    const { legs, matched } = legsOf(client, primary, backup ?? null);
    return { mode: mode.name, round, legs: { ...legs, ping: ping.p50Ms * 1000, bare: bare.p50Ms * 1000 }, matched, sent: ping.sent, pingP50Ms: ping.p50Ms, ...(ping.error || bare.error ? { error: [bare.error, ping.error].filter(Boolean).join('; ') } : {}) };
  } finally {
    for (const c of caps) await c.stop().catch(() => undefined);
    if (stopBridge) await stopBridge();
    if (mode.name === 'kernel') removeKernelBridge(lab.prefix);
    teardownLab(lab);
  }
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  if (process.getuid?.() !== 0) throw new Error('rtt-legs builds network namespaces: run it as root');
  const startedAt = new Date();
  const dir = mkdtempSync(join(tmpdir(), 'rtt-legs-'));
  process.once('SIGINT', () => { teardownLab(describeLab(o.prefix)); process.exit(130); });
  const results: RunResult[] = [];
  try {
    for (let round = 1; round <= o.rounds; round++) {
      for (const mode of o.modes) {
        process.stderr.write(`rtt-legs: round ${round} ${mode.name}\n`);
        results.push(await measure(o, mode, round, dir));
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const header = ['µs, p50 per run; median [range]', ...o.modes.map((m) => m.name)];
  const rows = LEGS.map((leg) => [LEG_LABELS[leg], ...o.modes.map((m) => {
    const v = results.filter((r) => r.mode === m.name).map((r) => r.legs[leg]).filter((x): x is number => x !== undefined);
    return v.length ? cell(spread(v), 0) : '—';
  })]);
  const lines = [
    `rtt-legs ${startedAt.toISOString()}: ${o.rounds} round(s), ping -c ${o.count} -i ${o.intervalS}; captures in the namespaces (tcpdump, kernel timestamps)`,
    ...o.modes.filter((m) => m.flags.length).map((m) => `${m.name} = shadowvm run ${m.flags.join(' ')}`),
    ...layout([header, ...rows]),
    ...results.filter((r) => r.error || r.matched < r.sent * 0.9).map((r) => `round ${r.round} ${r.mode}: ${r.matched} of ${r.sent} echoes matched${r.error ? `; ${r.error}` : ''}`),
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
  const outDir = join(ROOT, 'bench', 'results');
  mkdirSync(outDir, { recursive: true });
  const file = join(outDir, `rtt-legs-${startedAt.toISOString().replace(/[:.]/g, '-')}.json`);
  writeFileSync(file, `${JSON.stringify({ bench: 'rtt-legs', startedAt: startedAt.toISOString(), options: o, results, table: lines }, null, 2)}\n`);
  process.stdout.write(`results: ${file}\n`);
}

if (require.main === module) {
  main().catch((e: unknown) => {
    process.stderr.write(`rtt-legs: ${e instanceof Error ? e.stack ?? e.message : String(e)}\n`);
    process.exit(1);
  });
}
