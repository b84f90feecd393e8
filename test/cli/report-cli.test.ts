/**
 * `shadowvm report` (and `replay --log`) as a user runs them: the built
 * bin/shadowvm in a child process. Mistakes give one line and exit code 2.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fixtureFiles } from '../support/fixtures';

const ROOT = join(__dirname, '..', '..');
const BIN = join(ROOT, 'bin', 'shadowvm');

function shadowvm(...args: string[]) {
  if (!existsSync(join(ROOT, 'dist', 'lib', 'cli', 'main.js'))) throw new Error('dist/ is missing: run `make build` (make test does it)');
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout: 60_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('shadowvm report (CLI)', () => {
  let tmp: string;
  beforeAll(() => { tmp = mkdtempSync(join(tmpdir(), 'svm-report-cli-')); });
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  it('writes the same report from `replay --log` as from the three captures directly', () => {
    const f = fixtureFiles('ftp-pasv');
    const log = join(tmp, 'ftp.log');
    expect(shadowvm('replay', '--client', f.client, '--primary', f.primary, '--backup', f.backup, '--log', log).code).toBe(0);
    const events = readFileSync(log, 'utf8').trim().split('\n').map((l) => JSON.parse(l).event as string);
    expect(events.filter((e) => e === 'mismatch')).toHaveLength(2);
    expect(events).toContain('released');
    const fromLog = shadowvm('report', '--log', log, '--out', join(tmp, 'a.html'), '--title', 't');
    const direct = shadowvm('report', '--client', f.client, '--primary', f.primary, '--backup', f.backup, '--out', join(tmp, 'b.html'), '--title', 't');
    expect([fromLog.code, direct.code]).toEqual([0, 0]);
    expect(readFileSync(join(tmp, 'a.html'), 'utf8')).toBe(readFileSync(join(tmp, 'b.html'), 'utf8'));
  });

  it.each([
    [['report', '--out', 'x.html'], /^shadowvm: name the run: --log FILE, or --client\/--primary\/--backup captures$/],
    [['report', '--log', '/nonexistent/run.log', '--out', 'x.html'], /^shadowvm: cannot read log \/nonexistent\/run.log: ENOENT$/],
    [['report', '--log', 'a.log', '--client', 'c.pcap', '--out', 'x.html'], /^shadowvm: give either --log or the three captures/],
    [['report', '--client', 'c.pcap', '--out', 'x.html'], /^shadowvm: a replay needs all three captures/],
    [['report', '--client', '/nonexistent/c.pcap', '--primary', 'p', '--backup', 'b', '--out', 'x.html'], /^shadowvm: cannot read client capture \/nonexistent\/c.pcap: ENOENT$/],
  ])('refuses %j with one line and exit code 2', (args, message) => {
    const r = shadowvm(...args);
    expect(r.code).toBe(2);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr.trim()).toMatch(message);
  });

  it('says in one line that a file is not a shadowvm log, and that the output cannot be written', () => {
    const junk = join(tmp, 'junk.log');
    writeFileSync(junk, 'hello\nworld\n');
    const r = shadowvm('report', '--log', junk, '--out', join(tmp, 'x.html'));
    expect({ code: r.code, stderr: r.stderr.trim() }).toEqual({ code: 2, stderr: `shadowvm: ${junk}: none of its 2 lines is a shadowvm log line (JSON with "ts" and "event")` });
    writeFileSync(junk, '{"ts":"2026-01-01T00:00:00Z","event":"started"}\n');
    const w = shadowvm('report', '--log', junk, '--out', '/nonexistent/dir/x.html');
    expect({ code: w.code, stderr: w.stderr.trim() }).toEqual({ code: 2, stderr: 'shadowvm: cannot write /nonexistent/dir/x.html: ENOENT' });
  });

  it('refuses `replay --log` into a folder that does not exist with one line', () => {
    const f = fixtureFiles('udp-dns');
    const r = shadowvm('replay', '--client', f.client, '--primary', f.primary, '--backup', f.backup, '--log', '/nonexistent/dir/run.log');
    expect({ code: r.code, stderr: r.stderr.trim() }).toEqual({ code: 2, stderr: 'shadowvm: cannot write log /nonexistent/dir/run.log: ENOENT' });
  });
});
