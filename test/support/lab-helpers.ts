/**
 * Shared helpers of the lab integration tests (test/integration/lab-*.test.ts):
 * the root check, captures with tcpdump, hashing, the bridge's flow reports,
 * and the built `shadowvm` CLI as a child process.
 *
 * Everything here that runs while a bridge forwards frames in this process
 * is asynchronous: a synchronous exec would stall the bridge and with it the
 * client being waited for.
 */
import { findLabLeftovers, teardownLab } from '../../lib/lab/netns';
import { ChildProcess, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { runIn, runInAsync } from '../../lib/lab/exec';
import { join } from 'node:path';
import type { Bridge } from '../../lib/bridge';
import type { LogFn, LogLevel } from '../../lib/control/logger';
import type { Lab, LabLeftovers } from '../../lib/lab/netns';
import { queryControlSocket } from '../../lib/control/control-socket';
import type { BridgeSnapshot } from '../../lib/control/snapshot';
import type { FlowReport } from '../../lib/pipeline/shadow-flow';
import { fixedSeedBytes } from '../../lib/lab/content';
import { LabServers, paced, serveOnBoth } from '../../lib/lab/servers';

export { paced };

export const REPO_ROOT = join(__dirname, '..', '..');
export const SHADOWVM_BIN = join(REPO_ROOT, 'bin', 'shadowvm');
const BUILT_CLI = join(REPO_ROOT, 'dist', 'lib', 'cli', 'main.js');

/** What `findLabLeftovers` returns after a clean teardown. */
export const NO_LEFTOVERS: LabLeftovers = { namespaces: [], links: [], processes: [], runDirExists: false };

/** Fails (never skips) when not root: the lab builds namespaces, veths and servers. */
export function requireRoot(what: string): void {
  if (process.getuid?.() !== 0) {
    throw new Error(`${what} builds network namespaces, veth pairs and servers: run jest as root (uid is ${process.getuid?.()})`);
  }
}

/** Fails when `bin/shadowvm` has nothing to run. */
export function requireBuiltCli(): void {
  if (!existsSync(BUILT_CLI)) {
    throw new Error(`${BUILT_CLI} is missing: build first (npx tsc -p tsconfig.json, or make build)`);
  }
}

export function sha256(bytes: Buffer): string {
  return createHash('sha256').update(bytes).digest('hex');
}

export function sha256File(path: string): string {
  return sha256(readFileSync(path));
}

export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A LogFn that keeps warnings and errors, for failure messages. */
export interface RecordedLog {
  readonly log: LogFn;
  readonly events: { level: LogLevel; event: string; fields?: Record<string, unknown> }[];
}

export function recordingLog(): RecordedLog {
  const events: RecordedLog['events'] = [];
  return {
    events,
    log: (level, event, fields) => {
      if ((level === 'warn' || level === 'error') && events.length < 1000) events.push({ level, event, fields });
    },
  };
}

/** The bridge's per-flow reports, brought up to date. */
export function flowReports(bridge: Bridge): FlowReport[] {
  return bridge.pipeline.reports;
}

/** The VM-side port of a report key such as "tcp 10.77.0.1:40000 > 10.77.0.2:80" or "tcp [fd77::1]:40000 > [fd77::2]:80". */
export function serverPort(report: FlowReport): number | null {
  const m = /:(\d+)$/.exec(report.key);
  return m ? Number(m[1]) : null;
}

/** The client-side port of a report key (the client side comes first). */
export function clientPort(report: FlowReport): number | null {
  const m = /^\S+ \S*:(\d+) > /.exec(report.key);
  return m ? Number(m[1]) : null;
}

// ───────────────────────────── captures ─────────────────────────────

export interface CaptureOptions {
  /** Interface to capture on. */
  iface: string;
  /** Network namespace of the interface; the host's when absent. */
  netns?: string;
  /** `-Q`: which direction, seen from the interface. Default `in`: what it received. */
  direction?: 'in' | 'out' | 'inout';
  /** pcap file to write. */
  file: string;
  /** `-s`: bytes kept of each frame; whole frames when absent. */
  snapLength?: number;
  /** A pcap filter expression; every frame when absent. */
  filter?: string;
}

export interface CaptureSummary {
  file: string;
  /** "N packets captured" */
  captured: number;
  /** "N packets dropped by kernel": a capture that dropped cannot prove anything. */
  droppedByKernel: number;
  stderr: string;
}

export interface Capture {
  readonly file: string;
  /** SIGINT, then waits for tcpdump to write its summary and exit. */
  stop(): Promise<CaptureSummary>;
}

/**
 * Starts tcpdump (`-U -s0 -w`, immediate mode, no name resolution) and resolves once it says
 * "listening on": from then on every frame on the interface is kept.
 */
export function startCapture(o: CaptureOptions, readyTimeoutMs = 10_000): Promise<Capture> {
  // --immediate-mode: with TPACKET_V3, frames otherwise wait in a ring block
  // until it fills or its timeout (1 s) expires, and a SIGINT before that loses them.
  // -B: a 32 MiB ring, so a loaded host (parallel jest workers) does not make the kernel drop.
  const tcpdump = ['tcpdump', '-i', o.iface, '-Q', o.direction ?? 'in', '-n', '-U', '--immediate-mode', '-B', '32768', '-s', String(o.snapLength ?? 0), '-Z', 'root', '-w', o.file, ...(o.filter ? [o.filter] : [])];
  const argv = o.netns ? ['ip', 'netns', 'exec', o.netns, ...tcpdump] : tcpdump;
  const child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
  child.stderr!.setEncoding('utf8');
  return new Promise<Capture>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`tcpdump on ${o.iface}${o.netns ? ` in ${o.netns}` : ''} did not start listening within ${readyTimeoutMs} ms: ${stderr}`));
    }, readyTimeoutMs);
    child.stderr!.on('data', (chunk: string) => {
      const wasListening = /listening on/.test(stderr);
      stderr += chunk;
      if (!wasListening && /listening on/.test(stderr)) {
        clearTimeout(timer);
        resolve({
          file: o.file,
          stop: async () => {
            if (child.exitCode === null && child.signalCode === null) child.kill('SIGINT');
            const code = await exited;
            const count = (what: string) => Number(new RegExp(`(\\d+) packets? ${what}`).exec(stderr)?.[1] ?? NaN);
            if (code !== 0) throw new Error(`tcpdump on ${o.iface} exited with ${code}: ${stderr}`);
            return { file: o.file, captured: count('captured'), droppedByKernel: count('dropped by kernel'), stderr };
          },
        });
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`tcpdump on ${o.iface}${o.netns ? ` in ${o.netns}` : ''} exited (${code}) before listening: ${stderr}`));
    });
  });
}

// ───────────────────────────── the CLI ─────────────────────────────

/** A `shadowvm` child process whose stdout and stderr are collected. */
export interface CliProcess {
  readonly child: ChildProcess;
  /** Everything written so far. */
  output(): string;
  /** Resolves when stdout or stderr holds `pattern`; rejects on exit or timeout, with the output. */
  waitFor(pattern: RegExp, timeoutMs: number): Promise<void>;
  /** Resolves with the exit code (or signal name) once the process has exited. */
  exited: Promise<number | string>;
}

/** `env`: variables added to this process's environment for the child (a preload in NODE_OPTIONS, say). */
export function spawnShadowvm(args: readonly string[], env?: NodeJS.ProcessEnv): CliProcess {
  const options = { stdio: ['ignore', 'pipe', 'pipe'] as ('ignore' | 'pipe')[], ...(env ? { env: { ...process.env, ...env } } : {}) };
  return watchChild(spawn(process.execPath, [SHADOWVM_BIN, ...args], options), `shadowvm ${args.join(' ')}`);
}

/** A started child's output, exit, and a wait for a pattern in its output (`what` names it in errors). */
export function watchChild(child: ChildProcess, what: string): CliProcess {
  let out = '';
  const listeners = new Set<() => void>();
  const onData = (chunk: Buffer) => {
    out += chunk.toString('utf8');
    for (const l of [...listeners]) l();
  };
  child.stdout!.on('data', onData);
  child.stderr!.on('data', onData);
  const exited = new Promise<number | string>((resolve) => child.once('close', (code, signal) => resolve(code ?? signal ?? 'unknown')));
  return {
    child,
    exited,
    output: () => out,
    waitFor: (pattern, timeoutMs) => new Promise<void>((resolve, reject) => {
      let done = false;
      const finish = (err?: Error) => {
        if (done) return;
        done = true;
        listeners.delete(check);
        clearTimeout(timer);
        if (err) reject(err);
        else resolve();
      };
      const check = () => { if (pattern.test(out)) finish(); };
      const timer = setTimeout(() => finish(new Error(`${what}: no ${pattern} within ${timeoutMs} ms; output:\n${out}`)), timeoutMs);
      listeners.add(check);
      void exited.then((code) => {
        if (pattern.test(out)) finish();
        else finish(new Error(`${what} exited (${code}) before printing ${pattern}; output:\n${out}`));
      });
      check();
    }),
  };
}

/** Runs `shadowvm` to the end; resolves with its exit code and output. */
export async function runShadowvm(args: readonly string[], timeoutMs = 30_000): Promise<{ code: number | string; output: string }> {
  const p = spawnShadowvm(args);
  const timer = setTimeout(() => p.child.kill('SIGKILL'), timeoutMs);
  try {
    const code = await p.exited;
    return { code, output: p.output() };
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Registers the afterAll of a lab test file that starts `shadowvm`
 * processes: kill those still running (SIGKILL) and wait for them, tear down
 * by prefix whatever is left, and check that nothing is.
 */
export function killProcessesAndLabAfterAll(prefix: string, processes: readonly CliProcess[], timeoutMs = 30_000): void {
  afterAll(async () => {
    for (const p of processes) {
      if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
      await p.exited;
    }
    teardownLab(prefix);
    expect(findLabLeftovers(prefix)).toEqual(NO_LEFTOVERS);
  }, timeoutMs);
}

/**
 * Registers the afterAll every lab test file needs: stop the bridged lab
 * (if it started), tear down by prefix whatever is left, and check that
 * nothing is.
 */
export function stopLabAfterAll(prefix: string, lab: () => { stop(): Promise<void> } | undefined): void {
  afterAll(async () => {
    try {
      await lab()?.stop();
    } finally {
      teardownLab(prefix);
    }
    expect(findLabLeftovers(prefix)).toEqual(NO_LEFTOVERS);
  }, 20_000);
}

/**
 * `count` passive FTP downloads of `file` from the lab's service address with
 * lftp in the client namespace; each must arrive byte for byte as `expected`.
 */
export async function ftpDownloadsIdentical(clientNetns: string, host: string, file: string, expected: Buffer, outDir: string, count = 3): Promise<void> {
  for (let i = 0; i < count; i++) {
    const local = join(outDir, `ftp-${i}.bin`);
    await runInAsync(clientNetns, 'lftp', ['-c', [
      'set net:timeout 30', 'set net:max-retries 2', 'set ftp:passive-mode on',
      `open ftp://${host}`, `get ${file} -o ${local}`,
    ].join('; ')], 180_000);
    expect(readFileSync(local).equals(expected)).toBe(true);
    rmSync(local);
  }
}

/** sched_setscheduler's policy number for SCHED_RR (0 is SCHED_OTHER). */
export const SCHED_RR = 2;

export interface ThreadInfo { tid: number; name: string; policy: number; rtPriority: number }

/** Every thread of `pid`: its name, and its policy and RT priority (fields 41 and 40 of /proc/PID/task/TID/stat). */
export function readThreads(pid: number): ThreadInfo[] {
  const out: ThreadInfo[] = [];
  for (const t of readdirSync(`/proc/${pid}/task`)) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${t}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      out.push({ tid: Number(t), name: readFileSync(`/proc/${pid}/task/${t}/comm`, 'utf8').trim(), rtPriority: Number(f[37]), policy: Number(f[38]) });
    } catch {
      // the thread ended meanwhile
    }
  }
  return out;
}

// ───────────────────────────── run with the lab agent ─────────────────────────────

/** The status of the `shadowvm run` behind `control`, or null when it does not answer within 2 s. */
export async function statusOf(control: string): Promise<BridgeSnapshot | null> {
  try {
    const r = await queryControlSocket(control, { cmd: 'status' }, 2000);
    return r.ok ? r.status : null;
  } catch {
    return null;
  }
}

/** Polls `control`'s status until `ok` holds (at most `ms`); the last status. */
export async function statusUntil(control: string, ok: (s: BridgeSnapshot) => boolean, ms: number): Promise<BridgeSnapshot | null> {
  let s: BridgeSnapshot | null = null;
  for (const end = Date.now() + ms; Date.now() < end; await delay(50)) {
    s = await statusOf(control);
    if (s && ok(s)) return s;
  }
  return s;
}

/** `shadowvm run` and `shadowvm agent lab` as processes of their own, as an administrator starts them. */
export interface RunWithLabAgent {
  readonly bridge: CliProcess;
  readonly agent: CliProcess;
  readonly control: string;
  /** The bridge's status, or null when it does not answer within 2 s. */
  status(): Promise<BridgeSnapshot | null>;
  /** SIGTERM to both (SIGKILL after 5 s); waits for them to exit. */
  stop(): Promise<void>;
}

/**
 * Starts `shadowvm run` on `lab`'s host ends (sockets in its run folder,
 * `--resync align`, then `runArgs`) and the lab agent (5 ms checkpoints);
 * resolves once the bridge is COMPARING. `runArgs` must make run log at
 * info, whose `started` line is waited for.
 */
export async function startRunWithLabAgent(lab: Lab, name: string, runArgs: readonly string[]): Promise<RunWithLabAgent> {
  const control = join(lab.runDir, 'control.sock');
  const agentSocket = join(lab.runDir, 'agent.sock');
  const bridge = spawnShadowvm(['run', '--name', name, '--uplink', lab.client.hostIf, '--primary', lab.primary.hostIf, '--backup', lab.backup.hostIf,
    '--agent', agentSocket, '--control', control, '--resync', 'align', ...runArgs]);
  const status = () => statusOf(control);
  let agent: CliProcess | undefined;
  const stop = async () => {
    for (const p of [agent, bridge]) {
      if (p && p.child.exitCode === null) {
        p.child.kill('SIGTERM');
        const kill = setTimeout(() => p.child.kill('SIGKILL'), 5000);
        await p.exited;
        clearTimeout(kill);
      }
    }
  };
  try {
    await bridge.waitFor(/"event":"started"/, 20_000);
  } catch (e) {
    await stop();
    throw e;
  }
  agent = spawnShadowvm(['agent', 'lab', '--name', name, '--socket', agentSocket, '--delay-ms', '5']);
  let s: BridgeSnapshot | null = null;
  for (let i = 0; i < 200 && s?.state !== 'COMPARING'; i++) {
    await delay(50);
    s = await status();
  }
  if (s?.state !== 'COMPARING') {
    await stop();
    throw new Error(`shadowvm run did not reach COMPARING (state ${s?.state ?? 'no answer'}): ${bridge.output().slice(-2000)}`);
  }
  return { bridge, agent: agent!, control, status, stop };
}

/**
 * The client's receive buffer (LabOptions.clientReceiveBufferMax) in labs whose downloads must be in flight when
 * the test strikes: with wget pacing them (paced), the server runs at most this far ahead of wget's reading.
 * (With the inherited 32 MiB, 4 MiB at 8 MB/s was all on the wire before a death 20-320 ms in at 9 of 20 moments.)
 */
export const IN_FLIGHT_RECEIVE_BUFFER = 256 << 10;

/** Bytes each TCP connection from the lab's client to the service has received so far (ss), one entry per connection. */
export function clientBytesReceived(l: { client: { netns: string }; serviceIpv4: string }, port = 80): number[] {
  const out = runIn(l.client.netns, 'ss', ['-tinH', 'state', 'established', 'dst', l.serviceIpv4, 'dport', '=', `:${port}`]);
  const counts: number[] = [];
  for (const line of out.split('\n')) {
    if (!line.trim()) continue;
    // A connection's line starts in column 0 (its state); its details follow, indented.
    if (!/^\s/.test(line)) counts.push(0);
    const m = /\bbytes_received:(\d+)/.exec(line);
    if (m && counts.length > 0) counts[counts.length - 1] = Number(m[1]);
  }
  return counts;
}

/**
 * `n.count` downloads of `n.bytes` each (fixed-seed content served by both replicas), from the lab's client
 * at 1 MB/s (wget's pacing, see `paced`), so that they stay in flight for what a test does meanwhile. `done` settles once all have ended,
 * and checks that every one succeeded and arrived intact.
 */
export function labDownloads(l: Lab, servers: LabServers, tag: string, n: { count: number; bytes: number }, seed: number, maxSeconds = 90): { done: Promise<void> } {
  const files = Array.from({ length: n.count }, (_, i) => ({ name: `${tag}${i}.bin`, content: fixedSeedBytes(n.bytes, seed + i) }));
  for (const f of files) serveOnBoth(servers, f.name, f.content);
  const outs = files.map((f) => join(l.runDir, `out-${f.name}`));
  const running = files.map((f, i) => runInAsync(l.client.netns, 'wget', paced(outs[i], `http://${l.serviceIpv4}/${f.name}`, '1m', maxSeconds), (maxSeconds + 10) * 1000));
  const done = (async () => {
    const results = await Promise.allSettled(running);
    expect(results.map((r) => (r.status === 'rejected' ? String(r.reason) : 'ok'))).toEqual(files.map(() => 'ok'));
    for (let i = 0; i < files.length; i++) expect(sha256(readFileSync(outs[i]))).toBe(sha256(files[i].content));
  })();
  // A test that fails before it awaits `done` must not leave a rejection for whichever test file runs next.
  done.catch(() => {});
  return { done };
}
