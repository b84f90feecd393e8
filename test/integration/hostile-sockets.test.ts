/**
 * Issue 7, the bridge's UNIX sockets against a local attacker (the bridge
 * as root, the attacker as user nobody): no window to connect at start,
 * even under umask 000 in /tmp; no directory of another user used, by the
 * bridge or by `shadowvm status`; never someone else's socket removed.
 */
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { probeUnixSocket } from '../../lib/control/unix-socket';
import { CliProcess, requireBuiltCli, requireRoot, runShadowvm } from '../support/lab-helpers';
import { delay, errorLines, exitWithin, makeVeths, NOBODY, runArgs, spawnAsNobody, spawnCli, spawnScript, Veths } from './hostile-helpers';

jest.setTimeout(120_000);

const tag = `hs${process.pid % 1000}`;

/** As nobody: connects to every path given, over and over, for HOLD ms; prints what succeeded and why the rest failed. */
const CONNECT_LOOP = `
const net = require('net');
const args = process.argv.slice(-2);
const hold = Number(args[0]);
const paths = args[1].split(',');
const result = Object.fromEntries(paths.map((p) => [p, { connected: 0, failed: {} }]));
const until = Date.now() + hold;
const round = () => {
  if (Date.now() > until) { console.log(JSON.stringify(result)); process.exit(0); }
  let left = paths.length;
  for (const p of paths) {
    const s = net.connect(p);
    const done = () => { if (--left === 0) setImmediate(round); };
    s.on('connect', () => { result[p].connected++; s.destroy(); done(); });
    s.on('error', (e) => { result[p].failed[e.code] = (result[p].failed[e.code] || 0) + 1; done(); });
  }
};
round();
`;

/** Listens at each path given (removing what is there first if the first argument is "replace"), answering a fake status; counts connections. */
const FAKE_SERVER = `
const net = require('net'); const fs = require('fs');
const [mode, list] = process.argv.slice(-2);
let connections = 0;
for (const p of list.split(',')) {
  if (mode === 'replace') { try { fs.unlinkSync(p); } catch {} }
  net.createServer((c) => {
    connections++;
    c.on('error', () => {});
    c.end(JSON.stringify({ ok: true, status: { name: 'FAKE' } }) + '\\n');
  }).listen(p, () => console.log('listening ' + p));
}
process.on('SIGTERM', () => { console.log(JSON.stringify({ connections })); process.exit(0); });
`;

describe('the bridge\'s sockets against another local user', () => {
  let base: string;
  let veths: Veths;
  const procs: CliProcess[] = [];

  beforeAll(() => {
    requireRoot('hostile-sockets.test.ts');
    requireBuiltCli();
    base = mkdtempSync(join(tmpdir(), 'svm-hs-'));
    chmodSync(base, 0o755); // nobody may look in, as in /run
    veths = makeVeths(tag);
  });

  afterAll(async () => {
    for (const p of procs) {
      if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
      await p.exited;
    }
    veths?.remove();
    rmSync(base, { recursive: true, force: true });
    for (const name of ['agent', 'control']) rmSync(join(tmpdir(), `svm-${tag}-${name}.sock`), { force: true });
  });

  function track<T extends CliProcess>(p: T): T {
    procs.push(p);
    return p;
  }

  it('leaves no moment at start, under umask 000 with its sockets directly in /tmp, when another user can connect', async () => {
    const agentSock = join(tmpdir(), `svm-${tag}-agent.sock`);
    const controlSock = join(tmpdir(), `svm-${tag}-control.sock`);
    for (let start = 0; start < 3; start++) {
      const intruder = track(spawnAsNobody(CONNECT_LOOP, ['3000', `${agentSock},${controlSock}`]));
      await delay(200);
      const bridge = track(spawnCli(runArgs(tag, veths, agentSock, controlSock), { umask: '000' }));
      await bridge.waitFor(/"event":"started"/, 15_000);
      expect(statSync(agentSock).mode & 0o777).toBe(0o600);
      expect(await exitWithin(intruder, 10_000)).toBe(0);
      const seen = JSON.parse(intruder.output()) as Record<string, { connected: number; failed: Record<string, number> }>;
      // Before: the intruder got in on most starts, and was taken for the sync agent.
      expect(seen[agentSock].connected).toBe(0);
      expect(seen[controlSock].connected).toBe(0);
      expect(seen[agentSock].failed.EACCES).toBeGreaterThan(0); // it did try while the socket was there
      expect(bridge.output()).not.toMatch(/"event":"agent-connected"/);
      bridge.child.kill('SIGTERM');
      expect(await exitWithin(bridge, 10_000)).toBe(0);
      expect(existsSync(agentSock)).toBe(false);
    }
  });

  it.each([
    ['owned by another user', (d: string) => { mkdirSync(d); chownSync(d, NOBODY, NOBODY); }, /owned by uid 65534/],
    ['writable by another group', (d: string) => { mkdirSync(d); chownSync(d, 0, NOBODY); chmodSync(d, 0o770); }, /writable by group 65534/],
    ['writable by everyone, without the sticky bit', (d: string) => { mkdirSync(d); chmodSync(d, 0o777); }, /writable by every user/],
  ])('refuses, in one line with exit code 2, a socket directory %s', async (what, make, message) => {
    const d = join(base, what.replace(/\W+/g, '-'));
    make(d);
    for (const where of [join(d, 'control.sock'), join(d, 'sub', 'control.sock')]) {
      const r = await runShadowvm(runArgs(tag, veths, join(base, 'unused-agent.sock'), where));
      expect(r.code).toBe(2);
      const lines = errorLines(r.output);
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(message);
      expect(existsSync(where)).toBe(false);
      expect(existsSync(join(d, 'sub'))).toBe(false);
    }
  });

  it('shadowvm status refuses to talk to a socket another user made, in its own directory or in a sticky one', async () => {
    const own = join(base, 'nobodys');
    mkdirSync(own);
    chownSync(own, NOBODY, NOBODY);
    const sticky = join(base, 'sticky');
    mkdirSync(sticky);
    chmodSync(sticky, 0o1777);
    const fakes = [join(own, 'control.sock'), join(sticky, 'control.sock')];
    const fake = track(spawnAsNobody(FAKE_SERVER, ['new', fakes.join(',')]));
    await fake.waitFor(new RegExp(`listening ${fakes[1]}`), 10_000);
    await fake.waitFor(new RegExp(`listening ${fakes[0]}`), 10_000);
    for (const path of fakes) {
      const r = await runShadowvm(['status', '--json', '--control', path]);
      // Before: root's shadowvm status showed the fake server's figures.
      expect(r.output).not.toMatch(/FAKE/);
      expect(r.code).toBe(2);
      expect(errorLines(r.output)).toEqual([expect.stringMatching(/refusing to talk to it: .*owned by uid 65534/)]);
    }
    fake.child.kill('SIGTERM');
    await fake.exited;
    expect(fake.output()).toMatch(/\{"connections":0\}/);
  });

  it('stops without removing the sockets another process has put at its paths', async () => {
    const d = mkdtempSync(join(base, 'stop-'));
    const agentSock = join(d, 'agent.sock');
    const controlSock = join(d, 'control.sock');
    const bridge = track(spawnCli(runArgs(tag, veths, agentSock, controlSock)));
    await bridge.waitFor(/"event":"started"/, 15_000);
    const other = track(spawnScript(FAKE_SERVER, ['replace', `${agentSock},${controlSock}`]));
    await other.waitFor(new RegExp(`listening ${controlSock}`), 10_000);
    await other.waitFor(new RegExp(`listening ${agentSock}`), 10_000);
    bridge.child.kill('SIGTERM');
    expect(await exitWithin(bridge, 10_000)).toBe(0);
    // Before: the bridge's stop unlinked both paths, which were the other process's sockets by then.
    expect(await probeUnixSocket(controlSock)).toBe(true);
    expect(await probeUnixSocket(agentSock)).toBe(true);
    other.child.kill('SIGTERM');
    await other.exited;
  });

  it('refuses to start, in one line with exit code 2, where another process is listening, and leaves its socket alone', async () => {
    const d = mkdtempSync(join(base, 'live-'));
    const controlSock = join(d, 'control.sock');
    const other = track(spawnScript(FAKE_SERVER, ['new', controlSock]));
    await other.waitFor(/listening/, 10_000);
    const r = await runShadowvm(runArgs(tag, veths, join(d, 'agent.sock'), controlSock));
    expect(r.code).toBe(2);
    expect(errorLines(r.output)).toEqual([expect.stringMatching(/control socket .* socket already in use/)]);
    expect(await probeUnixSocket(controlSock)).toBe(true);
    expect(existsSync(join(d, 'agent.sock'))).toBe(false); // the agent socket made before the refusal was removed again
    other.child.kill('SIGTERM');
    await other.exited;
  });
});
