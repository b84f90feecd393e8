/**
 * Issue 7, signals to real shadowvm processes (root): SIGUSR1 never opens
 * Node's inspector (port 9229, where any local user could run code as
 * root); SIGHUP and SIGUSR2 are logged and survived; SIGTERM always exits,
 * even with control clients that hold connections and never read.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { connect, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CliProcess, requireBuiltCli, requireRoot, runShadowvm } from '../support/lab-helpers';
import { delay, exitWithin, makeVeths, runArgs, spawnCli, Veths } from './hostile-helpers';

jest.setTimeout(90_000);

const tag = `hg${process.pid % 1000}`;

/** TCP ports process `pid` listens on (from ss). */
function tcpListenPorts(pid: number): number[] {
  const out = execFileSync('ss', ['-Hltnp'], { encoding: 'utf8' });
  return out.split('\n').filter((l) => l.includes(`pid=${pid},`)).map((l) => Number(/:(\d+)\s/.exec(l.split(/\s+/)[3] + ' ')?.[1]));
}

/** Whether anything accepts a connection on 127.0.0.1:9229. */
function inspectorPortOpen(): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(9229, '127.0.0.1');
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  });
}

describe('signals to shadowvm processes', () => {
  let dir: string;
  let veths: Veths;
  const procs: CliProcess[] = [];

  beforeAll(() => {
    requireRoot('hostile-signals.test.ts');
    requireBuiltCli();
    dir = mkdtempSync(join(tmpdir(), 'svm-hg-'));
    veths = makeVeths(tag);
  });

  afterAll(async () => {
    for (const p of procs) {
      if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
      await p.exited;
    }
    veths?.remove();
    rmSync(dir, { recursive: true, force: true });
  });

  const sockets = (name: string) => ({ agent: join(dir, `${name}-agent.sock`), control: join(dir, `${name}-control.sock`) });

  async function startBridge(name: string): Promise<CliProcess> {
    const s = sockets(name);
    const p = spawnCli(runArgs(tag, veths, s.agent, s.control));
    procs.push(p);
    await p.waitFor(/"event":"started"/, 15_000);
    return p;
  }

  it('never opens the inspector on SIGUSR1, in the bridge or in an agent, and both live on', async () => {
    const portWasOpen = await inspectorPortOpen(); // someone else's; then only this process's ports can tell
    const bridge = await startBridge('usr1');
    const agent = spawnCli(['agent', 'lab', '--socket', sockets('usr1').agent, '--name', 'usr1']);
    procs.push(agent);
    await bridge.waitFor(/"event":"agent-connected"/, 10_000);
    for (const p of [bridge, agent]) p.child.kill('SIGUSR1');
    await delay(1000);
    for (const p of [bridge, agent]) {
      expect(p.child.exitCode).toBeNull();
      expect(p.output()).not.toMatch(/Debugger listening/);
      expect(tcpListenPorts(p.child.pid!)).not.toContain(9229);
    }
    if (!portWasOpen) expect(await inspectorPortOpen()).toBe(false);
    expect(bridge.output()).toMatch(/"event":"signal-ignored".*"signal":"SIGUSR1"/);
    const status = await runShadowvm(['status', '--control', sockets('usr1').control]);
    expect(status.code).toBe(0);
    agent.child.kill('SIGTERM');
    bridge.child.kill('SIGTERM');
    expect(await exitWithin(bridge, 10_000)).toBe(0);
    expect(await exitWithin(agent, 10_000)).toBe(0);
  });

  it('logs and survives SIGHUP and SIGUSR2, then stops cleanly on SIGTERM and removes its sockets', async () => {
    const bridge = await startBridge('hup');
    const s = sockets('hup');
    for (const signal of ['SIGHUP', 'SIGUSR2'] as const) {
      bridge.child.kill(signal);
      await bridge.waitFor(new RegExp(`"event":"signal-ignored".*"signal":"${signal}"`), 5000);
      expect(bridge.child.exitCode).toBeNull(); // before: killed at once, no log line, sockets left behind
    }
    expect((await runShadowvm(['status', '--control', s.control])).code).toBe(0);
    bridge.child.kill('SIGTERM');
    expect(await exitWithin(bridge, 10_000)).toBe(0);
    expect(bridge.output()).toMatch(/"event":"stopped"/);
    expect(existsSync(s.control)).toBe(false);
    expect(existsSync(s.agent)).toBe(false);
  });

  it('exits on SIGTERM while 40 control clients hold connections with a request they never read', async () => {
    const bridge = await startBridge('term');
    const s = sockets('term');
    const holders: Socket[] = [];
    for (let i = 0; i < 40; i++) {
      const c = connect(s.control);
      c.on('error', () => {});
      c.pause();
      c.once('connect', () => c.write('{"cmd":"status"}\n'));
      holders.push(c);
    }
    await delay(300);
    try {
      bridge.child.kill('SIGTERM');
      // Before: connections refused beyond 32 were never destroyed; the stop waited for them forever.
      expect(await exitWithin(bridge, 10_000)).toBe(0);
    } finally {
      for (const c of holders) c.destroy();
    }
    expect(bridge.output()).toMatch(/"event":"stopped"/);
    expect(existsSync(s.control)).toBe(false);
  });
});
