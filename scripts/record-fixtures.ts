/**
 * record-fixtures: records the replay fixtures (`fixtures/<name>/`) from real
 * servers and clients in the netns lab. Needs root.
 *
 * For each scenario: build a fresh lab, start nginx/vsftpd/dnsmasq in primary
 * and backup, run a LabRelay between the three host veth ends (client frames
 * to the primary unchanged and to the backup through BackupIngressTranslator;
 * the primary's frames to the client; the backup's frames nowhere), let the
 * lab's setup noise pass, start one tcpdump per host end (`-Q in`: what that
 * namespace sent), run the client command, stop tcpdump, tear down. Then the
 * recording is checked (scripts/fixture-check.ts) against the scenario's
 * expected verdict and retried if a race spoiled it; the fixture folder gets
 * the three pcaps and a README, and `fixtures/expected.json` its entry.
 *
 * Usage: node dist/scripts/record-fixtures.js [--out DIR] [--prefix P]
 *          [--attempts N] [--list] [scenario ...]
 *        (scripts/record-fixtures.sh builds first and checks for root)
 */
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { CapPort } from '../lib/io/cap-port';
import { ContentDivergence, LAB_FILES } from '../lib/lab/content';
import { run } from '../lib/lab/exec';
import { Lab, buildLab, labNames, teardownLab, waitUntilQuiet } from '../lib/lab/netns';
import { LabRelay } from '../lib/lab/relay';
import { LAB_DNS_NAME, LabService, startLabServers } from '../lib/lab/servers';
import { BackupIngressTranslator } from '../lib/rewrite/backup-ingress';
import {
  ExpectedVerdict, FixtureReport, TCP_ACK, TCP_SYN, checkFixture, decodeFrame, formatReport, readPcapFile, verdictProblems,
} from './fixture-check';

const SERVICE_V4 = '10.77.0.2';
const SERVICE_V6 = 'fd77::2';
const DIVERGE_OFFSET = 1000;

interface Scenario {
  readonly name: string;
  /** One paragraph for the README: what runs and why it is a useful fixture. */
  readonly description: string;
  readonly services: readonly LabService[];
  readonly backupDivergence?: ContentDivergence;
  /** Each argv runs in the client namespace, one after the other; all must exit 0. */
  readonly clientCommands: readonly (readonly string[])[];
  /** TCP connections the client must open (counted as SYNs in client.pcap); a guard on the scenario's shape. */
  readonly tcpConnections?: number;
  /** The verdict the replay engine must reach; may use the recording (e.g. a measured header length). */
  expected(report: FixtureReport): ExpectedVerdict;
  /** README sentence explaining the verdict. */
  explain(report: FixtureReport, verdict: ExpectedVerdict): string;
}

const curlBase = ['curl', '--http1.1', '--no-progress-meter', '--fail', '--max-time', '20',
  '-w', '%{http_code} %{size_download} bytes, new connections: %{num_connects}, %{url_effective}\\n'];

function curlFetch(urls: readonly string[], extra: readonly string[] = []): string[] {
  return [...curlBase, ...extra, ...urls.flatMap((url) => ['-o', '/dev/null', url])];
}

function dig(type: string): string[] {
  return ['dig', '+tries=1', '+time=3', `@${SERVICE_V4}`, LAB_DNS_NAME, type];
}

function httpHeaderLength(report: FixtureReport): number {
  const flow = report.flows.find((f) => f.flow.proto === 'tcp' && f.flow.vmPort === 80 && f.httpHeaderLength !== undefined);
  if (!flow?.httpHeaderLength) throw new Error(`${report.dir}: no HTTP response header found in primary.pcap`);
  return flow.httpHeaderLength;
}

const SCENARIOS: readonly Scenario[] = [
  {
    name: 'http-keepalive',
    description: 'curl fetches four static files from nginx over one HTTP/1.1 keep-alive connection (IPv4): '
      + `${LAB_FILES.hello}, ${LAB_FILES.index}, ${LAB_FILES.blob} (100 KiB, many full-size segments) and ${LAB_FILES.lorem}. `
      + 'Primary and backup serve identical trees with identical mtimes, so every header (ETag, Last-Modified) agrees.',
    services: ['nginx'],
    clientCommands: [curlFetch([LAB_FILES.hello, LAB_FILES.index, LAB_FILES.blob, LAB_FILES.lorem].map((f) => `http://${SERVICE_V4}/${f}`))],
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
    services: ['vsftpd'],
    clientCommands: [[
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
    services: ['nginx'],
    backupDivergence: { file: LAB_FILES.lorem, offset: DIVERGE_OFFSET },
    clientCommands: [curlFetch([`http://${SERVICE_V4}/${LAB_FILES.lorem}`])],
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
    services: ['nginx'],
    clientCommands: [curlFetch([LAB_FILES.hello, LAB_FILES.blob].map((f) => `http://[${SERVICE_V6}]/${f}`), ['-g'])],
    tcpConnections: 1,
    expected: () => ({ mismatches: 0 }),
    explain: () => 'Zero mismatches.',
  },
  {
    name: 'udp-dns',
    description: `dig asks dnsmasq for ${LAB_DNS_NAME} five times over UDP: three A queries, one AAAA, one TXT, each dig `
      + 'a new process (new source port, new query ID). dnsmasq answers from its --address/--txt-record configuration.',
    services: ['dnsmasq'],
    clientCommands: [dig('A'), dig('A'), dig('A'), dig('AAAA'), dig('TXT')],
    tcpConnections: 0,
    expected: () => ({ mismatches: 0 }),
    explain: () => 'Zero mismatches: each response datagram of the backup equals the primary\'s.',
  },
];

// ---------------------------------------------------------------- tcpdump

interface Recorder {
  readonly role: string;
  readonly file: string;
  readonly child: ChildProcess;
  stderr: string;
  exited: Promise<number | null>;
}

const live = { lab: undefined as Lab | undefined, recorders: [] as Recorder[], staging: undefined as string | undefined };

function startRecorder(role: string, iface: string, file: string): Promise<Recorder> {
  // -Z root: Debian's tcpdump would otherwise drop to user tcpdump before opening the file.
  // No --immediate-mode: with -s 0 it makes libpcap use a TPACKET_V2 ring of
  // 256 KiB slots, 8 of them in the default 2 MiB buffer, and a 100 KiB burst
  // overflows it. TPACKET_V3 blocks are retired within tcpdump's 1 s timeout,
  // which the pause before SIGINT outlasts.
  const child = spawn('tcpdump', ['-i', iface, '-s', '0', '-B', '16384', '-U', '-Q', 'in', '-nn', '-Z', 'root', '-w', file],
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
  // Asynchronous on purpose: the relay runs on this process's event loop.
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

// ---------------------------------------------------------------- one recording

interface Recording {
  dir: string;
  results: CommandResult[];
  tcpdump: Record<string, RecorderStats>;
  relay: ReturnType<LabRelay['counters']>;
  translator: { translated?: number; heldDropped?: number };
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

async function recordOnce(scenario: Scenario, prefix: string, stagingDir: string): Promise<Recording> {
  const lab = buildLab({ prefix });
  live.lab = lab;
  const ports: CapPort[] = [];
  let relay: LabRelay | undefined;
  try {
    await startLabServers(lab, { services: scenario.services, backupDivergence: scenario.backupDivergence });
    const client = new CapPort(lab.client.hostIf);
    ports.push(client);
    const primary = new CapPort(lab.primary.hostIf);
    ports.push(primary);
    const backup = new CapPort(lab.backup.hostIf);
    ports.push(backup);
    const translator = new BackupIngressTranslator();
    relay = new LabRelay({ client, primary, backup }, translator);
    relay.start();
    await waitUntilQuiet(lab);

    const recorders = [];
    for (const node of lab.nodes) recorders.push(await startRecorder(node.role, node.hostIf, path.join(stagingDir, `${node.role}.pcap`)));
    const before = relay.counters();
    const results: CommandResult[] = [];
    for (const argv of scenario.clientCommands) results.push(await runClient(lab, argv));
    // Let the last answers (the backup lags the primary) and closing handshakes
    // reach the captures, and tcpdump's last ring block (1 s timeout) be read.
    await sleep(1500);
    const tcpdump: Record<string, RecorderStats> = {};
    for (const rec of recorders) tcpdump[rec.role] = await stopRecorder(rec);
    const after = relay.counters();
    const relayDelta = { ...after };
    for (const key of Object.keys(after) as (keyof typeof after)[]) relayDelta[key] -= before[key];
    const t = translator as unknown as { translated?: number; heldDropped?: number };
    return { dir: stagingDir, results, tcpdump, relay: relayDelta, translator: { translated: t.translated, heldDropped: t.heldDropped } };
  } finally {
    for (const rec of live.recorders) rec.child.kill('SIGKILL');
    live.recorders = [];
    relay?.stop();
    for (const port of ports) await port.close();
    const report = teardownLab(lab);
    live.lab = undefined;
    if (report.failures.length) console.warn(`teardown of ${prefix}: ${report.failures.join('; ')}`);
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

function readme(scenario: Scenario, recording: Recording, report: FixtureReport, verdict: ExpectedVerdict, prefix: string): string {
  const ns = labNames(prefix).namespaces.client;
  const commands = recording.results.map((r) => `ip netns exec ${ns} ${r.argv.map(shellQuote).join(' ')}`).join('\n');
  const output = recording.results.map((r) => r.stdout.trimEnd()).filter(Boolean).join('\n');
  const others = (['client', 'primary', 'backup'] as const)
    .map((role) => `${role}.pcap: ${report.otherFrames[role].length ? report.otherFrames[role].join('; ') : 'none'}`).join(', ');
  const flows = report.flows.map((f) => `- ${f.flow.proto} port ${f.flow.vmPort} ↔ client port ${f.flow.clientPort}: `
    + `primary sent ${f.primaryBytes} bytes, backup ${f.backupBytes}${f.httpHeaderLength !== undefined ? ` (HTTP header ${f.httpHeaderLength} bytes)` : ''}`).join('\n');
  const mismatches = report.mismatches.length === 0 ? ' none.' : `\n${report.mismatches.slice(0, 5).map((m) =>
    `\n- ${m.kind} on ${m.flow.proto} port ${m.flow.vmPort} at ${m.offset}: primary \`${m.primaryContext}\`, backup \`${m.backupContext}\``).join('')}`;
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
| backup.pcap | the backup (same addresses and MAC as the primary; never forwarded) | ${report.frameCounts.backup} |

Frames other than the scenario's TCP/UDP: ${others}.

Between the namespaces ran \`LabRelay\` (lib/lab/relay.ts):

- client frames to the primary unchanged, and to the backup translated by \`BackupIngressTranslator\`
  (lib/rewrite/backup-ingress.ts): ${recording.translator.translated ?? '?'} frames translated, ${recording.translator.heldDropped ?? '?'} held frames dropped;
- primary frames to the client once the backup had sent as far in the same flow: ${recording.relay.gated} frames waited,
  ${recording.relay.gateTimeouts} flows timed out (backup silent or shorter) and passed ungated from then on;
- backup frames nowhere.

## Expected verdict

${scenario.explain(report, verdict)}

\`expected.json\`: \`${JSON.stringify(verdict)}\`

What scripts/fixture-check.ts saw at recording time:

${flows || '- no flows'}

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
  for (const role of ['client', 'primary', 'backup']) fs.copyFileSync(path.join(stagingDir, `${role}.pcap`), path.join(target, `${role}.pcap`));
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
  if (live.lab) teardownLab(live.lab);
  if (live.staging) fs.rmSync(live.staging, { recursive: true, force: true });
  process.exit(code);
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
        const recording = await recordOnce(scenario, opts.prefix, staging);
        const report = checkFixture(staging);
        const verdict = scenario.expected(report);
        const problems = verdictProblems(report, verdict);
        const clientSyns = countClientSyns(staging);
        if (scenario.tcpConnections !== undefined && clientSyns !== scenario.tcpConnections) {
          problems.push(`client opened ${clientSyns} TCP connections, expected ${scenario.tcpConnections}`);
        }
        for (const [role, stats] of Object.entries(recording.tcpdump)) {
          const inFile = report.frameCounts[role as keyof typeof report.frameCounts];
          if (stats.droppedByKernel > 0) problems.push(`tcpdump (${role}) dropped ${stats.droppedByKernel} frames`);
          if (stats.captured !== inFile) problems.push(`tcpdump (${role}) captured ${stats.captured} frames, file holds ${inFile}`);
        }
        console.log(formatReport(report).replace(staging, scenario.name));
        console.log(`  relay during capture: ${JSON.stringify(recording.relay)}`);
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
