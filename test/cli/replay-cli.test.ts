/**
 * `shadowvm replay` as a user runs it: the built bin/shadowvm in a child
 * process (needs `make build`, which `make test` does first).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readPcapFile } from '../../lib/io';
import { decodeFrame } from '../../lib/packet/frame';
import { verifyL4Checksum } from '../../lib/packet/l4-checksum';
import { fixtureFiles } from '../support/fixtures';

const ROOT = join(__dirname, '..', '..');
const BIN = join(ROOT, 'bin', 'shadowvm');

function shadowvm(...args: string[]) {
  if (!existsSync(join(ROOT, 'dist', 'lib', 'cli', 'main.js'))) throw new Error('dist/ is missing: run `make build` (make test does it)');
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout: 60_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('shadowvm replay (CLI)', () => {
  let tmp: string;
  beforeAll(() => { tmp = mkdtempSync(join(tmpdir(), 'svm-cli-')); });
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  it('prints one JSON object with flows, checkpoints, released and errors', () => {
    const f = fixtureFiles('http-diverge');
    const r = shadowvm('replay', '--client', f.client, '--primary', f.primary, '--backup', f.backup, '--json');
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report.flows[0]).toEqual(expect.objectContaining({
      key: expect.stringMatching(/^tcp 10\.77\.0\.1:\d+ > 10\.77\.0\.2:80$/), protocol: 'tcp',
      releasedBytes: expect.any(Number), matchedBytes: expect.any(Number), mismatches: 1,
    }));
    expect(report.checkpoints).toEqual([expect.objectContaining({ reason: 'mismatch', flow: report.flows[0].key })]);
    expect(report.released).toEqual({ frames: expect.any(Number), bytes: expect.any(Number) });
    expect(report.errors).toEqual({});
  });

  it('writes what the client would have received and one two-sided pcapng per mismatch', () => {
    const f = fixtureFiles('ftp-pasv');
    const out = join(tmp, 'released.pcap');
    const dir = join(tmp, 'div');
    const r = shadowvm('replay', '--client', f.client, '--primary', f.primary, '--backup', f.backup, '--out', out, '--divergence', dir);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('227');
    const released = readPcapFile(out);
    expect(released.length).toBeGreaterThan(0);
    const primary = readPcapFile(f.primary).map((x) => x.frame);
    const primaryFrames = new Set(primary.map((x) => x.toString('hex')));
    // Only the primary's frames, untouched; or the matched beginning of one sent ahead of it
    // (releaseMatchedPrefix: same connection and sequence number, its payload a prefix of the frame's).
    const isPrefixOfPrimary = (frame: Buffer) => {
      const d = decodeFrame(frame);
      if (d.l4 !== 'tcp' || !verifyL4Checksum(d)) return false;
      const payload = Buffer.from(d.payload());
      return primary.some((p) => {
        const q = decodeFrame(p);
        return q.l4 === 'tcp' && q.tcp.seq === d.tcp.seq && q.tcp.srcPort === d.tcp.srcPort && q.tcp.dstPort === d.tcp.dstPort
          && q.payloadLength > payload.length && Buffer.from(q.payload()).subarray(0, payload.length).equals(payload);
      });
    };
    for (const x of released) expect(primaryFrames.has(x.frame.toString('hex')) || isPrefixOfPrimary(x.frame)).toBe(true);
    expect(released.filter((x) => primaryFrames.has(x.frame.toString('hex'))).length).toBeGreaterThan(0);
    const files = readdirSync(dir);
    expect(files.length).toBeGreaterThanOrEqual(2);
    expect(files[0]).toMatch(/^001-data-tcp_10\.77\.0\.1_\d+_10\.77\.0\.2_21\.pcapng$/);
    const tshark = spawnSync('tshark', ['-r', join(dir, files[0]), '-T', 'fields', '-e', 'frame.interface_name'], { encoding: 'utf8' });
    if (tshark.error) throw new Error('tshark is needed for this test: apt-get install tshark');
    const names = new Set(tshark.stdout.trim().split('\n'));
    expect(names).toEqual(new Set(['primary', 'backup']));
  });

  it('exits 2 with one line for a missing capture', () => {
    const r = shadowvm('replay', '--client', '/nonexistent.pcap', '--primary', 'x', '--backup', 'y');
    expect(r.code).toBe(2);
    expect(r.stderr.trim().split('\n')).toEqual(['shadowvm: cannot read client capture /nonexistent.pcap']);
  });

  it('exits 2 with one line for a file that is not a capture', () => {
    const r = shadowvm('replay', '--client', join(ROOT, 'README.md'), '--primary', join(ROOT, 'README.md'), '--backup', join(ROOT, 'README.md'));
    expect(r.code).toBe(2);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/^shadowvm: .*README\.md/);
  });

  it('exits 2 with one line for an unknown flag or a bad value', () => {
    const f = fixtureFiles('udp-dns');
    for (const args of [['--bogus'], ['--max-age-ms', '-5'], ['--agent', 'maybe']]) {
      const r = shadowvm('replay', '--client', f.client, '--primary', f.primary, '--backup', f.backup, ...args);
      expect(r.code).toBe(2);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
    }
  });
});
