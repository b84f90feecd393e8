/**
 * The systemd units in deploy/systemd and `make install`/`make uninstall`.
 *
 * `systemd-analyze verify` and `systemd-analyze security --offline` read the
 * unit files without a running systemd (scripts/install-deps.sh installs
 * Debian's systemd package for them). They check the units as installed:
 * `make install` rewrites their paths for its PREFIX and CONFDIR.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, lstatSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { requireBuiltCli } from '../support/lab-helpers';

jest.setTimeout(120_000);

const ROOT = join(__dirname, '..', '..');
const UNITS = ['shadowvm@.service', 'shadowvm-agent@.service'];

function requireSystemdAnalyze(): void {
  const r = spawnSync('systemd-analyze', ['--version'], { encoding: 'utf8' });
  if (r.error || r.status !== 0) {
    throw new Error('systemd-analyze is missing, so the units cannot be verified: install Debian\'s systemd package (scripts/install-deps.sh does)');
  }
}

function make(...args: string[]) {
  return spawnSync('make', ['--no-print-directory', '-C', ROOT, ...args], { encoding: 'utf8', timeout: 60_000 });
}

/** Every file and symlink under `dir`, as paths relative to it. */
function filesUnder(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else out.push(relative(dir, p));
    }
  };
  if (existsSync(dir)) walk(dir);
  return out.sort();
}

function verify(dir: string, units: string[]) {
  // Run from the folder: systemd-analyze loads the named files and their neighbours (BindsTo=shadowvm@%i).
  return spawnSync('systemd-analyze', ['verify', ...units.map((u) => `./${u}`)], { cwd: dir, encoding: 'utf8' });
}

describe('systemd units and make install', () => {
  let tmp: string;
  beforeAll(() => {
    requireBuiltCli();
    tmp = mkdtempSync(join(tmpdir(), 'op-units-'));
  });
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  describe('installed into a prefix of their own', () => {
    const dirs = () => ({ prefix: join(tmp, 'p', 'opt'), bin: join(tmp, 'p', 'bin'), units: join(tmp, 'p', 'units'), conf: join(tmp, 'p', 'etc') });
    beforeAll(() => {
      requireSystemdAnalyze();
      const d = dirs();
      const r = make('install', `PREFIX=${d.prefix}`, `BINDIR=${d.bin}`, `UNITDIR=${d.units}`, `CONFDIR=${d.conf}`);
      if (r.status !== 0) throw new Error(`make install failed: ${r.stderr}`);
    });

    it('pass `systemd-analyze verify` without a single warning', () => {
      const r = verify(dirs().units, UNITS);
      expect(r.stderr + r.stdout).toBe('');
      expect(r.status).toBe(0);
    });

    it('would fail `systemd-analyze verify` for a misspelt setting (the check above can fail)', () => {
      const d = dirs();
      const bad = join(tmp, 'bad');
      execFileSync('mkdir', ['-p', bad]);
      writeFileSync(join(bad, 'shadowvm@.service'), readFileSync(join(d.units, 'shadowvm@.service'), 'utf8').replace('ProtectHome=yes', 'ProtectHomes=yes'));
      const r = verify(bad, ['shadowvm@.service']);
      expect(r.stderr).toMatch(/Unknown key 'ProtectHomes'/);
    });

    it('start the installed CLI with the settings file named after the instance', () => {
      const d = dirs();
      const bridge = readFileSync(join(d.units, 'shadowvm@.service'), 'utf8');
      expect(bridge).toContain(`ExecStart=${d.prefix}/bin/shadowvm run --name %i --config ${d.conf}/%i.json\n`);
      const agent = readFileSync(join(d.units, 'shadowvm-agent@.service'), 'utf8');
      expect(agent).toContain(`ExecStart=${d.prefix}/bin/shadowvm agent qemu --name %i --config ${d.conf}/%i-agent.json\n`);
      expect(agent).toMatch(/^BindsTo=shadowvm@%i\.service$/m);
      expect(agent).toMatch(/^After=shadowvm@%i\.service$/m);
      // The installed tree runs on its own: production packages only, no dev tools.
      const file = join(tmp, 'web1.json');
      writeFileSync(file, JSON.stringify({ ports: { uplink: 'eth1', primary: 'svm-web1-p', backup: 'svm-web1-b' } }));
      const out = execFileSync(join(d.bin, 'shadowvm'), ['config', 'check', file], { encoding: 'utf8' });
      expect(out.split('\n')[0]).toBe(`${file}: valid`);
      expect(existsSync(join(d.prefix, 'node_modules', 'yargs'))).toBe(true);
      expect(existsSync(join(d.prefix, 'node_modules', 'jest'))).toBe(false);
      expect(existsSync(join(d.prefix, 'node_modules', 'typescript'))).toBe(false);
    });

    it.each([
      ['shadowvm@web1.service', 3.0],
      ['shadowvm-agent@web1.service', 3.5],
    ])('%s keeps its `systemd-analyze security` exposure at or below %d', (instance, bound) => {
      // The offline security check wants a concrete unit: an instance file of the template.
      const d = dirs();
      const inst = join(tmp, 'inst');
      execFileSync('mkdir', ['-p', inst]);
      const template = instance.replace('web1', '');
      writeFileSync(join(inst, instance), readFileSync(join(d.units, template), 'utf8'));
      const r = spawnSync('systemd-analyze', ['security', '--offline=true', '--no-pager', `./${instance}`], { cwd: inst, encoding: 'utf8' });
      const m = /Overall exposure level for \S+: (\d+\.\d+)/.exec(r.stdout);
      expect(m).not.toBeNull();
      expect(Number(m![1])).toBeLessThanOrEqual(bound);
      for (const setting of ['NoNewPrivileges=', 'ProtectKernelTunables=', 'ProtectKernelModules=', 'ProtectHome=', 'PrivateTmp=', 'SystemCallArchitectures=', 'LockPersonality=']) {
        expect(r.stdout).toMatch(new RegExp(`^✓ ${setting}`, 'm'));
      }
    });
  });

  it('`make install DESTDIR=…` puts everything under DESTDIR, and `make uninstall DESTDIR=…` leaves no file behind', () => {
    const dest = join(tmp, 'dest');
    const inst = make('install', `DESTDIR=${dest}`);
    expect(inst.stderr).toBe('');
    expect(inst.status).toBe(0);
    const installed = filesUnder(dest);
    expect(installed).toEqual(expect.arrayContaining([
      'etc/systemd/system/shadowvm@.service', 'etc/systemd/system/shadowvm-agent@.service', 'usr/local/bin/shadowvm',
      'opt/shadowvm/bin/shadowvm', 'opt/shadowvm/dist/lib/cli/main.js', 'opt/shadowvm/build/Release/shadowvm_afpacket.node',
      'opt/shadowvm/node_modules/yargs/package.json', 'opt/shadowvm/node_modules/cap/package.json',
    ]));
    expect(readlinkSync(join(dest, 'usr/local/bin/shadowvm'))).toBe('/opt/shadowvm/bin/shadowvm');
    expect(lstatSync(join(dest, 'etc/shadowvm')).mode & 0o777).toBe(0o700);
    expect(readFileSync(join(dest, 'etc/systemd/system/shadowvm@.service'), 'utf8')).toContain('ExecStart=/opt/shadowvm/bin/shadowvm run --name %i --config /etc/shadowvm/%i.json');

    const uninst = make('uninstall', `DESTDIR=${dest}`);
    expect(uninst.status).toBe(0);
    expect(filesUnder(dest)).toEqual([]);
    expect(existsSync(join(dest, 'opt/shadowvm'))).toBe(false);
    expect(existsSync(join(dest, 'etc/shadowvm'))).toBe(false);
  });

  it('`make uninstall` keeps an administrator\'s settings files', () => {
    const dest = join(tmp, 'keep');
    expect(make('install', `DESTDIR=${dest}`).status).toBe(0);
    writeFileSync(join(dest, 'etc/shadowvm/web1.json'), '{}');
    expect(make('uninstall', `DESTDIR=${dest}`).status).toBe(0);
    expect(filesUnder(dest)).toEqual(['etc/shadowvm/web1.json']);
  });
});
