/**
 * run's roles file: a restarted bridge starts on the interfaces that hold the
 * roles now, not on the ones its config first named; a file for another
 * pair, or for other configured interfaces, is ignored; a role whose
 * interface is gone falls back (primary) or starts without a backup.
 */
import { mkdtempSync, rmSync, writeFileSync, statSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { restoreRoles, rolesFileOf, saveRoles } from '../../../lib/cli/roles-file';

describe('the roles file of shadowvm run', () => {
  let dir: string;
  let file: string;
  const configured = { primary: 'svm-p', backup: 'svm-b' };
  const existing = (names: string[]) => (ifname: string) => names.includes(ifname);

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'svm-roles-'));
    file = rolesFileOf(join(dir, 'control.sock'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('lives next to the control socket, is private, and is read back as written', () => {
    expect(file).toBe(join(dir, 'roles.json'));
    saveRoles(file, 'web1', configured, { primary: 'svm-b', backup: 'svma7' });
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(JSON.parse(readFileSync(file, 'utf8'))).toMatchObject({ name: 'web1', configured, primary: 'svm-b', backup: 'svma7' });
    const r = restoreRoles(file, 'web1', configured, existing(['svm-b', 'svma7']));
    expect(r).toMatchObject({ primary: 'svm-b', backup: 'svma7', changed: true });
    expect(r.note).toMatch(/primary svm-b, backup svma7/);
  });

  it('no file: the config\'s interfaces, nothing to say', () => {
    expect(restoreRoles(file, 'web1', configured, existing([]))).toEqual({ ...configured, note: null, changed: false });
  });

  it('a file for another pair, other configured interfaces, or not JSON: the config\'s interfaces, and why', () => {
    saveRoles(file, 'web2', configured, { primary: 'x1', backup: 'x2' });
    expect(restoreRoles(file, 'web1', configured, existing(['x1', 'x2']))).toMatchObject({ ...configured, changed: false, note: expect.stringMatching(/another pair or other configured interfaces/) });
    saveRoles(file, 'web1', { primary: 'old-p', backup: 'old-b' }, { primary: 'x1', backup: 'x2' });
    expect(restoreRoles(file, 'web1', configured, existing(['x1', 'x2']))).toMatchObject({ ...configured, changed: false });
    writeFileSync(file, '{ not json');
    expect(restoreRoles(file, 'web1', configured, existing([]))).toMatchObject({ ...configured, note: expect.stringMatching(/not JSON/) });
  });

  it('a primary whose interface is gone: the configured one (the bridge then says which is missing)', () => {
    saveRoles(file, 'web1', configured, { primary: 'svma3', backup: 'svma4' });
    const r = restoreRoles(file, 'web1', configured, existing(['svma4', 'svm-p']));
    expect(r.primary).toBe('svm-p');
    expect(r.backup).toBe('svma4');
    expect(r.note).toMatch(/svma3 is gone/);
  });

  it('no backup (after a failover, before re-protection), or its interface gone: starts without one', () => {
    saveRoles(file, 'web1', configured, { primary: 'svm-b', backup: null });
    expect(restoreRoles(file, 'web1', configured, existing(['svm-b', 'svm-p']))).toMatchObject({ primary: 'svm-b', backup: null, changed: true, note: expect.stringMatching(/no backup/) });
    saveRoles(file, 'web1', configured, { primary: 'svm-b', backup: 'svma9' });
    expect(restoreRoles(file, 'web1', configured, existing(['svm-b']))).toMatchObject({ primary: 'svm-b', backup: null, note: expect.stringMatching(/svma9 is gone/) });
  });
});
