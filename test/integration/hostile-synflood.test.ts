/**
 * Issue 7, "70k SYNs from spoofed sources" (root, live netns lab): an
 * established HTTP keep-alive connection lies idle while a SYN flood from
 * spoofed sources fills the flow table several times over. The flood's
 * half-open flows evict each other; the idle connection stays in the table,
 * and when it asks for a big file afterwards its bytes are compared (not
 * passed unprotected, no `timeout` checkpoints) and arrive byte-identical.
 */
import { ChildProcess, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { queryControlSocket } from '../../lib/control/control-socket';
import { BridgedLab, startBridgedLab } from '../../lib/lab/bridged';
import { LAB_FILES, fixedSeedBytes } from '../../lib/lab/content';
import { serveOnBoth } from '../../lib/lab/servers';
import { runInAsync } from '../../lib/lab/exec';
import { DEFAULT_PIPELINE_CONFIG } from '../../lib/pipeline/config';
import type { ShadowFlow } from '../../lib/pipeline/shadow-flow';
import type { InjectResult } from '../support/frame-injector';
import { REPO_ROOT, recordingLog, requireRoot, stopLabAfterAll } from '../support/lab-helpers';

const PREFIX = 'hs';
const INJECTOR = join(REPO_ROOT, 'dist', 'test', 'support', 'frame-injector.js');
/** Small enough that the flood fills it many times over. */
const MAX_FLOWS = 4096;
const SYNS = 70_000;
const BIG_FILE = 'flood-big.bin';
const BIG_BYTES = 8 << 20;
jest.setTimeout(120_000);

/**
 * The client: one keep-alive connection, a first small request, then a
 * pause until it reads "go" on stdin, then the big file on the same
 * connection. Prints JSON lines: {"idle":localPort} and {"done":…}.
 */
const CLIENT = `
const http = require('node:http');
const crypto = require('node:crypto');
const [host, small, big] = process.argv.slice(1);
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
const get = (path) => new Promise((resolve, reject) => {
  http.get({ host, path, agent }, (res) => {
    const hash = crypto.createHash('sha256');
    const port = res.socket.localPort;
    let bytes = 0;
    res.on('data', (c) => { hash.update(c); bytes += c.length; });
    res.on('end', () => resolve({ status: res.statusCode, bytes, sha256: hash.digest('hex'), port }));
  }).on('error', reject);
});
(async () => {
  const first = await get('/' + small);
  process.stdout.write(JSON.stringify({ idle: first.port }) + '\\n');
  await new Promise((r) => process.stdin.once('data', r));
  const second = await get('/' + big);
  process.stdout.write(JSON.stringify({ done: second, samePort: second.port === first.port }) + '\\n');
  agent.destroy();
})().catch((e) => { process.stderr.write(String(e) + '\\n'); process.exit(1); });
`;

interface ClientLine { idle?: number; done?: { status: number; bytes: number; sha256: string; port: number }; samePort?: boolean }

function startClient(netns: string, host: string): { child: ChildProcess; next(): Promise<ClientLine>; exited: Promise<number | null> } {
  const child = spawn('ip', ['netns', 'exec', netns, process.execPath, '-e', CLIENT, host, LAB_FILES.hello, BIG_FILE], { stdio: ['pipe', 'pipe', 'pipe'] });
  let buffered = '';
  let stderr = '';
  const waiting: ((line: ClientLine) => void)[] = [];
  const lines: ClientLine[] = [];
  child.stdout!.setEncoding('utf8');
  child.stdout!.on('data', (c: string) => {
    buffered += c;
    let nl: number;
    while ((nl = buffered.indexOf('\n')) >= 0) {
      const line = JSON.parse(buffered.slice(0, nl)) as ClientLine;
      buffered = buffered.slice(nl + 1);
      const w = waiting.shift();
      if (w) w(line); else lines.push(line);
    }
  });
  child.stderr!.on('data', (c) => { stderr += c; });
  const exited = new Promise<number | null>((r) => child.once('close', r));
  return {
    child,
    exited,
    next: () => {
      const ready = lines.shift();
      if (ready) return Promise.resolve(ready);
      return Promise.race([
        new Promise<ClientLine>((r) => waiting.push(r)),
        exited.then((code) => { throw new Error(`client exited (${code}) before answering: ${stderr}`); }),
      ]);
    },
  };
}

describe('a SYN flood from spoofed sources against an idle established connection (live lab)', () => {
  let l: BridgedLab | undefined;
  const recorded = recordingLog();
  const bridged = (): BridgedLab => {
    if (!l) throw new Error('the bridged lab did not start (see beforeAll)');
    return l;
  };
  const flowCounters = () => bridged().bridge.snapshot().stages.flow;
  const findFlow = (key: string): ShadowFlow | undefined => {
    for (const e of bridged().bridge.pipeline.flows.entries()) if (e.state.report.key === key) return e.state;
    return undefined;
  };

  beforeAll(async () => {
    requireRoot('hostile-synflood.test.ts');
    if (!existsSync(INJECTOR)) throw new Error(`${INJECTOR} is missing: build first (npx tsc -p tsconfig.json)`);
    // No new-connection budget here: the flood must reach the flow table to show that it cannot push ours out.
    l = await startBridgedLab({ prefix: PREFIX, log: recorded.log, config: { maxFlows: MAX_FLOWS, policy: { ...DEFAULT_PIPELINE_CONFIG.policy, newFlowsPerSecond: 0 } } });
    const bytes = fixedSeedBytes(BIG_BYTES, 0xf100d);
    serveOnBoth(l.servers, BIG_FILE, bytes);
  }, 40_000);

  stopLabAfterAll(PREFIX, () => l);

  test('the flood evicts only its own half-open flows; the idle connection resumes compared and byte-identical', async () => {
    const { lab, bridge, controlSocket } = bridged();
    const client = startClient(lab.client.netns, lab.serviceIpv4);
    try {
      const idle = await client.next();
      expect(idle.idle).toBeGreaterThan(0);
      const key = `tcp ${lab.client.ipv4}:${idle.idle} > ${lab.serviceIpv4}:80`;
      expect(findFlow(key)?.mode).toBe('compare');
      const before = flowCounters();
      const checkpointsBefore = bridge.snapshot().checkpoints.requested;

      const flood = JSON.parse((await runInAsync(lab.client.netns, process.execPath,
        [INJECTOR, JSON.stringify({ iface: 'eth0', kind: 'syn-flood', count: SYNS, seed: 3, perMs: 40 })], 60_000)).trim()) as InjectResult;
      expect(flood.sent).toBe(SYNS);
      await new Promise((r) => setTimeout(r, 300));

      // The table filled and turned over many times: the flood's flows went, ours stayed.
      const during = flowCounters();
      const created = during.created - before.created;
      expect(created).toBeGreaterThan(SYNS * 0.9);
      expect(during.active).toBeLessThanOrEqual(MAX_FLOWS);
      expect(during.evicted - before.evicted).toBeGreaterThanOrEqual(created - MAX_FLOWS);
      expect(during.evicted_open).toBe(before.evicted_open);
      const flow = findFlow(key);
      expect(flow).toBeDefined();
      expect(flow!.mode).toBe('compare');
      // What an administrator sees (`shadowvm status`): no open connection was pushed out. (The `flows`
      // command lists the 1,000 most recently created flows, all the flood's by now, so it cannot show ours.)
      const status = await queryControlSocket(controlSocket, { cmd: 'status' }, 10_000);
      expect(status.ok).toBe(true);
      if (status.ok) {
        expect(status.status.stages.flow.evicted_open).toBe(before.evicted_open);
        expect(status.status.stages.flow.active).toBeLessThanOrEqual(MAX_FLOWS);
      }

      // Resume: the big file on the same connection.
      client.child.stdin!.end('go\n');
      let timer: NodeJS.Timeout | undefined;
      const done = await Promise.race([client.next(), new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          const snap = bridge.snapshot();
          reject(new Error(`the resumed download did not finish within 30 s: state ${snap.state}, checkpoints ${JSON.stringify(snap.checkpoints)}, `
            + `flow ${JSON.stringify(snap.stages.flow)}, its mode ${findFlow(key)?.mode}, log ${recorded.events.slice(-10).map((e) => e.event).join(", ")}`));
        }, 30_000);
      })]).finally(() => clearTimeout(timer));
      expect(done.samePort).toBe(true);
      expect(done.done).toMatchObject({ status: 200, bytes: BIG_BYTES, sha256: createHash('sha256').update(fixedSeedBytes(BIG_BYTES, 0xf100d)).digest('hex') });
      expect(await client.exited).toBe(0);

      const after = flowCounters();
      expect(after.evicted_open).toBe(before.evicted_open);
      expect(after.evicted_resumed_unprotected).toBe(before.evicted_resumed_unprotected);
      expect(after.unprotected).toBe(before.unprotected);
      const snap = bridge.snapshot();
      expect(snap.checkpoints.requested.timeout).toBe(checkpointsBefore.timeout);
      expect(snap.stages.egress?.flows_over_checkpoint_budget ?? 0).toBe(0);
      const resumed = findFlow(key);
      expect(resumed?.mode).toBe('compare');
      // Compared, not merely passed: nearly every byte of the body was said alike by both replicas
      // (a Date header across a second boundary may cost one mismatch and one checkpoint).
      expect(resumed!.report.matchedBytes).toBeGreaterThan(BIG_BYTES * 0.95);
      expect(resumed!.report.releasedBytes).toBeGreaterThanOrEqual(BIG_BYTES);
    } finally {
      if (client.child.exitCode === null) client.child.kill('SIGKILL');
    }
  });
});

describe('the new-connection budget under a SYN flood (live lab)', () => {
  const BUDGET = 1000;
  const FLOOD = 20_000;
  let l: BridgedLab | undefined;
  const recorded = recordingLog();

  beforeAll(async () => {
    requireRoot('hostile-synflood.test.ts');
    l = await startBridgedLab({ prefix: 'hq', log: recorded.log, config: { policy: { ...DEFAULT_PIPELINE_CONFIG.policy, newFlowsPerSecond: BUDGET } } });
    const bytes = fixedSeedBytes(BIG_BYTES, 0xf100d);
    serveOnBoth(l.servers, BIG_FILE, bytes);
  }, 40_000);

  stopLabAfterAll('hq', () => l);

  test('SYNs beyond the budget are dropped and counted; a download in progress and a new client after the flood are served', async () => {
    const { lab, bridge } = l!;
    const ingress = () => bridge.snapshot().stages.ingress;
    const created = () => bridge.snapshot().stages.flow.created;
    const [createdBefore, overBefore] = [created(), ingress().syn_over_budget];
    const download = runInAsync(lab.client.netns, 'sh', ['-c', `wget -q --tries=1 --limit-rate=2m -O - http://${lab.serviceIpv4}/${BIG_FILE} | sha256sum`], 60_000);
    await new Promise((r) => setTimeout(r, 500));
    const t0 = Date.now();
    const flood = JSON.parse((await runInAsync(lab.client.netns, process.execPath,
      [INJECTOR, JSON.stringify({ iface: 'eth0', kind: 'syn-flood', count: FLOOD, seed: 5, perMs: 20 })], 60_000)).trim()) as InjectResult;
    const seconds = (Date.now() - t0) / 1000;
    expect(flood.sent).toBe(FLOOD);
    await new Promise((r) => setTimeout(r, 300));
    // One second's worth at once, then the rate: the rest never reached a replica.
    const admitted = created() - createdBefore;
    expect(admitted).toBeLessThanOrEqual(BUDGET * (seconds + 1.5) + 10);
    expect(ingress().syn_over_budget - overBefore).toBeGreaterThanOrEqual(FLOOD - BUDGET * (seconds + 1.5));
    expect(recorded.events.some((e) => e.event === 'new-flow-budget')).toBe(true);
    expect(bridge.snapshot().stages.flow.evicted_open).toBe(0);

    expect((await download).trim().split(/\s+/)[0]).toBe(createHash('sha256').update(fixedSeedBytes(BIG_BYTES, 0xf100d)).digest('hex'));
    // The bucket refills: a new client a second later is admitted and served, compared.
    await new Promise((r) => setTimeout(r, 1000));
    const hello = await runInAsync(lab.client.netns, 'curl', ['-sS', '--fail', '--max-time', '10', `http://${lab.serviceIpv4}/${LAB_FILES.hello}`], 20_000);
    expect(hello.length).toBeGreaterThan(0);
    expect(bridge.snapshot().state).toBe('COMPARING');
  });
});
