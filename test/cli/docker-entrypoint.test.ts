/** The container entry point, run as the image would run it, without docker. */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { fixtureFiles } from '../support/fixtures';

const ROOT = join(__dirname, '..', '..');
const ENTRY = join(ROOT, 'docker', 'entrypoint.sh');

function entry(env: Record<string, string>, ...args: string[]) {
  return spawnSync(ENTRY, args, { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 60_000 });
}

describe('docker/entrypoint.sh', () => {
  it('runs the CLI from SHADOWVM_HOME with the container arguments', () => {
    const f = fixtureFiles('udp-dns');
    const r = entry({ SHADOWVM_HOME: ROOT }, 'replay', '--client', f.client, '--primary', f.primary, '--backup', f.backup, '--json');
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout).flows).toHaveLength(5);
  });

  it('shows the help when given no arguments', () => {
    const r = entry({ SHADOWVM_HOME: ROOT });
    expect(r.status).toBe(0);
    expect(r.stdout).toContain('shadowvm replay');
  });

  it('says clearly when the tree is not built', () => {
    const r = entry({ SHADOWVM_HOME: '/nonexistent' }, 'replay');
    expect(r.status).toBe(2);
    expect(r.stderr.trim()).toBe('shadowvm: no built tree at /nonexistent (set SHADOWVM_HOME or run make build)');
  });

  it('passes the CLI exit code through', () => {
    const r = entry({ SHADOWVM_HOME: ROOT }, 'replay', '--client', '/missing.pcap', '--primary', 'x', '--backup', 'y');
    expect(r.status).toBe(2);
  });
});
