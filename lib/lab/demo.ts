/**
 * The netns lab demo (`shadowvm lab demo`, `make demo`): real servers
 * behind the bridge, real clients, live counters, then a divergence made on
 * purpose and what the bridge does about it.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { formatStatus } from '../control/status-format';
import { LogFn } from '../control/logger';
import { BridgedLab, startBridgedLab, waitFor } from './bridged';
import { LAB_CONTENT_MTIME, LAB_FILES, fixedSeedBytes } from './content';
import { runInAsync } from './exec';
import { paced } from './servers';
import { IoBackend } from '../cli/ports';
import { openRunLogFile, reportLine, teeLog } from '../report';

export interface DemoOptions {
  prefix?: string;
  io?: IoBackend;
  /** Where the demo's narration goes. */
  print: (line: string) => void;
  log?: LogFn;
  /** Called once the lab is up (the demo handles Ctrl-C itself from then on). */
  onUp?: () => void;
  /** Where the HTML report of the run goes (its JSON log beside it, `.log`); default ./shadowvm-demo-report.html. */
  reportPath?: string;
}

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

let fetches = 0;

/** curl in the client namespace; the body is written to a file (stdout would mangle binary data). */
async function fetch(l: BridgedLab, url: string): Promise<Buffer> {
  const out = join(l.lab.runDir, `fetch-${++fetches}`);
  await runInAsync(l.lab.client.netns, 'curl', ['-sS', '--fail', '--max-time', '20', '-o', out, url], 30_000);
  return readFileSync(out);
}

export async function runLabDemo(o: DemoOptions): Promise<{ mismatches: number; checkpoints: number; failovers: number }> {
  const p = o.print;
  p('building the netns lab: client, primary and backup namespaces (primary and backup share IP and MAC),');
  p('nginx, vsftpd and dnsmasq in both replicas, shadowvm bridging the host ends of the veths, the lab sync agent');
  const reportPath = o.reportPath ?? join(process.cwd(), 'shadowvm-demo-report.html');
  const runLog = openRunLogFile(reportPath.replace(/\.html$/, '') + '.log', { perEventPerSecond: 0 });
  const l = await startBridgedLab({ prefix: o.prefix, io: o.io, log: teeLog(o.log, runLog.log), config: { releaseLogMs: 200 } })
    .catch((e) => { runLog.close(); throw e; });
  o.onUp?.();
  let cleanup: (() => void) | null = null;
  const interrupted = new Promise<never>((_, reject) => {
    const onSignal = (sig: string) => reject(new Error(`interrupted by ${sig}: lab torn down`));
    const a = () => onSignal('SIGINT'), b = () => onSignal('SIGTERM');
    process.once('SIGINT', a);
    process.once('SIGTERM', b);
    cleanup = () => { process.off('SIGINT', a); process.off('SIGTERM', b); };
  });
  interrupted.catch(() => {});
  try {
    return await Promise.race([interrupted, demoSteps(l, p)]);
  } finally {
    (cleanup as (() => void) | null)?.();
    await l.stop();
    p('lab torn down: namespaces, veths and servers removed');
    runLog.close();
    p(reportLine(runLog.path, reportPath, 'shadowvm lab demo'));
  }
}

async function demoSteps(l: BridgedLab, p: (line: string) => void): Promise<{ mismatches: number; checkpoints: number; failovers: number }> {
  const { lab, servers, bridge } = l;
  p(`bridge ${lab.prefix}: uplink ${lab.client.hostIf}, primary ${lab.primary.hostIf}, backup ${lab.backup.hostIf}; state ${bridge.pipeline.state}`);
  p('');
  p('1. requests served through the bridge (the client only ever hears the primary, once the backup said the same)');
  const root = servers.primary.contentRoot;
  for (const [url, file] of [
    [`http://${lab.serviceIpv4}/${LAB_FILES.blob}`, LAB_FILES.blob],
    [`http://[${lab.serviceIpv6}]/${LAB_FILES.blob}`, LAB_FILES.blob],
    [`http://${lab.serviceIpv4}/${LAB_FILES.lorem}`, LAB_FILES.lorem],
  ] as const) {
    const body = await fetch(l, url);
    const same = sha256(body) === sha256(readFileSync(join(root, file)));
    p(`   curl ${url}: ${body.length} bytes, ${same ? 'identical to the served file' : 'DIFFERENT from the served file'}`);
  }
  const ftp = await runInAsync(lab.client.netns, 'lftp', ['-e', `set ftp:passive-mode on; set ftp:prefer-epsv no; set net:max-retries 1; set net:timeout 10; cat ${LAB_FILES.hello}; quit`, `ftp://${lab.serviceIpv4}`], 30_000).catch((e: Error) => `(failed: ${e.message.split('\n')[0]})`);
  p(`   lftp passive-mode get ${LAB_FILES.hello}: ${JSON.stringify(ftp.trim().slice(0, 60))}`);
  p('   (FTP passive mode: the replicas pick different data ports, so the 227 reply mismatches and the bridge checkpoints)');
  p('');
  p('2. live counters');
  p(indent(formatStatus(bridge.snapshot())));
  p('');
  p(`3. ${LAB_FILES.lorem} changed on the primary only (one byte, same size and mtime), fetched again`);
  // A checkpoint still running (the FTP's) would let the changed byte pass uncompared: start from COMPARING.
  await waitFor(() => bridge.pipeline.state === 'COMPARING', 5000);
  const before = bridge.snapshot();
  const file = join(root, LAB_FILES.lorem);
  const text = readFileSync(file);
  text[1000] = text[1000] === 0x23 ? 0x24 : 0x23;
  writeFileSync(file, text);
  utimesSync(file, LAB_CONTENT_MTIME, LAB_CONTENT_MTIME);
  const body = await fetch(l, `http://${lab.serviceIpv4}/${LAB_FILES.lorem}`);
  await waitFor(() => bridge.pipeline.state === 'COMPARING', 5000);
  p(`   the client received ${body.length} bytes: the primary's version (${sha256(body) === sha256(text) ? 'identical' : 'NOT identical'} to the primary's file)`);
  const flows = bridge.pipeline.reports.filter((r) => r.mismatchList.length > 0).slice(-1);
  for (const f of flows) {
    const m = f.mismatchList[f.mismatchList.length - 1];
    p(`   mismatch (${m.kind}) on ${f.key} at stream offset ${m.offset}:`);
    p(`     primary said ${m.primary}`);
    p(`     backup said  ${m.backup}`);
  }
  const after = bridge.snapshot();
  const history = bridge.pipeline.replicator.history;
  const last = history[history.length - 1];
  p(`   checkpoint #${last.epoch} requested (reason ${last.reason}${last.flow ? `, flow ${last.flow}` : ''}): ${last.outcome}${last.ms !== undefined ? ` in ${last.ms.toFixed(1)} ms` : ''}`);
  p(`   mismatches ${before.mismatches} → ${after.mismatches}, checkpoints done ${before.checkpoints.done} → ${after.checkpoints.done}, state ${after.state}`);
  p('   a namespace cannot be state-synced: the lab agent only answers, and the bridge restarts comparison from');
  p('   where both replicas stand. The backup still serves the old byte: every later fetch of this file mismatches');
  p('   again. The QEMU lab copies the primary\'s memory into the backup instead.');
  p('');
  await failoverStep(l, p);
  p('');
  const end = bridge.snapshot();
  p('5. counters at the end');
  p(indent(formatStatus(end)));
  return { mismatches: end.mismatches, checkpoints: end.checkpoints.done, failovers: end.failover.count };
}

const FAILOVER_FILE = 'failover-demo.bin';
const FAILOVER_BYTES = 64 << 20;

/** The primary dies (its link goes down) in the middle of a download; the client does not notice. */
async function failoverStep(l: BridgedLab, p: (line: string) => void): Promise<void> {
  const { lab, servers, bridge } = l;
  const pipeline = bridge.pipeline;
  const content = fixedSeedBytes(FAILOVER_BYTES, 4242);
  for (const root of [servers.primary.contentRoot, servers.backup.contentRoot]) writeFileSync(join(root, FAILOVER_FILE), content);
  const out = join(lab.runDir, 'failover-download');
  const dead = l.activeNode();
  p(`4. the primary (${dead.netns}) dies in the middle of a ${FAILOVER_BYTES >> 20} MiB download: its link goes down`);
  const started = Date.now();
  const download = runInAsync(lab.client.netns, 'wget', paced(out, `http://${lab.serviceIpv4}/${FAILOVER_FILE}`, '32m', 60), 70_000);
  await new Promise((r) => setTimeout(r, 700));
  const received = existsSync(out) ? statSync(out).size : 0;
  await l.kill(dead, 'abrupt');
  const promoted = await waitFor(() => pipeline.failover.failovers > 0, 5000, 1);
  await download;
  const body = readFileSync(out);
  const rec = pipeline.failoverHistory[pipeline.failoverHistory.length - 1];
  p(`   ${(received / 1048576).toFixed(1)} MiB had arrived when the link went down (${((Date.now() - started) / 1000).toFixed(1)} s download in all)`);
  if (promoted && rec) {
    p(`   failover: ${rec.cause} (${rec.detail}); ${rec.survivor} promoted ${((rec.promotedUs - rec.detectedUs) / 1000).toFixed(1)} ms after the carrier went down`);
    p(`   ${rec.flowsCarried} connection${rec.flowsCarried === 1 ? '' : 's'} carried over, ${rec.backlogFrames} frame${rec.backlogFrames === 1 ? '' : 's'} of the backup's backlog sent at once, ${rec.discardedFrames} unconfirmed primary frame${rec.discardedFrames === 1 ? '' : 's'} dropped`);
  } else {
    p('   NO failover happened');
  }
  p(`   the client received ${body.length} bytes, ${sha256(body) === sha256(content) ? 'identical to the file' : 'NOT identical to the file'}: same TCP connection, no byte lost or repeated`);
  const again = await waitFor(() => pipeline.state === 'COMPARING' && pipeline.replicas.standby !== null, 20_000);
  p(`   re-protection: ${again ? `${dead.netns} restarted its servers and is the backup now (${pipeline.replicas.describe()})` : `not done yet (state ${pipeline.state})`}`);
  const next = await fetch(l, `http://${lab.serviceIpv4}/${LAB_FILES.blob}`);
  p(`   a new download after it: ${next.length} bytes, compared again (state ${pipeline.state})`);
}

function indent(text: string): string {
  return text.split('\n').map((l) => `   ${l}`).join('\n');
}
