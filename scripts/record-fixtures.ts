/**
 * record-fixtures: records the replay fixtures (`fixtures/<name>/`) from real
 * servers and clients in the netns lab, with shadowvm itself in the middle.
 * Needs root.
 *
 * For each scenario: start the bridged lab exactly as `startBridgedLab`
 * (lib/lab/bridged.ts) builds it for the CLI and the integration tests
 * (namespaces, nginx/vsftpd/dnsmasq in primary and backup, the Bridge on the
 * three host veth ends, the lab sync agent), wait until it compares, start
 * one tcpdump per host end (`-Q in`: what that namespace sent; for scenarios
 * that need it also `-Q out` on the client's end: what the bridge sent the
 * client), run the client (and, for failover scenarios, kill the primary in
 * the middle), stop tcpdump, stop the lab. Then the recording is checked
 * (scripts/fixture-check.ts) against the scenario's expected verdict and
 * retried if a race spoiled it; the fixture folder gets the pcaps and a
 * README, and `fixtures/expected.json` its entry.
 *
 * Usage: node dist/scripts/record-fixtures.js [--out DIR] [--prefix P]
 *          [--attempts N] [--list] [scenario ...]
 *        (scripts/record-fixtures.sh builds first and checks for root)
 */
import { ChildProcess, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { monotonicUs } from '../lib/clock';
import { BridgedLab, startBridgedLab, waitFor } from '../lib/lab/bridged';
import { ContentDivergence, LAB_CONTENT_MTIME, LAB_FILES, fixedSeedBytes, writeLabContent } from '../lib/lab/content';
import { run } from '../lib/lab/exec';
import { Lab, labNames, teardownLab } from '../lib/lab/netns';
import { LAB_DNS_NAME } from '../lib/lab/servers';
import { PROBE_ECHO_ID } from '../lib/failover/frames';
import { DEFAULT_PIPELINE_CONFIG } from '../lib/pipeline/config';
import type { FailoverRecord } from '../lib/pipeline/pipeline';
import type { CheckpointRecord } from '../lib/replicate/replicator';
import {
  ExpectedVerdict, FixtureReport, TCP_ACK, TCP_SYN, checkFixture, decodeFrame, formatReport, readPcapFile, receivedTcpStreams, verdictProblems,
} from './fixture-check';

const SERVICE_V4 = '10.77.0.2';
const SERVICE_V6 = 'fd77::2';
const DIVERGE_OFFSET = 1000;

/** The file of the failover scenario: fixed-seed bytes, the same in both replicas. */
const FAILOVER_FILE = 'failover.bin';
const FAILOVER_BYTES = 512 * 1024;
const FAILOVER_SEED = 0xfa11;
/** curl --limit-rate: the download takes about 2.6 s, so the death falls in its middle. */
const FAILOVER_RATE = '200k';
/** The primary dies once the bridge has released this share of the file to the client. */
const FAILOVER_AT = 0.4;

interface Scenario {
  readonly name: string;
  /** One paragraph for the README: what runs and why it is a useful fixture. */
  readonly description: string;
  /** Changes to what the replicas serve, once their servers run and before capture starts. */
  prepare?(l: BridgedLab): void;
  /** Each argv runs in the client namespace, one after the other; all must exit 0. */
  clientCommands(lab: Lab): string[][];
  /** The scenario's own run of its client commands (a death in the middle); default: one after the other. */
  drive?(l: BridgedLab, argvs: string[][]): Promise<Drive>;
  /** Also capture what the bridge sent the client (`client-rx.pcap`, `-Q out` on the client's host end). */
  readonly clientRx?: boolean;
  /** TCP connections the client must open (counted as SYNs in client.pcap); a guard on the scenario's shape. */
  readonly tcpConnections?: number;
  /** The verdict the replay engine must reach; may use the recording (e.g. a measured header length). */
  expected(report: FixtureReport, recording: Recording): ExpectedVerdict;
  /** What else a good recording of this scenario shows (beyond the verdict); empty when it does. */
  check?(recording: Recording): string[];
  /** README sentence explaining the verdict. */
  explain(report: FixtureReport, verdict: ExpectedVerdict, recording: Recording): string;
}

function curlBase(maxTimeS = 20): string[] {
  return ['curl', '--http1.1', '--no-progress-meter', '--fail', '--max-time', String(maxTimeS),
    '-w', '%{http_code} %{size_download} bytes, new connections: %{num_connects}, %{url_effective}\\n'];
}

function curlFetch(urls: readonly string[], extra: readonly string[] = []): string[] {
  return [...curlBase(), ...extra, ...urls.flatMap((url) => ['-o', '/dev/null', url])];
}

function dig(type: string): string[] {
  return ['dig', '+tries=1', '+time=3', `@${SERVICE_V4}`, LAB_DNS_NAME, type];
}

function httpHeaderLength(report: FixtureReport): number {
  const flow = report.flows.find((f) => f.flow.proto === 'tcp' && f.flow.vmPort === 80 && f.httpHeaderLength !== undefined);
  if (!flow?.httpHeaderLength) throw new Error(`${report.dir}: no HTTP response header found in primary.pcap`);
  return flow.httpHeaderLength;
}

const sha256 = (bytes: Buffer): string => createHash('sha256').update(bytes).digest('hex');

/** Where the failover scenario's client writes the download (inside the lab's run directory). */
const failoverDownload = (lab: Lab): string => path.join(lab.runDir, `client-${FAILOVER_FILE}`);

const SCENARIOS: readonly Scenario[] = [
  {
    name: 'http-keepalive',
    description: 'curl fetches four static files from nginx over one HTTP/1.1 keep-alive connection (IPv4): '
      + `${LAB_FILES.hello}, ${LAB_FILES.index}, ${LAB_FILES.blob} (100 KiB, many full-size segments) and ${LAB_FILES.lorem}. `
      + 'Primary and backup serve identical trees with identical mtimes, so every header (ETag, Last-Modified) agrees.',
    clientCommands: () => [curlFetch([LAB_FILES.hello, LAB_FILES.index, LAB_FILES.blob, LAB_FILES.lorem].map((f) => `http://${SERVICE_V4}/${f}`))],
    tcpConnections: 1,
    expected: () => ({ mismatches: 0 }),
    explain: () => 'Zero mismatches: the backup says exactly what the primary says, in its own sequence space.',
  },
  {
    name: 'ftp-pasv',
    description: `lftp fetches ${LAB_FILES.hello} from vsftpd (anonymous, read-only) in passive mode with PASV (EPSV off). `
      + 'vsftpd picks its passive data port at random from 30000–31000, so the primary\'s and the backup\'s 227 replies '
      + 'name different ports. The client connects to the primary\'s port; the backup gets the translated SYN for a port '
      + 'it does not listen on and answers with a reset.',
    clientCommands: () => [[
      'lftp', '-e',
      'set ftp:passive-mode on; set ftp:prefer-epsv no; set net:max-retries 1; set net:timeout 10; set xfer:clobber on; '
      + `get ${LAB_FILES.hello} -o /dev/null; quit`,
      `ftp://${SERVICE_V4}`,
    ]],
    tcpConnections: 2,
    expected: () => ({ mismatches: '>=1', firstMismatch: { flowPort: 21, contains: '227' } }),
    explain: () => 'At least one mismatch; the first is in the server\'s `227 Entering Passive Mode (10,77,0,2,p1,p2)` '
      + 'reply on the control connection (port 21): the port numbers differ. Later ones (the data connection, which '
      + 'only the primary accepts) follow from it.',
  },
  {
    name: 'http-diverge',
    description: `curl fetches ${LAB_FILES.lorem} from nginx; the backup's copy differs from the primary's in one byte at `
      + `offset ${DIVERGE_OFFSET} of the file (same size and mtime, so the headers agree).`,
    prepare: (l) => writeLabContent(l.servers.backup.contentRoot, { file: LAB_FILES.lorem, offset: DIVERGE_OFFSET } satisfies ContentDivergence),
    clientCommands: () => [curlFetch([`http://${SERVICE_V4}/${LAB_FILES.lorem}`])],
    tcpConnections: 1,
    expected: (report) => ({ mismatches: '>=1', firstMismatch: { flowPort: 80, streamOffset: httpHeaderLength(report) + DIVERGE_OFFSET } }),
    explain: (report, verdict) => `The first mismatch is on port 80 at server-stream offset ${verdict.firstMismatch?.streamOffset}: `
      + `the HTTP response header is ${httpHeaderLength(report)} bytes (measured in primary.pcap: up to and including the `
      + `blank line), plus ${DIVERGE_OFFSET} bytes into the body.`,
  },
  {
    name: 'http-ipv6',
    description: `Like http-keepalive over IPv6 to [${SERVICE_V6}]: curl fetches ${LAB_FILES.hello} and ${LAB_FILES.blob} `
      + 'over one keep-alive connection.',
    clientCommands: () => [curlFetch([LAB_FILES.hello, LAB_FILES.blob].map((f) => `http://[${SERVICE_V6}]/${f}`), ['-g'])],
    tcpConnections: 1,
    expected: () => ({ mismatches: 0 }),
    explain: () => 'Zero mismatches.',
  },
  {
    name: 'udp-dns',
    description: `dig asks dnsmasq for ${LAB_DNS_NAME} five times over UDP: three A queries, one AAAA, one TXT, each dig `
      + 'a new process (new source port, new query ID). dnsmasq answers from its --address/--txt-record configuration.',
    clientCommands: () => [dig('A'), dig('A'), dig('A'), dig('AAAA'), dig('TXT')],
    tcpConnections: 0,
    expected: () => ({ mismatches: 0 }),
    explain: () => 'Zero mismatches: each response datagram of the backup equals the primary\'s.',
  },
  {
    name: 'http-failover',
    description: `curl downloads ${FAILOVER_FILE} (${FAILOVER_BYTES / 1024} KiB of fixed-seed bytes, identical in both replicas, same mtime) `
      + `from nginx at --limit-rate ${FAILOVER_RATE}. Once the bridge has released ${FAILOVER_AT * 100}% of the file to the client, the `
      + 'primary dies silently (`BridgedLab.kill(primary, \'silent\')`: its processes are stopped and blackhole routes drop its '
      + 'output to the client; its link stays up). The bridge\'s silence detector sees the primary say nothing while the backup '
      + 'goes on answering, its ICMP echo probe to the primary goes unanswered, and the backup is promoted: the client\'s '
      + 'connection survives and the download completes from the backup, intact.',
    prepare: (l) => {
      const bytes = fixedSeedBytes(FAILOVER_BYTES, FAILOVER_SEED);
      for (const root of [l.servers.primary.contentRoot, l.servers.backup.contentRoot]) {
        const file = path.join(root, FAILOVER_FILE);
        fs.writeFileSync(file, bytes, { mode: 0o644 });
        // nginx derives Last-Modified and ETag from the mtime: both replicas must have the same.
        fs.utimesSync(file, LAB_CONTENT_MTIME, LAB_CONTENT_MTIME);
      }
    },
    clientCommands: (lab) => [[...curlBase(30), '--limit-rate', FAILOVER_RATE,
      '-o', failoverDownload(lab), `http://${SERVICE_V4}/${FAILOVER_FILE}`]],
    drive: downloadAcrossDeath,
    clientRx: true,
    tcpConnections: 1,
    expected: (report) => {
      const rx = report.clientReceived?.find((r) => r.flow.proto === 'tcp' && r.flow.vmPort === 80);
      return {
        mismatches: 0, failovers: 1, failoverCause: 'silence',
        clientReceived: { flowPort: 80, bytes: rx?.bytes ?? -1, sha256: rx?.sha256 ?? '(no client-rx.pcap)' },
      };
    },
    check: checkFailoverRecording,
    explain: (_report, verdict, recording) => {
      const f = recording.failover;
      return 'Zero mismatches while both replicas spoke: the primary\'s stream is a prefix of the backup\'s (fixture-check: '
        + '`primary-stopped`, the one difference a death makes). One failover, caused by silence: the primary\'s capture stops '
        + `(its last frame at ${f ? fmtTime(f.primaryLastFrameUs, f) : '?'}) while the backup's goes on; the replay's `
        + 'silence detector sees that, its probe is never answered (nothing in a replay answers), and it promotes the backup. '
        + `The client received ${verdict.clientReceived?.bytes} bytes of server stream on port 80 (HTTP header and the `
        + `${FAILOVER_BYTES}-byte body, sha256 \`${verdict.clientReceived?.sha256}\`, from client-rx.pcap); `
        + 'test/replay/failover-fixture.test.ts checks that the replay releases exactly those bytes for that flow.';
    },
  },
];

// ---------------------------------------------------------------- the failover scenario

interface LiveFailover {
  /** The namespace that was killed (the active replica then). */
  victim: string;
  /** Payload bytes the bridge had released to the client when the primary was killed. */
  releasedAtDeath: number;
  /** The kill (from the first command to the return of the last), on the bridge's clock (µs). */
  killUs: number;
  killDoneUs: number;
  /** The bridge's failover (bridge clock). */
  record: FailoverRecord | undefined;
  /** What curl wrote, and what the server had. */
  download: { bytes: number; sha256: string; expectedSha256: string };
  /** Capture time (wall clock, µs) of the primary's last frame in primary.pcap; set once the capture is over. */
  primaryLastFrameUs: number;
}

/** The bridge's clock (monotonicUs: performance.now() × 1000) on the capture clock (tcpdump: wall time, µs). */
function toWallUs(bridgeUs: number): number {
  return performance.timeOrigin * 1000 + bridgeUs;
}

function fmtTime(wallUs: number, f: LiveFailover): string {
  const killWall = toWallUs(f.killUs);
  const ms = (wallUs - killWall) / 1000;
  return `${new Date(wallUs / 1000).toISOString()} (${ms >= 0 ? '+' : ''}${ms.toFixed(1)} ms from the kill)`;
}

function releasedPayloadBytes(l: BridgedLab): number {
  return l.bridge.pipeline.stageCounters().release.released_payload_bytes;
}

/** The client downloads; the primary dies silently in the middle; the download must complete intact. */
async function downloadAcrossDeath(l: BridgedLab, argvs: string[][]): Promise<Drive> {
  const pipeline = l.bridge.pipeline;
  const problems: string[] = [];
  const released0 = releasedPayloadBytes(l);
  const failovers0 = pipeline.failover.failovers;
  const download = runClient(l.lab, argvs[0]);
  const early = download.then(() => true, () => true);
  let finished = false;
  void early.then(() => { finished = true; });
  const midway = await waitFor(() => finished || releasedPayloadBytes(l) - released0 >= FAILOVER_BYTES * FAILOVER_AT, 20_000, 1);
  if (!midway || finished) {
    await download;
    throw new Error(`the download ${finished ? 'ended' : 'did not reach'} ${FAILOVER_AT * 100}% before the primary could be killed`);
  }
  const victim = l.activeNode();
  const releasedAtDeath = releasedPayloadBytes(l) - released0;
  const killUs = monotonicUs();
  await l.kill(victim, 'silent');
  const killDoneUs = monotonicUs();
  const promoted = await waitFor(() => pipeline.failover.failovers > failovers0, 5000, 1);
  if (!promoted) problems.push(`no failover within 5 s of the silent death of ${victim.netns} (state ${pipeline.state}, roles ${pipeline.replicas.describe()})`);
  const result = await download;
  const got = fs.readFileSync(failoverDownload(l.lab));
  const expectedSha256 = sha256(fixedSeedBytes(FAILOVER_BYTES, FAILOVER_SEED));
  const failover: LiveFailover = {
    victim: victim.netns, releasedAtDeath, killUs, killDoneUs,
    record: promoted ? { ...pipeline.failoverHistory[pipeline.failoverHistory.length - 1] } : undefined,
    download: { bytes: got.length, sha256: sha256(got), expectedSha256 },
    primaryLastFrameUs: NaN,
  };
  if (victim.role !== 'primary') problems.push(`the active replica at the kill was ${victim.netns}, not the primary`);
  if (failover.download.sha256 !== expectedSha256) {
    problems.push(`the download is not intact: ${got.length} bytes, sha256 ${failover.download.sha256}; the file has ${FAILOVER_BYTES}, ${expectedSha256}`);
  }
  return { results: [result], problems, failover };
}

function checkFailoverRecording(recording: Recording): string[] {
  const f = recording.failover;
  if (!f) return ['no live failover recorded'];
  const problems: string[] = [];
  if (f.record && f.record.cause !== 'silence') problems.push(`the live bridge failed over for ${f.record.cause} (${f.record.detail}), expected silence`);
  if (f.releasedAtDeath >= FAILOVER_BYTES) problems.push(`the whole file had been released when the primary died (${f.releasedAtDeath} bytes)`);
  // The client's side, from the capture: the body after the HTTP header must be the file, byte for byte.
  const rx = [...receivedTcpStreams(readPcapFile(path.join(recording.dir, 'client-rx.pcap'))).values()];
  if (rx.length !== 1) return [...problems, `client-rx.pcap holds ${rx.length} server → client TCP streams, expected 1`];
  const stream = rx[0].bytes;
  const headerEnd = stream.indexOf('\r\n\r\n');
  const body = headerEnd < 0 ? Buffer.alloc(0) : stream.subarray(headerEnd + 4);
  if (sha256(body) !== f.download.expectedSha256) {
    problems.push(`the body in client-rx.pcap (${body.length} bytes, sha256 ${sha256(body)}) is not the file (${FAILOVER_BYTES} bytes, ${f.download.expectedSha256})`);
  }
  // Frames sent before the blackhole routes were in place are the living primary's; 2 ms of slack for the clocks.
  if (!(f.primaryLastFrameUs < toWallUs(f.killDoneUs) + 2000)) {
    problems.push(`primary.pcap goes on after the kill (last frame ${fmtTime(f.primaryLastFrameUs, f)})`);
  }
  return problems;
}

// ---------------------------------------------------------------- tcpdump

/** The captures, by file name: what each namespace sent (`-Q in` on its host end), and what the client received. */
type CaptureRole = 'client' | 'primary' | 'backup' | 'client-rx';

interface Recorder {
  readonly role: CaptureRole;
  readonly file: string;
  readonly child: ChildProcess;
  stderr: string;
  exited: Promise<number | null>;
}

const live = { lab: undefined as BridgedLab | undefined, recorders: [] as Recorder[], staging: undefined as string | undefined };

function startRecorder(role: CaptureRole, iface: string, direction: 'in' | 'out', file: string): Promise<Recorder> {
  // -Z root: Debian's tcpdump would otherwise drop to user tcpdump before opening the file.
  // No --immediate-mode: with -s 0 it makes libpcap use a TPACKET_V2 ring of
  // 256 KiB slots, 8 of them in the default 2 MiB buffer, and a 100 KiB burst
  // overflows it. TPACKET_V3 blocks are retired within tcpdump's 1 s timeout,
  // which the pause before SIGINT outlasts.
  const child = spawn('tcpdump', ['-i', iface, '-s', '0', '-B', '16384', '-U', '-Q', direction, '-nn', '-Z', 'root', '-w', file],
    { stdio: ['ignore', 'ignore', 'pipe'] });
  const rec: Recorder = {
    role, file, child, stderr: '',
    exited: new Promise((resolve) => child.on('exit', (code) => resolve(code))),
  };
  live.recorders.push(rec);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`tcpdump on ${iface} not listening after 5 s: ${rec.stderr}`)), 5000);
    child.stderr?.on('data', (chunk: Buffer) => {
      rec.stderr += chunk.toString();
      if (rec.stderr.includes('listening on')) {
        clearTimeout(timer);
        resolve(rec);
      }
    });
    void rec.exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`tcpdump on ${iface} exited (${code}) before listening: ${rec.stderr}`));
    });
  });
}

interface RecorderStats {
  captured: number;
  droppedByKernel: number;
}

async function stopRecorder(rec: Recorder): Promise<RecorderStats> {
  rec.child.kill('SIGINT');
  const code = await rec.exited;
  live.recorders = live.recorders.filter((r) => r !== rec);
  const count = (what: string): number => Number(new RegExp(`(\\d+) packets? ${what}`).exec(rec.stderr)?.[1] ?? NaN);
  if (code !== 0) throw new Error(`tcpdump (${rec.role}) exited ${code}: ${rec.stderr}`);
  return { captured: count('captured'), droppedByKernel: count('dropped by kernel') };
}

// ---------------------------------------------------------------- client

interface CommandResult {
  argv: readonly string[];
  stdout: string;
}

function runClient(lab: Lab, argv: readonly string[]): Promise<CommandResult> {
  // Asynchronous on purpose: the bridge runs on this process's event loop.
  return new Promise((resolve, reject) => {
    const child = spawn('ip', ['netns', 'exec', lab.client.netns, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve({ argv, stdout });
      else reject(new Error(`client command failed (${code ?? signal}): ${argv.join(' ')}\n${stderr}${stdout}`));
    });
  });
}

/** What the client did, and what a scenario's own run found wrong. */
interface Drive {
  results: CommandResult[];
  problems: string[];
  failover?: LiveFailover;
}

// ---------------------------------------------------------------- one recording

/** What the bridge did while the captures ran. */
interface BridgeDuringCapture {
  checkpoints: Pick<CheckpointRecord, 'kind' | 'reason' | 'outcome' | 'flow'>[];
  mismatches: number;
  releasedFrames: number;
  backupFramesSuppressed: number;
  heldIngressFrames: number;
  /** Liveness probes (ICMP echo) the bridge sent the active replica, and answers it saw. */
  probesSent: number;
  probeReplies: number;
  failovers: number;
  state: string;
  roles: string;
}

interface Recording {
  dir: string;
  results: CommandResult[];
  tcpdump: Partial<Record<CaptureRole, RecorderStats>>;
  bridge: BridgeDuringCapture;
  failover?: LiveFailover;
  problems: string[];
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

function bridgeCounters(l: BridgedLab): Record<string, Record<string, number>> {
  return l.bridge.pipeline.stageCounters();
}

async function recordOnce(scenario: Scenario, prefix: string, stagingDir: string): Promise<Recording> {
  // Re-protection (reviving the dead namespace) is off: a dead primary stays dead, so primary.pcap
  // ends at its death instead of going on with the revived kernel's retransmissions of the killed
  // server's data.
  const l = await startBridgedLab({ prefix, reprotect: false });
  live.lab = l;
  try {
    scenario.prepare?.(l);
    const recorders: Recorder[] = [];
    for (const node of l.lab.nodes) {
      recorders.push(await startRecorder(node.role, node.hostIf, 'in', path.join(stagingDir, `${node.role}.pcap`)));
    }
    if (scenario.clientRx) recorders.push(await startRecorder('client-rx', l.lab.client.hostIf, 'out', path.join(stagingDir, 'client-rx.pcap')));
    const pipeline = l.bridge.pipeline;
    const before = bridgeCounters(l);
    const firstCheckpoint = pipeline.replicator.history.length;
    const argvs = scenario.clientCommands(l.lab);
    let drive: Drive;
    if (scenario.drive) {
      drive = await scenario.drive(l, argvs);
    } else {
      drive = { results: [], problems: [] };
      for (const argv of argvs) drive.results.push(await runClient(l.lab, argv));
    }
    // Let the last answers (the backup lags the primary) and closing handshakes
    // reach the captures, and tcpdump's last ring block (1 s timeout) be read.
    await sleep(1500);
    const tcpdump: Recording['tcpdump'] = {};
    for (const rec of recorders) tcpdump[rec.role] = await stopRecorder(rec);
    if (drive.failover) {
      const primary = readPcapFile(path.join(stagingDir, 'primary.pcap'));
      drive.failover.primaryLastFrameUs = primary.length ? primary[primary.length - 1].timeUs : NaN;
    }
    const after = bridgeCounters(l);
    const delta = (stage: string, counter: string): number => after[stage][counter] - before[stage][counter];
    // The replicator's history is bounded; what fell off its front is not ours to count.
    const history = pipeline.replicator.history;
    const bridge: BridgeDuringCapture = {
      checkpoints: history.slice(Math.min(firstCheckpoint, history.length)).map((c) => ({ kind: c.kind, reason: c.reason, outcome: c.outcome, flow: c.flow })),
      mismatches: delta('compare', 'mismatches'),
      releasedFrames: delta('release', 'released_frames'),
      backupFramesSuppressed: delta('release', 'backup_frames_suppressed'),
      heldIngressFrames: delta('ingress', 'held_during_checkpoint'),
      probesSent: delta('failover', 'probesSent'),
      probeReplies: delta('failover', 'probeReplies'),
      failovers: delta('failover', 'failovers'),
      state: pipeline.state,
      roles: pipeline.replicas.describe(),
    };
    return { dir: stagingDir, results: drive.results, tcpdump, bridge, failover: drive.failover, problems: drive.problems };
  } finally {
    for (const rec of live.recorders) rec.child.kill('SIGKILL');
    live.recorders = [];
    await l.stop();
    live.lab = undefined;
  }
}

// ---------------------------------------------------------------- output

function packageVersions(): string {
  try {
    return run('dpkg-query', ['-W', '-f', '${Package} ${Version}, ', 'nginx-light', 'vsftpd', 'dnsmasq-base', 'curl', 'lftp', 'bind9-dnsutils', 'tcpdump'])
      .replace(/, $/, '');
  } catch {
    return '(dpkg-query failed)';
  }
}

function shellQuote(arg: string): string {
  return /^[\w@%+=:,./[\]-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`;
}

function plural(n: number, what: string): string {
  return `${n} ${what}${n === 1 ? '' : 's'}`;
}

function bridgeSection(recording: Recording): string {
  const b = recording.bridge;
  const byReason = new Map<string, number>();
  for (const c of b.checkpoints) {
    const key = `${c.kind === 'reprotect' ? 'reprotect' : c.reason}: ${c.outcome}`;
    byReason.set(key, (byReason.get(key) ?? 0) + 1);
  }
  const checkpoints = b.checkpoints.length === 0 ? 'none'
    : [...byReason].map(([k, n]) => `${n} × ${k}`).join(', ');
  return `Between the namespaces ran shadowvm's \`Bridge\` (lib/bridge.ts) on the three host ends, as \`startBridgedLab\`
(lib/lab/bridged.ts) builds it: AF_PACKET ports, \`resync: 'align'\`, the lab sync agent answering checkpoints after
5 ms (a namespace's state cannot be copied), re-protection off (a dead replica stays dead). Client frames went to
the primary unchanged and to the backup translated into its sequence space; primary frames went to the client once
the backup had said the same; backup frames went nowhere (until a failover). While the captures ran:

- ${b.mismatches} mismatch${b.mismatches === 1 ? '' : 'es'}; agent requests: ${checkpoints};
- ${plural(b.releasedFrames, 'primary frame')} released to the client from the held queues, ${plural(b.backupFramesSuppressed, 'backup frame')} kept from it,
  ${plural(b.heldIngressFrames, 'client frame')} held during checkpoints;
- ${plural(b.probesSent, 'liveness probe')} to the primary (an ICMP echo, identifier 0x${PROBE_ECHO_ID.toString(16)}, sent when the backup
  spoke last and the primary then stayed quiet for ${DEFAULT_PIPELINE_CONFIG.failover.silenceMs} ms), ${b.probeReplies} answered: an answer is a frame the
  primary sent, so it is in primary.pcap, and no bridge, live or replayed, forwards it to the client;
- ${plural(b.failovers, 'failover')}; state at the end ${b.state}, roles ${b.roles}.`;
}

function failoverSection(recording: Recording): string {
  const f = recording.failover;
  if (!f) return '';
  const r = f.record;
  const live = r
    ? `The bridge promoted ${r.survivor} at ${fmtTime(toWallUs(r.promotedUs), f)}. Cause \`${r.cause}\`: ${r.detail} `
      + `(${((r.promotedUs - r.detectedUs) / 1000).toFixed(1)} ms from the start of the silence it measured to the promotion). `
      + `It carried ${plural(r.flowsCarried, 'flow')} over, sent ${plural(r.backlogFrames, 'backlog frame')} of the backup at once and `
      + `discarded ${plural(r.discardedFrames, 'held frame')} of the dead primary.`
    : 'The bridge did not fail over.';
  return `
## The death

${f.victim} (the primary) was killed silently at ${new Date(toWallUs(f.killUs) / 1000).toISOString()}, when the bridge had released
${f.releasedAtDeath} payload bytes of the download to the client. Its last frame in primary.pcap is at ${fmtTime(f.primaryLastFrameUs, f)}.
The kill took ${((f.killDoneUs - f.killUs) / 1000).toFixed(1)} ms: \`BridgedLab.kill\` runs its \`ip\` commands synchronously in the recorder's
process, which is also the bridge's, so for that long the bridge read no frame and ran no timer (its clock stamps a
frame when it reads it: the silence it measured began after the kill).
${live}
The probe (an ICMP echo to the primary) went *to* the primary's namespace, so it is not in primary.pcap (\`-Q in\`).

curl wrote ${f.download.bytes} bytes, sha256 \`${f.download.sha256}\` (the file: \`${f.download.expectedSha256}\`).
`;
}

function readme(scenario: Scenario, recording: Recording, report: FixtureReport, verdict: ExpectedVerdict, prefix: string): string {
  const ns = labNames(prefix).namespaces.client;
  const commands = recording.results.map((r) => `ip netns exec ${ns} ${r.argv.map(shellQuote).join(' ')}`).join('\n');
  const output = recording.results.map((r) => r.stdout.trimEnd()).filter(Boolean).join('\n');
  const others = (['client', 'primary', 'backup'] as const)
    .map((role) => `${role}.pcap: ${report.otherFrames[role].length ? report.otherFrames[role].join('; ') : 'none'}`).join(', ');
  const flows = report.flows.map((f) => `- ${f.flow.proto} port ${f.flow.vmPort} ↔ client port ${f.flow.clientPort}: `
    + `primary sent ${f.primaryBytes} bytes, backup ${f.backupBytes}${f.httpHeaderLength !== undefined ? ` (HTTP header ${f.httpHeaderLength} bytes)` : ''}`).join('\n');
  const received = (report.clientReceived ?? []).map((r) => `- the client received on ${r.flow.proto} port ${r.flow.vmPort} ↔ client port ${r.flow.clientPort}: `
    + `${r.bytes} bytes${r.fin ? ' and a FIN' : ''}, sha256 \`${r.sha256}\`; ${r.equalsBackupStream ? 'the backup\'s whole stream' : 'NOT the backup\'s whole stream'}, `
    + `${r.primaryIsPrefix ? 'the primary\'s stream a prefix of it' : 'the primary\'s stream NOT a prefix of it'}`).join('\n');
  const mismatches = report.mismatches.length === 0 ? ' none.' : `\n${report.mismatches.slice(0, 5).map((m) =>
    `\n- ${m.kind} on ${m.flow.proto} port ${m.flow.vmPort} at ${m.offset}: primary \`${m.primaryContext}\`, backup \`${m.backupContext}\``).join('')}`;
  const rxRow = recording.tcpdump['client-rx']
    ? `| client-rx.pcap | the bridge, to the client (\`-Q out\` on the client's host end): what the client received | ${readPcapFile(path.join(recording.dir, 'client-rx.pcap')).length} |\n`
    : '';
  return `# ${scenario.name}

${scenario.description}

## Client command

\`\`\`
${commands}
\`\`\`

Its output at recording time:

\`\`\`
${output || '(none)'}
\`\`\`

## Files

Recorded with \`tcpdump -i <host end> -s 0 -B 16384 -U -Q in -nn -Z root -w <role>.pcap\` on the host ends of the
lab's veth pairs: each file holds the frames one namespace *sent* (classic pcap, microseconds, Ethernet, complete
checksums: checksum offload is off in the namespaces).

| file | frames sent by | frames |
|---|---|---|
| client.pcap | the client (10.77.0.1, fd77::1, 02:77:00:00:00:01) | ${report.frameCounts.client} |
| primary.pcap | the primary (10.77.0.2, fd77::2, 02:77:00:00:00:02) | ${report.frameCounts.primary} |
| backup.pcap | the backup (same addresses and MAC as the primary; never forwarded before a failover) | ${report.frameCounts.backup} |
${rxRow}
Frames other than the scenario's TCP/UDP: ${others}.

${bridgeSection(recording)}
${failoverSection(recording)}
## Expected verdict

${scenario.explain(report, verdict, recording)}

\`expected.json\`: \`${JSON.stringify(verdict)}\`

What scripts/fixture-check.ts saw at recording time:

${flows || '- no flows'}${received ? `\n${received}` : ''}

Mismatches (in the primary's time order):${mismatches}

## Re-record

\`\`\`
sudo scripts/record-fixtures.sh ${scenario.name}
\`\`\`

Recorded ${new Date().toISOString().replace(/\.\d+Z$/, 'Z')} on Linux ${os.release()}; ${packageVersions()}.
`;
}

function writeExpected(outDir: string, entries: Record<string, ExpectedVerdict>): void {
  const file = path.join(outDir, 'expected.json');
  const current: Record<string, ExpectedVerdict> = fs.existsSync(file) ? JSON.parse(fs.readFileSync(file, 'utf8')) : {};
  const merged: Record<string, ExpectedVerdict> = {};
  // Scenario order first, then any entry this script does not know (kept as is).
  for (const s of SCENARIOS) {
    const entry = entries[s.name] ?? current[s.name];
    if (entry) merged[s.name] = entry;
  }
  for (const [name, entry] of Object.entries(current)) if (!(name in merged)) merged[name] = entry;
  fs.writeFileSync(file, `${JSON.stringify(merged, null, 2)}\n`);
}

function installFixture(stagingDir: string, target: string, text: string): void {
  fs.rmSync(target, { recursive: true, force: true });
  fs.mkdirSync(target, { recursive: true });
  for (const role of ['client', 'primary', 'backup', 'client-rx']) {
    const file = path.join(stagingDir, `${role}.pcap`);
    if (fs.existsSync(file)) fs.copyFileSync(file, path.join(target, `${role}.pcap`));
  }
  fs.writeFileSync(path.join(target, 'README.md'), text);
}

// ---------------------------------------------------------------- main

interface Options {
  outDir: string;
  prefix: string;
  attempts: number;
  names: string[];
}

function parseArgs(argv: string[]): Options | 'list' {
  const opts: Options = { outDir: path.resolve(__dirname, '../../fixtures'), prefix: 'svmrec', attempts: 3, names: [] };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--list') return 'list';
    else if (arg === '--out') opts.outDir = path.resolve(argv[++i]);
    else if (arg === '--prefix') opts.prefix = argv[++i];
    else if (arg === '--attempts') opts.attempts = Number(argv[++i]);
    else if (arg.startsWith('-')) throw new Error(`unknown option ${arg}`);
    else opts.names.push(arg);
  }
  const known = new Set(SCENARIOS.map((s) => s.name));
  const unknown = opts.names.filter((n) => !known.has(n));
  if (unknown.length) throw new Error(`unknown scenario(s) ${unknown.join(', ')}; known: ${[...known].join(', ')}`);
  labNames(opts.prefix);
  return opts;
}

function cleanUpAndExit(code: number): never {
  for (const rec of live.recorders) rec.child.kill('SIGKILL');
  if (live.lab) teardownLab(live.lab.lab);
  if (live.staging) fs.rmSync(live.staging, { recursive: true, force: true });
  process.exit(code);
}

/** Why a recording is not what its scenario promises; empty when it is. */
function recordingProblems(scenario: Scenario, recording: Recording, report: FixtureReport, verdict: ExpectedVerdict): string[] {
  const problems = [...recording.problems, ...verdictProblems(report, verdict)];
  const clientSyns = countClientSyns(recording.dir);
  if (scenario.tcpConnections !== undefined && clientSyns !== scenario.tcpConnections) {
    problems.push(`client opened ${clientSyns} TCP connections, expected ${scenario.tcpConnections}`);
  }
  for (const [role, stats] of Object.entries(recording.tcpdump) as [CaptureRole, RecorderStats][]) {
    const inFile = readPcapFile(path.join(recording.dir, `${role}.pcap`)).length;
    if (stats.droppedByKernel > 0) problems.push(`tcpdump (${role}) dropped ${stats.droppedByKernel} frames`);
    if (stats.captured !== inFile) problems.push(`tcpdump (${role}) captured ${stats.captured} frames, file holds ${inFile}`);
  }
  if (scenario.check) problems.push(...scenario.check(recording));
  return problems;
}

async function main(): Promise<number> {
  const opts = parseArgs(process.argv.slice(2));
  if (opts === 'list') {
    for (const s of SCENARIOS) console.log(`${s.name}\t${s.description.split('. ')[0]}`);
    return 0;
  }
  if (process.getuid?.() !== 0) throw new Error('record-fixtures needs root (network namespaces, veths, tcpdump)');
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(signal, () => {
      console.error(`\n${signal}: tearing down the lab`);
      cleanUpAndExit(130);
    });
  }
  const scenarios = opts.names.length ? SCENARIOS.filter((s) => opts.names.includes(s.name)) : SCENARIOS;
  const expected: Record<string, ExpectedVerdict> = {};
  const failed: string[] = [];
  for (const scenario of scenarios) {
    let done = false;
    for (let attempt = 1; attempt <= opts.attempts && !done; attempt++) {
      const staging = fs.mkdtempSync(path.join(os.tmpdir(), `shadowvm-rec-${scenario.name}-`));
      live.staging = staging;
      try {
        console.log(`== ${scenario.name} (attempt ${attempt}/${opts.attempts})`);
        let recording: Recording;
        try {
          recording = await recordOnce(scenario, opts.prefix, staging);
        } catch (err) {
          // A client that failed (a timeout, a refused connection) spoils this attempt, not the run.
          console.log(`  failed: ${err instanceof Error ? err.message : String(err)}`);
          if (attempt < opts.attempts) continue;
          failed.push(scenario.name);
          console.log(`  nothing recorded for ${scenario.name}`);
          break;
        }
        const report = checkFixture(staging);
        const verdict = scenario.expected(report, recording);
        const problems = recordingProblems(scenario, recording, report, verdict);
        console.log(formatReport(report).replace(staging, scenario.name));
        console.log(`  bridge during capture: ${JSON.stringify(recording.bridge)}`);
        if (recording.failover?.record) {
          const r = recording.failover.record;
          console.log(`  failover: ${r.cause} (${r.detail}); the kill took ${((recording.failover.killDoneUs - recording.failover.killUs) / 1000).toFixed(1)} ms; `
            + `promoted ${((r.promotedUs - recording.failover.killUs) / 1000).toFixed(1)} ms after the kill began, `
            + `${((r.promotedUs - r.detectedUs) / 1000).toFixed(1)} ms after the silence began; ${r.flowsCarried} flows carried, ${r.backlogFrames} backlog frames`);
        }
        if (problems.length) {
          console.log(`  not as expected:\n    ${problems.join('\n    ')}`);
          if (attempt < opts.attempts) continue;
          failed.push(scenario.name);
          console.log(`  keeping the last recording of ${scenario.name} although it is not as expected`);
        }
        installFixture(staging, path.join(opts.outDir, scenario.name), readme(scenario, recording, report, verdict, opts.prefix));
        expected[scenario.name] = verdict;
        writeExpected(opts.outDir, expected);
        done = true;
      } finally {
        fs.rmSync(staging, { recursive: true, force: true });
        live.staging = undefined;
      }
    }
  }
  if (failed.length) {
    console.error(`recorded, but not as expected: ${failed.join(', ')}`);
    return 1;
  }
  console.log(`recorded ${scenarios.map((s) => s.name).join(', ')} into ${opts.outDir}`);
  return 0;
}

/** SYNs (without ACK) the client sent: one per TCP connection it opened. */
function countClientSyns(dir: string): number {
  return readPcapFile(path.join(dir, 'client.pcap')).filter((f) => {
    const seg = decodeFrame(f.bytes);
    return seg.proto === 'tcp' && (seg.flags & (TCP_SYN | TCP_ACK)) === TCP_SYN;
  }).length;
}

main().then(
  (code) => cleanUpAndExit(code),
  (err: unknown) => {
    console.error(err instanceof Error ? err.stack ?? err.message : err);
    cleanUpAndExit(1);
  },
);
