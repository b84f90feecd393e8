/** `shadowvm config check` as an administrator runs it before (re)starting a unit: the built CLI. */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_PIPELINE_CONFIG } from '../../lib/pipeline/config';

const ROOT = join(__dirname, '..', '..');
const BIN = join(ROOT, 'bin', 'shadowvm');

function shadowvm(...args: string[]) {
  if (!existsSync(join(ROOT, 'dist', 'lib', 'cli', 'main.js'))) throw new Error('dist/ is missing: run `make build` (make test does it)');
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout: 30_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('shadowvm config check', () => {
  let dir: string;
  beforeAll(() => { dir = mkdtempSync(join(tmpdir(), 'op-config-cli-')); });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('says a good file is valid and prints the effective settings with defaults filled in', () => {
    const path = join(dir, 'web1.json');
    writeFileSync(path, JSON.stringify({ ports: { uplink: 'eth1', primary: 'svm-web1-p', backup: 'svm-web1-b' }, policy: { arp: 'compare' } }));
    const r = shadowvm('config', 'check', path);
    expect(r.code).toBe(0);
    expect(r.stdout.split('\n')[0]).toBe(`${path}: valid`);
    const json = shadowvm('config', 'check', path, '--json');
    const effective = JSON.parse(json.stdout);
    expect(effective.ports).toEqual({ uplink: 'eth1', primary: 'svm-web1-p', backup: 'svm-web1-b' });
    expect(effective.policy).toEqual({ ...DEFAULT_PIPELINE_CONFIG.policy, arp: 'compare' });
    expect(effective.replicator).toEqual(DEFAULT_PIPELINE_CONFIG.replicator);
  });

  it.each([
    ['{"replicator": {"checkpointTimeoutMS": 100}}', /invalid setting replicator\.checkpointTimeoutMS: unknown key; allowed keys in replicator: checkpointTimeoutMs,/],
    ['{"policy": {"otherEtherTypes": "forward"}}', /invalid setting policy\.otherEtherTypes: must be one of "forward-primary", "compare", "drop", got "forward"/],
    ['{"maxFlows": ', /is not valid JSON/],
  ])('refuses %s with one line on stderr and exit code 2', (text, message) => {
    const path = join(dir, 'bad.json');
    writeFileSync(path, text);
    const r = shadowvm('config', 'check', path);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr.trimEnd().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(message);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });
});
