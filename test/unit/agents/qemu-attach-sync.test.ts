/**
 * `shadowvm agent qemu`'s choice of sync mode: the config's `sync` key, the
 * CLI's --sync over it, and `colo` refused in one line where it cannot run.
 */
import * as fs from 'node:fs';
import { join } from 'node:path';
import { ColoUnavailableError, QemuAgentConfigError, coloQemuFor, readQemuAgentConfig, resolveSync, stateFileOf, syncModeOf } from '../../../lib/agents/qemu-attach';
import { tempDir } from './socket-helpers';

function writeConfig(dir: string, extra: Record<string, unknown> = {}, template: Record<string, unknown> = {}): string {
  const file = join(dir, 'lab.json');
  const vm = (name: string, tap: string) => ({ name, pid: process.pid, tap, agentQmpSocket: join(dir, `${name}.agent.qmp`) });
  fs.writeFileSync(file, JSON.stringify({
    agentSocket: join(dir, 'agent.sock'), prefix: 'cw',
    vms: { primary: vm('cw-vm1', 'cwp'), backup: vm('cw-vm2', 'cwb') },
    vmTemplate: { runDir: dir, memMiB: 128, accel: 'tcg', mac: '52:54:00:12:34:56', boot: { kernel: 'k', initrd: 'i', cmdline: 'c' }, ...template },
    ...extra,
  }));
  return file;
}

describe('the QEMU agent\'s sync mode', () => {
  it('is auto unless the config or the CLI says otherwise; the CLI wins', () => {
    expect(syncModeOf('f', undefined)).toBe('auto');
    expect(syncModeOf('f', 'full-copy')).toBe('full-copy');
    expect(syncModeOf('f', 'colo')).toBe('colo');
    expect(syncModeOf('f', 'colo', 'full-copy')).toBe('full-copy');
    expect(syncModeOf('f', undefined, 'colo')).toBe('colo');
  });

  it('rejects anything else with the file, the key and the allowed values', () => {
    expect(() => syncModeOf('lab.json', 'incremental')).toThrow(new QemuAgentConfigError('lab.json', 'sync: must be "auto", "full-copy", "colo", not "incremental"'));
    expect(() => syncModeOf('lab.json', 'colo', 'COLO')).toThrow(/--sync: must be "auto", "full-copy", "colo", not "COLO"/);
    expect(() => syncModeOf('lab.json', 7)).toThrow(/sync: must be .* not 7/);
  });

  it('reads "sync" from the config file and checks vmTemplate.binary', () => {
    const tmp = tempDir('qattach');
    try {
      expect(readQemuAgentConfig(writeConfig(tmp.dir)).sync).toBe('auto');
      expect(readQemuAgentConfig(writeConfig(tmp.dir, { sync: 'colo' })).sync).toBe('colo');
      expect(() => readQemuAgentConfig(writeConfig(tmp.dir, { sync: 'dirty' }))).toThrow(QemuAgentConfigError);
      expect(() => readQemuAgentConfig(writeConfig(tmp.dir, {}, { binary: 42 }))).toThrow(/vmTemplate.binary/);
    } finally {
      tmp.remove();
    }
  });

  describe('colo where it cannot run', () => {
    const saved = process.env.SHADOWVM_QEMU_COLO_DIR;
    afterEach(() => {
      if (saved === undefined) delete process.env.SHADOWVM_QEMU_COLO_DIR; else process.env.SHADOWVM_QEMU_COLO_DIR = saved;
    });

    it('is refused in one line when no COLO-capable QEMU is found', async () => {
      const tmp = tempDir('qattach');
      try {
        process.env.SHADOWVM_QEMU_COLO_DIR = join(tmp.dir, 'no-such-build');
        const c = readQemuAgentConfig(writeConfig(tmp.dir, { sync: 'colo' }));
        const err = await coloQemuFor(c, { probe: false }).catch((e: Error) => e);
        expect(err).toBeInstanceOf(ColoUnavailableError);
        expect((err as Error).message).toMatch(/^sync colo: no COLO-capable QEMU: .*make qemu-colo$/);
        expect((err as Error).message).not.toContain('\n');
      } finally {
        tmp.remove();
      }
    });

    it('auto falls back to full-copy, saying why, where colo would be refused; colo itself is refused; full-copy needs nothing', async () => {
      const tmp = tempDir('qattach');
      try {
        process.env.SHADOWVM_QEMU_COLO_DIR = join(tmp.dir, 'no-such-build');
        const c = readQemuAgentConfig(writeConfig(tmp.dir));
        const auto = await resolveSync(c, 'auto', { probe: false });
        expect(auto).toEqual({ sync: 'full-copy', why: expect.stringMatching(/^auto: sync colo: no COLO-capable QEMU/) });
        await expect(resolveSync(c, 'colo', { probe: false })).rejects.toBeInstanceOf(ColoUnavailableError);
        expect(await resolveSync(c, 'full-copy')).toEqual({ sync: 'full-copy', why: 'asked for' });
        // A COLO-capable binary the primary does not run: auto still copies whole.
        const fake = join(tmp.dir, 'qemu-system-x86_64');
        fs.writeFileSync(fake, '#!/bin/sh\n', { mode: 0o755 });
        const withBinary = readQemuAgentConfig(writeConfig(tmp.dir, {}, { binary: fake }));
        expect((await resolveSync(withBinary, 'auto', { probe: false })).sync).toBe('full-copy');
      } finally {
        tmp.remove();
      }
    });

    it('is refused when the primary runs another QEMU than the COLO-capable one', async () => {
      const tmp = tempDir('qattach');
      try {
        const fake = join(tmp.dir, 'qemu-system-x86_64');
        fs.writeFileSync(fake, '#!/bin/sh\n', { mode: 0o755 });
        // The "primary" here is this very process (its pid in the config): it does not run `fake`.
        const c = readQemuAgentConfig(writeConfig(tmp.dir, { sync: 'colo' }, { binary: fake }));
        await expect(coloQemuFor(c, { probe: false })).rejects.toThrow(new RegExp(`^sync colo: the primary cw-vm1 \\(pid ${process.pid}\\) runs .*, not the COLO-capable ${fake}`));
      } finally {
        tmp.remove();
      }
    });
  });
});

describe('the QEMU agent\'s state file (which VMs hold the roles now)', () => {
  it('is next to the config, or in systemd\'s state directory when the unit has one (/etc is read-only there)', () => {
    expect(stateFileOf('/etc/shadowvm/web1-agent.json', {})).toBe('/etc/shadowvm/web1-agent.json.state');
    expect(stateFileOf('/etc/shadowvm/web1-agent.json', { STATE_DIRECTORY: '/var/lib/shadowvm/web1' })).toBe('/var/lib/shadowvm/web1/web1-agent.json.state');
    expect(stateFileOf('/etc/shadowvm/web1-agent.json', { STATE_DIRECTORY: '/var/lib/a:/var/lib/b' })).toBe('/var/lib/a/web1-agent.json.state');
  });

  it('is read from the state directory at start: a restarted unit attaches to the VMs it names', () => {
    const d = tempDir('state-dir');
    const saved = process.env.STATE_DIRECTORY;
    try {
      const file = writeConfig(d.dir);
      const stateDir = join(d.dir, 'state');
      fs.mkdirSync(stateDir);
      process.env.STATE_DIRECTORY = stateDir;
      const vm = { name: 'cw-a1-3', pid: process.pid, tap: 'cwa3', agentQmpSocket: join(d.dir, 'cw-a1-3.agent.qmp') };
      fs.writeFileSync(join(stateDir, 'lab.json.state'), JSON.stringify({ vms: { primary: vm, backup: null } }));
      const c = readQemuAgentConfig(file);
      expect(c.vms.primary.tap).toBe('cwa3');
      expect(c.vms.backup).toBeNull();
    } finally {
      if (saved === undefined) delete process.env.STATE_DIRECTORY;
      else process.env.STATE_DIRECTORY = saved;
      d.remove();
    }
  });
});

