/**
 * Replay of every recorded fixture through the pipeline. Each verdict is
 * checked twice: against fixtures/expected.json, and against
 * scripts/fixture-check.ts, a deliberately simple checker that shares no code
 * with lib/ (so one bug cannot hide in both).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PcapRecord, readPcapFile } from '../../lib/io';
import { decodeFrame } from '../../lib/packet/frame';
import { isProbeReply } from '../../lib/failover/frames';
import { runReplay, ReplayReport } from '../../lib/replay';
import { checkFixture, ExpectedVerdict } from '../../scripts/fixture-check';
import { FIXTURES_DIR, expectedVerdicts, fixtureFiles, fixtureNames } from '../support/fixtures';

const expected = expectedVerdicts() as Record<string, ExpectedVerdict>;

function firstMismatch(report: ReplayReport) {
  const all = report.flows.flatMap((f) => f.mismatchList.map((m) => ({ flow: f.key, ...m })));
  all.sort((a, b) => a.timeUs - b.timeUs);
  return all[0];
}

const vmPortOf = (key: string) => Number(/:(\d+)(?: vlan.*)?$/.exec(key)![1]);

/**
 * What the primary sent minus its answers to the live bridge's liveness
 * probes (recorded through the bridge, a fixture may hold some: the bridge
 * probes the primary when the backup spoke last and the primary stayed
 * quiet). No bridge, live or replayed, forwards those to a client.
 */
const primaryOutput = (records: PcapRecord[]) => records.filter((r) => !isProbeReply(decodeFrame(r.frame)));

describe('replay of the recorded fixtures', () => {
  let tmp: string;
  beforeAll(() => { tmp = mkdtempSync(join(tmpdir(), 'svm-replay-')); });
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  it('has an expected verdict for every fixture and a fixture for every verdict', () => {
    expect(fixtureNames()).toEqual(Object.keys(expected).sort());
    expect(fixtureNames()).toEqual(expect.arrayContaining(['ftp-pasv', 'http-diverge', 'http-ipv6', 'http-keepalive', 'udp-dns']));
  });

  describe.each(Object.keys(expected).sort())('%s', (name) => {
    const want = expected[name];
    const files = fixtureFiles(name);
    const oracle = checkFixture(join(FIXTURES_DIR, name));

    it('decodes every captured frame without a malformed reason', () => {
      const report = runReplay(files);
      expect(report.errors).toEqual({});
      expect(report.inputs).toEqual({
        client: readPcapFile(files.client).length, primary: readPcapFile(files.primary).length, backup: readPcapFile(files.backup).length,
      });
    });

    if (want.failovers) {
      // Recorded across a primary's death: test/replay/failover-fixture.test.ts judges it.
    } else if (want.mismatches === 0) {
      it('finds no mismatch and releases every primary frame, unchanged and in order, without a checkpoint', () => {
        const out = join(tmp, `${name}.pcap`);
        const report = runReplay({ ...files, outPath: out });
        expect(report.flows.map((f) => [f.key, f.mismatches])).toEqual(report.flows.map((f) => [f.key, 0]));
        expect(report.checkpoints).toEqual([]);
        expect(report.heldAtEnd.frames).toBe(0);
        const released = readPcapFile(out).map((r) => r.frame.toString('hex'));
        const primary = primaryOutput(readPcapFile(files.primary)).map((r) => r.frame.toString('hex'));
        expect(released).toEqual(primary);
        expect(oracle.mismatches).toEqual([]);
      });

      it('matches as many bytes per flow as the independent checker counts', () => {
        const report = runReplay(files);
        const ours = report.flows.filter((f) => f.protocol === 'tcp').map((f) => f.matchedBytes).sort((a, b) => a - b);
        const theirs = oracle.flows.filter((f) => f.flow.proto === 'tcp').map((f) => f.primaryBytes).sort((a, b) => a - b);
        expect(ours).toEqual(theirs);
      });
    } else {
      it('finds the expected first mismatch, where the independent checker finds it', () => {
        const report = runReplay(files);
        const first = firstMismatch(report);
        expect(first).toBeDefined();
        expect(vmPortOf(first.flow)).toBe(want.firstMismatch!.flowPort);
        const theirs = oracle.mismatches[0];
        expect(first.offset).toBe(theirs.offset);
        if (want.firstMismatch!.streamOffset !== undefined) expect(first.offset).toBe(want.firstMismatch!.streamOffset);
        if (want.firstMismatch!.contains !== undefined) {
          expect(theirs.primaryContext).toContain(want.firstMismatch!.contains);
          expect(first.primary).toContain(want.firstMismatch!.contains);
        }
        expect(report.checkpoints[0]).toEqual(expect.objectContaining({ reason: 'mismatch', flow: first.flow }));
      });

      it('releases nothing of the mismatching flow beyond the agreed bytes before the checkpoint', () => {
        // With no agent, nothing is compared and everything flows: the contrast shows the hold is real.
        const held = runReplay({ ...files, agent: 'instant', checkpointMs: 1e9 });
        const flow = held.flows.find((f) => f.mismatches > 0)!;
        expect(held.checkpoints).toEqual([expect.objectContaining({ reason: 'mismatch', outcome: 'pending' })]);
        expect(flow.releasedBytes).toBeLessThanOrEqual(flow.mismatchList[0].offset);
        expect(held.heldAtEnd.frames).toBeGreaterThan(0);
        const degraded = runReplay({ ...files, agent: 'none' });
        expect(degraded.state).toBe('DEGRADED');
        expect(degraded.released.frames).toBe(primaryOutput(readPcapFile(files.primary)).length);
      });
    }
  });
});
