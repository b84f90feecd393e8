/**
 * The units started for real by systemd (root). The container has no
 * systemd as PID 1, so test/support/systemd-sandbox.sh boots one as PID 1 of
 * its own PID, mount and network namespaces, seeing only the installed units
 * (`make install DESTDIR=…`) and a few empty targets. The bridge runs there
 * with every hardening setting of deploy/systemd/shadowvm@.service in force
 * (capability bounding set, seccomp filter, ProtectSystem=strict, …) on veth
 * pairs in the sandbox's network namespace.
 */
import { ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, rmdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { requireBuiltCli, requireRoot } from '../support/lab-helpers';
import { waitFor } from '../../lib/lab/bridged';

jest.setTimeout(120_000);

const ROOT = join(__dirname, '..', '..');
const SANDBOX = join(ROOT, 'test', 'support', 'systemd-sandbox.sh');
const tag = (process.pid % 1000).toString();
const NETNS = `op-sd${tag}`;
const PAIR = `op${tag}`;
const IFS = { uplink: `op${tag}u`, primary: `op${tag}p`, backup: `op${tag}b` };

/** Every cgroup directory now, so that afterAll removes only those the sandbox's systemd created. */
function cgroupDirs(): Set<string> {
  const out = new Set<string>();
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      if (e.isDirectory()) { out.add(join(d, e.name)); walk(join(d, e.name)); }
    }
  };
  for (const h of readdirSync('/sys/fs/cgroup')) {
    try { walk(join('/sys/fs/cgroup', h)); } catch { /* not a hierarchy */ }
  }
  return out;
}

describe('systemd starts the installed units (root, systemd as PID 1 of a sandbox)', () => {
  let tmp: string;
  let sandbox: ChildProcess | undefined;
  let pid1 = 0;
  let madeConfDir = false;
  let cgroupsBefore = new Set<string>();

  /** A command inside the sandbox: its mount, PID, network and UTS namespaces. */
  const inside = (cmd: string, ...args: string[]) => spawnSync('nsenter', ['-t', String(pid1), '-m', '-p', '-n', '-u', cmd, ...args], { encoding: 'utf8', timeout: 30_000 });
  const systemctl = (...args: string[]) => inside('systemctl', '--no-pager', ...args);
  const show = (unit: string, ...props: string[]): Record<string, string> => Object.fromEntries(
    systemctl('show', unit, ...props.map((p) => `--property=${p}`)).stdout.trim().split('\n').filter(Boolean).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
  );
  const config = (name: string, body: unknown) => writeFileSync(join(tmp, 'state', 'etc', 'shadowvm', `${name}.json`), JSON.stringify(body));
  const ports = { ports: IFS };

  beforeAll(async () => {
    requireRoot('systemd-start.test.ts');
    requireBuiltCli();
    if (!existsSync('/lib/systemd/systemd') || spawnSync('nsenter', ['--version']).status !== 0) {
      throw new Error('systemd (/lib/systemd/systemd) or nsenter is missing: install Debian\'s systemd and util-linux (scripts/install-deps.sh)');
    }
    tmp = mkdtempSync(join(tmpdir(), 'op-systemd-'));
    const units = join(tmp, 'units');
    mkdirSync(units);
    const inst = spawnSync('make', ['--no-print-directory', '-C', ROOT, 'install', `DESTDIR=${join(tmp, 'state')}`, `UNITDIR=/units`], { encoding: 'utf8' });
    if (inst.status !== 0) throw new Error(`make install failed: ${inst.stderr}`);
    for (const u of ['shadowvm@.service', 'shadowvm-agent@.service']) execFileSync('cp', [join(tmp, 'state', 'units', u), units]);
    // The targets the units' default dependencies name, empty: nothing else starts.
    for (const t of ['sysinit', 'basic', 'network-online', 'multi-user', 'shutdown', 'sockets', 'op-sandbox']) {
      writeFileSync(join(units, `${t}.target`), `[Unit]\nDescription=${t} (empty, sandbox)\n`);
    }
    if (!existsSync('/etc/shadowvm')) { mkdirSync('/etc/shadowvm', { mode: 0o700 }); madeConfDir = true; }
    execFileSync('ip', ['netns', 'add', NETNS]);
    for (const ifname of Object.values(IFS)) {
      execFileSync('ip', ['-n', NETNS, 'link', 'add', ifname, 'type', 'veth', 'peer', 'name', `${ifname}x`]);
      execFileSync('ip', ['-n', NETNS, 'link', 'set', ifname, 'up']);
      execFileSync('ip', ['-n', NETNS, 'link', 'set', `${ifname}x`, 'up']);
    }
    cgroupsBefore = cgroupDirs();
    let bootLog = '';
    sandbox = spawn(SANDBOX, [units, join(tmp, 'state'), NETNS], { stdio: ['ignore', 'pipe', 'pipe'] });
    sandbox.stdout!.on('data', (c) => { bootLog += c; });
    sandbox.stderr!.on('data', (c) => { bootLog += c; });
    // PID 1 of the sandbox: the systemd whose command line names the sandbox's target, child of unshare.
    const found = await waitFor(() => {
      const r = spawnSync('pgrep', ['-f', '^/lib/systemd/systemd --system --unit=op-sandbox.target'], { encoding: 'utf8' });
      const pids = r.stdout.trim().split('\n').filter(Boolean).map(Number);
      const mine = pids.find((p) => spawnSync('ps', ['-o', 'ppid=', '-p', String(p)], { encoding: 'utf8' }).stdout.trim() !== '' && isOurs(p));
      if (mine) pid1 = mine;
      return pid1 > 0;
    }, 15_000, 100);
    function isOurs(p: number): boolean {
      // Ours: its network namespace is NETNS.
      const r = spawnSync('ip', ['netns', 'identify', String(p)], { encoding: 'utf8' });
      return r.stdout.trim() === NETNS;
    }
    if (!found) throw new Error(`systemd did not start as PID 1 of a sandbox here: ${bootLog.trim().slice(-500) || 'no output'}`);
    const running = await waitFor(() => /^(running|degraded)$/.test(systemctl('is-system-running').stdout.trim()), 20_000, 200);
    if (!running) throw new Error(`the sandbox's systemd did not finish booting: ${systemctl('is-system-running').stdout.trim()} ${bootLog.slice(-500)}`);
  });

  afterAll(async () => {
    if (pid1 > 0) {
      systemctl('stop', `shadowvm-agent@${PAIR}.service`, `shadowvm@${PAIR}.service`, `shadowvm@${PAIR}x.service`);
      // SIGKILL to a PID namespace's init ends every process in it.
      try { process.kill(pid1, 'SIGKILL'); } catch { /* gone */ }
      await waitFor(() => { try { process.kill(pid1, 0); return false; } catch { return true; } }, 10_000, 50);
    }
    sandbox?.kill('SIGKILL');
    for (const d of [...cgroupDirs()].filter((d) => !cgroupsBefore.has(d)).sort((a, b) => b.length - a.length)) {
      try { rmdirSync(d); } catch { /* still in use: left for its owner */ }
    }
    spawnSync('ip', ['netns', 'del', NETNS]);
    if (madeConfDir) { try { rmdirSync('/etc/shadowvm'); } catch { /* not empty: not ours to remove */ } }
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  it('runs the bridge with its sockets in RuntimeDirectory, only CAP_NET_RAW, CAP_NET_ADMIN and CAP_SYS_NICE (its data-plane thread at SCHED_RR), no new privileges and a seccomp filter', async () => {
    config(PAIR, ports);
    const start = systemctl('start', `shadowvm@${PAIR}.service`);
    expect(start.stderr).toBe('');
    expect(start.status).toBe(0);
    const status = await waitFor(() => inside('/opt/shadowvm/bin/shadowvm', 'status', '--name', PAIR, '--json').status === 0, 15_000, 200);
    expect(status).toBe(true);
    const snap = JSON.parse(inside('/opt/shadowvm/bin/shadowvm', 'status', '--name', PAIR, '--json').stdout);
    expect(snap.ports.map((p: { name: string }) => p.name)).toEqual([IFS.uplink, IFS.primary, IFS.backup]);
    expect(inside('stat', '-c', '%a %U', `/run/shadowvm/${PAIR}`).stdout.trim()).toBe('700 root');
    expect(inside('stat', '-c', '%a', `/run/shadowvm/${PAIR}/control.sock`, `/run/shadowvm/${PAIR}/agent.sock`).stdout.trim().split('\n')).toEqual(['600', '600']);
    const pid = show(`shadowvm@${PAIR}.service`, 'MainPID').MainPID;
    const proc = inside('cat', `/proc/${pid}/status`).stdout;
    // Bits 12, 13 and 23: CAP_NET_ADMIN, CAP_NET_RAW and CAP_SYS_NICE, nothing else.
    expect(/^CapBnd:\s*(\w+)$/m.exec(proc)?.[1]).toBe('0000000000803000');
    // The unit lets the data-plane thread take SCHED_RR (--realtime auto), and only that thread asks.
    expect(snap.dataPlane).toEqual(expect.objectContaining({ thread: 'svm-dataplane', policy: 'rr', priority: 10 }));
    expect(inside('cat', `/proc/${pid}/task/${snap.dataPlane.tid}/comm`).stdout.trim()).toBe('svm-dataplane');
    expect(inside('cat', `/proc/${pid}/sched`).stdout).toMatch(/^policy\s*:\s*0$/m);
    expect(/^NoNewPrivs:\s*(\d)$/m.exec(proc)?.[1]).toBe('1');
    expect(/^Seccomp:\s*(\d)$/m.exec(proc)?.[1]).toBe('2');
  });

  it('restarts the bridge after a crash (Restart=on-failure)', async () => {
    const before = show(`shadowvm@${PAIR}.service`, 'MainPID', 'NRestarts');
    expect(inside('kill', '-KILL', before.MainPID).status).toBe(0);
    const restarted = await waitFor(() => {
      const now = show(`shadowvm@${PAIR}.service`, 'MainPID', 'NRestarts', 'ActiveState');
      return now.ActiveState === 'active' && now.MainPID !== before.MainPID && now.MainPID !== '0';
    }, 15_000, 200);
    expect(restarted).toBe(true);
    expect(Number(show(`shadowvm@${PAIR}.service`, 'NRestarts').NRestarts)).toBe(Number(before.NRestarts) + 1);
  });

  it('does not restart a bridge whose config file is invalid: exit code 2 is a user\'s mistake', async () => {
    config(`${PAIR}x`, { ...ports, maxflows: 10 });
    systemctl('start', `shadowvm@${PAIR}x.service`);
    const failed = await waitFor(() => show(`shadowvm@${PAIR}x.service`, 'ActiveState').ActiveState === 'failed', 15_000, 200);
    expect(failed).toBe(true);
    expect(show(`shadowvm@${PAIR}x.service`, 'ExecMainStatus', 'NRestarts')).toEqual({ ExecMainStatus: '2', NRestarts: '0' });
  });

  it('starting the agent unit starts the bridge first (BindsTo, After)', async () => {
    systemctl('stop', `shadowvm@${PAIR}.service`);
    expect(show(`shadowvm@${PAIR}.service`, 'ActiveState').ActiveState).toBe('inactive');
    config(`${PAIR}-agent`, {});
    // Whatever the agent then does with this config, the bridge must have been started for it.
    systemctl('start', `shadowvm-agent@${PAIR}.service`);
    expect(show(`shadowvm@${PAIR}.service`, 'ActiveState').ActiveState).toBe('active');
    // (That stopping the bridge stops the agent is not shown here: `agent qemu` is not in this branch,
    // so the agent exits at once.)
  });

  it('removes its sockets on stop but keeps the runtime folder (setup\'s saved uplink state lives there)', () => {
    systemctl('stop', `shadowvm-agent@${PAIR}.service`, `shadowvm@${PAIR}.service`);
    expect(show(`shadowvm@${PAIR}.service`, 'ActiveState').ActiveState).toBe('inactive');
    expect(inside('ls', '-A', `/run/shadowvm/${PAIR}`)).toEqual(expect.objectContaining({ status: 0, stdout: '' }));
  });
});
