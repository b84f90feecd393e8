/**
 * Every command refuses a user's mistake the same way: exit code 2, one line
 * on stderr that starts with `shadowvm:`, no stack trace (UserFacingError in
 * lib/errors.ts). The built CLI in a child process, as a user runs it.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fixtureFiles } from '../support/fixtures';

const ROOT = join(__dirname, '..', '..');
const BIN = join(ROOT, 'bin', 'shadowvm');

function shadowvm(args: string[]) {
  if (!existsSync(join(ROOT, 'dist', 'lib', 'cli', 'main.js'))) throw new Error('dist/ is missing: run `make build` (make test does it)');
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout: 30_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function expectOneLineError(r: ReturnType<typeof shadowvm>, message: RegExp): void {
  expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 2, stderr: expect.stringMatching(/^shadowvm: [^\n]+\n$/) });
  expect(r.stderr).toMatch(message);
  expect(r.stderr).not.toMatch(/\bat .*\.js:\d+/);
}

describe('error exits of every command', () => {
  let dir: string;
  beforeAll(() => { dir = mkdtempSync(join(tmpdir(), 'op-errors-')); });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  const f = fixtureFiles('http-diverge');
  const nowhere = () => join(dir, 'no-such-folder');

  it.each<[string, () => string[], RegExp]>([
    ['status with no bridge on the socket', () => ['status', '--control', join(nowhere(), 'control.sock')], /no bridge is listening here/],
    ['failover with no bridge on the socket', () => ['failover', '--control', join(nowhere(), 'control.sock')], /no bridge is listening here/],
    ['agent of a kind that does not exist', () => ['agent', 'nosuchkind'], /Choices: "lab"/],
    ['setup with a pair name too long for interface names', () => ['setup', '--name', 'much_too_long', '--uplink', 'lo'], /pair name "much_too_long" must be 1–8 characters/],
    ['teardown with a bad pair name', () => ['teardown', '--name', 'BAD!'], /pair name "BAD!"/],
    ['lab with a bad prefix', () => ['lab', 'up', '--kind', 'netns', '--prefix', 'Bad!'], /lab prefix "Bad!" must be/],
    ['lab of an unknown kind', () => ['lab', 'up', '--kind', 'xen'], /Choices: "netns", "qemu"/],
    ['replay of a capture that does not exist', () => ['replay', '--client', join(dir, 'none.pcap'), '--primary', f.primary, '--backup', f.backup], /cannot read client capture/],
    ['replay --out into a folder that does not exist', () => ['replay', '--client', f.client, '--primary', f.primary, '--backup', f.backup, '--out', join(nowhere(), 'out.pcap')],
      /out\.pcap: cannot create it: the folder .*no-such-folder does not exist$/m],
    ['run on an interface that does not exist', () => ['run', '--name', 'op', '--uplink', 'opnosuch0', '--primary', 'opnosuch1', '--backup', 'opnosuch2', '--no-carrier-watch',
      '--agent', join(dir, 'agent.sock'), '--control', join(dir, 'control.sock')], /AF_PACKET port opnosuch0: (no such interface|.*permission)/],
    ['run without its interfaces', () => ['run', '--name', 'op'], /name the uplink, primary, backup interfaces/],
    ['config check of a file with an unknown key', () => {
      const path = join(dir, 'unknown.json');
      writeFileSync(path, '{"checkpointBudget": {"perSource": 5, "window": 10}}');
      return ['config', 'check', path];
    }, /invalid setting checkpointBudget\.window: unknown key; allowed keys in checkpointBudget: perSource, windowMs$/m],
    ['a command that does not exist', () => ['frobnicate'], /Unknown argument: frobnicate/],
  ])('%s: exit 2, one line, no stack', (_what, args, message) => {
    expectOneLineError(shadowvm(args()), message);
  });

  // lib/agents/lab-agent.ts (not in this branch) still has LabAgentOptionError extend Error, so
  // it prints a stack. This test starts to "fail" (i.e. passes) once that class extends
  // UserFacingError: then drop `.failing`.
  it('agent lab with an option out of range: exit 2, one line, no stack', () => {
    expectOneLineError(shadowvm(['agent', 'lab', '--fail-fraction', '2', '--socket', join(nowhere(), 'agent.sock')]), /failFraction must be between 0 and 1/);
  });
});
