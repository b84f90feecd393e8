/**
 * `normalize.httpDate` on the live netns lab (root; needs curl in the client
 * namespace).
 *
 * Two nginx read one system clock, so their `Date:` headers differ only when a
 * second boundary falls between the two replicas' answers: too rare to test
 * on, and the namespaces cannot have clocks of their own (a time namespace
 * offsets the monotonic and boot clocks, not the wall clock). So each replica
 * runs a small real HTTP server (Node's http module, a process in its
 * namespace, port 8080) that stamps `Date:` itself: the primary with the
 * time, the backup with the time plus one second. Their answers then differ
 * in Date on nearly every response and in nothing else. Each server logs the
 * Date it wrote per request id, so the test knows which replica's bytes the
 * client received.
 *
 * Off: the Date differences are mismatches and cost checkpoints. On: no
 * mismatch, the count of normalized values equals the number of responses
 * whose two Dates differed, and the client received the primary's Dates.
 */
import { spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { BridgedLab, startBridgedLab, waitFor } from '../../lib/lab/bridged';
import { runInAsync } from '../../lib/lab/exec';
import { Lab, LabNode, findLabLeftovers, teardownLab } from '../../lib/lab/netns';
import { NO_LEFTOVERS, requireRoot } from '../support/lab-helpers';

const PREFIX = 'hd';
const PORT = 8080;
const REQUESTS = 40;
const BODY = 'shadowvm date test\n'.repeat(20);
jest.setTimeout(90_000);

/** The server each replica runs: `node -e SERVER PORT OFFSET_MS`. Prints `listening`, then `<id> <Date>` per answer. */
const SERVER = `
const http = require('node:http');
const [port, offsetMs] = process.argv.slice(1).map(Number);
const body = ${JSON.stringify(BODY)};
http.createServer((req, res) => {
  const id = req.url.slice(1);
  const date = new Date(Date.now() + offsetMs).toUTCString();
  res.sendDate = false;
  res.writeHead(200, { Date: date, 'X-Request-Id': id, 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
  process.stdout.write(id + ' ' + date + '\\n');
}).listen(port, '0.0.0.0', () => process.stdout.write('listening\\n'));
`;

/** Starts the Date server in `node`'s namespace, registered with the lab so teardown kills it; returns its log file. */
async function startDateServer(lab: Lab, node: LabNode, offsetMs: number): Promise<string> {
  const logFile = join(lab.runDir, `date-server-${node.role}.log`);
  const fd = openSync(logFile, 'a');
  try {
    const child = spawn('ip', ['netns', 'exec', node.netns, process.execPath, '-e', SERVER, String(PORT), String(offsetMs)], { detached: true, stdio: ['ignore', fd, fd] });
    if (child.pid === undefined) throw new Error(`could not start the date server in ${node.netns}`);
    child.unref();
    lab.processes.push({ name: 'date-server', netns: node.netns, pid: child.pid, logFile });
  } finally {
    closeSync(fd);
  }
  const up = await waitFor(() => readFileSync(logFile, 'utf8').includes('listening'), 10_000, 50);
  if (!up) throw new Error(`the date server in ${node.netns} did not start: ${readFileSync(logFile, 'utf8')}`);
  return logFile;
}

/** `<id> <Date>` lines of a server's log. */
function datesWritten(logFile: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of readFileSync(logFile, 'utf8').split('\n')) {
    const m = /^(\d+) (.+)$/.exec(line);
    if (m) out.set(m[1], m[2]);
  }
  return out;
}

interface Received { id: string; date: string; body: string }

/** Splits curl -i output of several responses into what each carried. */
function responsesOf(out: string): Received[] {
  const parts = out.split(/(?=HTTP\/1\.1 )/).filter((p) => p.startsWith('HTTP/1.1 '));
  return parts.map((p) => {
    const head = p.slice(0, p.indexOf('\r\n\r\n'));
    return {
      id: /\r\nX-Request-Id: (\d+)/i.exec(head)?.[1] ?? '?',
      date: /\r\nDate: ([^\r]*)/i.exec(head)?.[1] ?? '?',
      body: p.slice(head.length + 4),
    };
  });
}

interface Run {
  received: Received[];
  primaryDates: Map<string, string>;
  backupDates: Map<string, string>;
  compare: Record<string, number>;
  mismatchCheckpoints: number;
  state: string;
}

/** A lab with the setting as given; REQUESTS requests on one keep-alive connection; the lab torn down after. */
async function runWith(httpDate: boolean): Promise<Run> {
  let l: BridgedLab | undefined;
  try {
    l = await startBridgedLab({ prefix: PREFIX, config: { normalize: { httpDate, httpDateToleranceMs: 2000 }, maxUnmatchedAgeMs: 2000 } });
    const { lab, bridge } = l;
    const primaryLog = await startDateServer(lab, lab.primary, 0);
    const backupLog = await startDateServer(lab, lab.backup, 1000);
    const before = bridge.snapshot();
    const urls = Array.from({ length: REQUESTS }, (_, i) => `http://${lab.serviceIpv4}:${PORT}/${i + 1}`);
    // One curl, one connection: each next request goes once the previous answer was released.
    const out = await runInAsync(lab.client.netns, 'curl', ['-sS', '-i', '--max-time', '60', ...urls], 70_000);
    await waitFor(() => bridge.snapshot().state === 'COMPARING', 5_000);
    const after = bridge.snapshot();
    const compare: Record<string, number> = {};
    for (const [k, v] of Object.entries(after.stages.compare)) compare[k] = v - (before.stages.compare[k] ?? 0);
    return {
      received: responsesOf(out),
      primaryDates: datesWritten(primaryLog),
      backupDates: datesWritten(backupLog),
      compare,
      mismatchCheckpoints: after.checkpoints.requested.mismatch - before.checkpoints.requested.mismatch,
      state: after.state,
    };
  } finally {
    await l?.stop();
    teardownLab(PREFIX);
  }
}

describe('HTTP Date values on the netns lab', () => {
  beforeAll(() => {
    requireRoot('lab-http-date.test.ts');
    teardownLab(PREFIX);
  });

  afterAll(() => {
    teardownLab(PREFIX);
    expect(findLabLeftovers(PREFIX)).toEqual(NO_LEFTOVERS);
  });

  test('with the setting off, replicas whose Date headers differ cost mismatch checkpoints', async () => {
    const r = await runWith(false);
    expect(r.received).toHaveLength(REQUESTS);
    const differing = [...r.primaryDates].filter(([id, d]) => r.backupDates.get(id) !== d).length;
    console.log(`off: ${REQUESTS} requests, ${differing} with differing Dates; mismatches ${r.compare.mismatches_data}, mismatch checkpoints ${r.mismatchCheckpoints}`);
    expect(differing).toBeGreaterThan(0);
    expect(r.compare.mismatches_data).toBeGreaterThan(0);
    expect(r.mismatchCheckpoints).toBeGreaterThan(0);
    expect(r.compare.http_date_normalized).toBe(0);
  });

  test('with the setting on, no mismatch: every differing Date is normalized and the client gets the primary\'s bytes', async () => {
    const r = await runWith(true);
    expect(r.received.map((x) => x.id)).toEqual(Array.from({ length: REQUESTS }, (_, i) => String(i + 1)));
    const differing = [...r.primaryDates].filter(([id, d]) => r.backupDates.get(id) !== d).length;
    console.log(`on: ${REQUESTS} requests, ${differing} with differing Dates; normalized ${r.compare.http_date_normalized}, mismatches ${r.compare.mismatches}, mismatch checkpoints ${r.mismatchCheckpoints}`);
    expect(differing).toBeGreaterThan(0);
    expect(r.compare).toMatchObject({ mismatches: 0, http_date_normalized: differing, http_date_rejected: 0 });
    expect(r.mismatchCheckpoints).toBe(0);
    for (const x of r.received) {
      expect({ id: x.id, date: x.date, body: x.body }).toEqual({ id: x.id, date: r.primaryDates.get(x.id), body: BODY });
    }
    expect(r.state).toBe('COMPARING');
  });
});
