/**
 * The policy table on the live bridge in the netns lab (root, node): a tiny
 * TCP server in each replica answers with its own name, so the replicas
 * always disagree. On a `pass` port the client gets the primary's answer and
 * no checkpoint is asked for; on a compared port the same disagreement is a
 * mismatch checkpoint.
 */
import { ChildProcess, spawn } from 'node:child_process';
import { BridgedLab, startBridgedLab } from '../../lib/lab/bridged';
import { runInAsync } from '../../lib/lab/exec';
import { recordingLog, requireRoot, stopLabAfterAll } from '../support/lab-helpers';

const PREFIX = 'pf';
const PASS_PORT = 7101;
const COMPARED_PORT = 7102;
jest.setTimeout(60_000);

/** Answers every connection on both ports with "reply from NAME", then closes it. */
const SERVER = `
const net = require('node:net');
let up = 0;
for (const port of [${PASS_PORT}, ${COMPARED_PORT}]) {
  net.createServer((s) => { s.end('reply from ' + process.argv[1] + '\\n'); s.on('error', () => {}); })
    .listen(port, '0.0.0.0', () => { if (++up === 2) console.log('ready'); });
}`;

const CLIENT = `
const net = require('node:net');
const s = net.connect(Number(process.argv[2]), process.argv[1]);
let got = '';
s.on('data', (d) => { got += d; });
s.on('end', () => { process.stdout.write(got, () => process.exit(0)); });
s.on('error', (e) => { console.error(e.message); process.exit(1); });
setTimeout(() => { console.error('timeout'); process.exit(1); }, 15000);`;

describe('flowPolicy on the live bridge', () => {
  let l: BridgedLab | undefined;
  const servers: ChildProcess[] = [];
  const recorded = recordingLog();

  const bridged = (): BridgedLab => {
    if (!l) throw new Error('the bridged lab did not start (see beforeAll)');
    return l;
  };

  function startServer(netns: string, name: string): Promise<void> {
    const child = spawn('ip', ['netns', 'exec', netns, process.execPath, '-e', SERVER, name], { stdio: ['ignore', 'pipe', 'inherit'] });
    servers.push(child);
    return new Promise((resolve, reject) => {
      child.stdout!.on('data', (d: Buffer) => { if (d.toString().includes('ready')) resolve(); });
      child.on('exit', (code) => reject(new Error(`server in ${netns} exited (${code})`)));
    });
  }

  const fetch = (port: number) => runInAsync(bridged().lab.client.netns, process.execPath, ['-e', CLIENT, bridged().lab.serviceIpv4, String(port)], 20_000);
  const mismatchCheckpoints = () => bridged().bridge.snapshot().checkpoints.requested.mismatch;

  beforeAll(async () => {
    requireRoot('lab-flow-policy.test.ts');
    l = await startBridgedLab({
      prefix: PREFIX, log: recorded.log,
      config: { flowPolicy: [{ protocol: 'tcp', port: PASS_PORT, action: 'pass' }] },
    });
    await startServer(l.lab.primary.netns, 'primary');
    await startServer(l.lab.backup.netns, 'backup');
  }, 40_000);

  afterAll(() => {
    for (const child of servers) if (child.exitCode === null) child.kill('SIGTERM');
  });
  stopLabAfterAll(PREFIX, () => l);

  test('a pass port whose replicas answer differently gives the primary\'s answer and asks for no checkpoint', async () => {
    const before = mismatchCheckpoints();
    for (let i = 0; i < 3; i++) expect(await fetch(PASS_PORT)).toBe('reply from primary\n');
    expect(mismatchCheckpoints()).toBe(before);
    expect(bridged().bridge.snapshot().stages.flow.policy_pass_flows).toBeGreaterThanOrEqual(3);
  });

  test('a compared port with the same disagreement asks for a mismatch checkpoint', async () => {
    const before = mismatchCheckpoints();
    expect(await fetch(COMPARED_PORT)).toBe('reply from primary\n');
    expect(mismatchCheckpoints()).toBeGreaterThan(before);
  });
});
