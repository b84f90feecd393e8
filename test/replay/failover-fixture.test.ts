/**
 * Replay of the fixtures recorded across a real failover (those whose
 * expected verdict has `failovers`): the primary died silently in the middle
 * of a download, the live bridge promoted the backup, and the client's
 * download completed. The replay must see the same death in the captures
 * alone (the primary's capture stops while the backup's goes on; its probe
 * is never answered), promote the backup, and release to the client exactly
 * the stream the client received live (`client-rx.pcap`, what the bridge
 * sent the client's namespace).
 *
 * Streams are reassembled with scripts/fixture-check.ts, which shares no
 * code with lib/.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readPcapFile } from '../../lib/io';
import { DEFAULT_PIPELINE_CONFIG } from '../../lib/pipeline';
import { runReplay } from '../../lib/replay';
import {
  CapturedFrame, ExpectedVerdict, checkFixture, decodeFrame, readPcapFile as readCapture, receivedTcpStreams, verdictProblems,
} from '../../scripts/fixture-check';
import { FIXTURES_DIR, expectedVerdicts, fixtureFiles } from '../support/fixtures';

const expected = expectedVerdicts() as Record<string, ExpectedVerdict>;
const failoverFixtures = Object.keys(expected).filter((name) => (expected[name].failovers ?? 0) > 0).sort();

/** The one server → client stream on `vmPort` in a capture of frames sent to the client. */
function streamOn(frames: readonly CapturedFrame[], vmPort: number): { bytes: Buffer; fin: boolean } {
  const streams = [...receivedTcpStreams(frames)].filter(([key]) => Number(key.split(' ')[1]) === vmPort);
  expect(streams).toHaveLength(1);
  return streams[0][1];
}

/** TCP payload bytes of the frames from `vmPort`, retransmissions counted each time. */
function payloadSent(frames: readonly CapturedFrame[], vmPort: number): number {
  let n = 0;
  for (const f of frames) {
    const seg = decodeFrame(f.bytes);
    if (seg.proto === 'tcp' && seg.srcPort === vmPort) n += seg.payload.length;
  }
  return n;
}

describe('replay of the fixtures recorded across a failover', () => {
  let tmp: string;
  beforeAll(() => { tmp = mkdtempSync(join(tmpdir(), 'svm-replay-failover-')); });
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  it('has at least the http-failover fixture, with what the client received', () => {
    expect(failoverFixtures).toContain('http-failover');
    for (const name of failoverFixtures) expect(expected[name].clientReceived).toBeDefined();
  });

  describe.each(failoverFixtures)('%s', (name) => {
    const want = expected[name];
    const files = fixtureFiles(name);
    const rxFile = join(FIXTURES_DIR, name, 'client-rx.pcap');
    const port = want.clientReceived!.flowPort;

    it('detects the silent primary from the captures alone and promotes the backup once, carrying the flow over', () => {
      const report = runReplay(files);
      expect(report.errors).toEqual({});
      expect(report.failovers).toHaveLength(want.failovers!);
      const f = report.failovers[0];
      expect(f).toEqual(expect.objectContaining({ cause: want.failoverCause, survivor: 'backup', flowsCarried: 1, flowsLost: 0 }));
      expect(report.state).toBe('FAILED_OVER');
      expect(report.roles).toBe('primary=dead backup=promoted');
      // Both replicas agreed on everything the primary said before it died.
      expect(report.flows.map((x) => x.mismatches)).toEqual(report.flows.map(() => 0));
      // The silence starts after the primary's last frame and lasts at least the silence time plus the probe's timeout.
      const primary = readPcapFile(files.primary);
      const backup = readPcapFile(files.backup);
      const { silenceMs, probeTimeoutMs } = DEFAULT_PIPELINE_CONFIG.failover;
      expect(f.detectedUs).toBeGreaterThan(primary[primary.length - 1].timeUs);
      expect(f.promotedUs - f.detectedUs).toBeGreaterThanOrEqual((silenceMs + probeTimeoutMs) * 1000);
      expect(f.promotedUs).toBeLessThanOrEqual(backup[backup.length - 1].timeUs);
      // The only request to the agent after the death is the re-protection, which nothing in a replay answers.
      expect(report.checkpoints.filter((c) => c.timeUs >= f.promotedUs)).toEqual([expect.objectContaining({ kind: 'reprotect', outcome: 'pending' })]);
    });

    it('releases to the client, byte for byte, the stream the client received across the failover', () => {
      const out = join(tmp, `${name}.pcap`);
      runReplay({ ...files, outPath: out });
      const released = readCapture(out);
      const receivedLive = readCapture(rxFile);
      const ours = streamOn(released, port);
      const theirs = streamOn(receivedLive, port);
      expect(ours.bytes.length).toBe(want.clientReceived!.bytes);
      expect(theirs.bytes.length).toBe(want.clientReceived!.bytes);
      expect(ours.bytes.equals(theirs.bytes)).toBe(true);
      expect(ours.fin).toBe(true);
      expect(theirs.fin).toBe(true);
      // No byte went out more often than the live bridge sent it (exactly once, but for the server's own retransmissions).
      expect(payloadSent(released, port)).toBe(payloadSent(receivedLive, port));
    });

    it('shows the independent checker the primary stopping mid-stream and the client getting the backup\'s whole stream', () => {
      const oracle = checkFixture(join(FIXTURES_DIR, name));
      expect(verdictProblems(oracle, want)).toEqual([]);
      expect(oracle.mismatches.map((m) => m.kind)).toEqual(['primary-stopped']);
      expect(oracle.clientReceived).toEqual([expect.objectContaining({ sha256: want.clientReceived!.sha256, equalsBackupStream: true, primaryIsPrefix: true })]);
    });
  });
});
