/**
 * A server that paces its answers by the clock (nginx `limit_rate`, as a
 * download site sets it), behind the bridge on the netns lab. Needs root.
 *
 * nginx works out how much a paced answer may have sent from whole seconds
 * since the request began, and sleeps on a timer in between. The primary's and
 * the backup's nginx get the same request within microseconds, but their
 * timers fire a few milliseconds apart; when one wakes just before a second
 * ticks over and the other just after, one may send a second's worth of bytes
 * (or two: nginx sends up to 2 MiB at once) that the other sends only at its
 * next wake-ups. The bytes are the same; the backup is late by a second or
 * two. The primary pauses of its own accord too, with the client's window open
 * and nothing to answer, so the bridge takes the stream as paced and waits for
 * its backup (PACED_GRACE, PACED_MAX_AGE): with the defaults, no `timeout`
 * checkpoint but for two rare kinds the rule does not cover (see the first
 * case), and every byte compared. (Before, 1 to 6 timeouts a round, up to a
 * fifth of the bytes released uncompared.) Then the primary dies in the middle of paced
 * downloads: the backup, behind or not, takes over and they arrive intact.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { BridgedLab, startBridgedLab } from '../../lib/lab/bridged';
import { fixedSeedBytes } from '../../lib/lab/content';
import { runInAsync } from '../../lib/lab/exec';
import { serveOnBoth } from '../../lib/lab/servers';
import { clientBytesReceived, delay, requireRoot, sha256 } from '../support/lab-helpers';

const PREFIX = 'svmps';
const FILE = 'paced.bin';
/** At 1 MB/s nginx sends the first 2 MiB at once (its first second counts double) and the rest over the next second. */
const BYTES = 3 << 20;
const DOWNLOADS = 4;
const ROUNDS = 3;
jest.setTimeout(120_000);

interface Round {
  ms: number;
  timeouts: number;
  /**
   * Timeouts the paced rule does not cover, by their backup-late line: a flow whose primary had not yet paused
   * (no primaryPauseMs: the first chunks differed), or one with a gap (backupBeyondGap, primaryBeyondGap: a
   * replica lost a segment before the bridge).
   */
  uncovered: number;
  unmatched: number;
  /** Checkpoints asked during the round, by reason (only those asked). */
  checkpoints: Record<string, number>;
}

/** The bridge's log lines that explain a timeout, with what the servers' TCP says then (ss: rto, retransmissions, unacked). */
class Diagnostics {
  readonly lines: string[] = [];
  uncovered = 0;
  constructor(private readonly lab: () => BridgedLab | undefined) {}

  readonly log = (_level: string, event: string, fields: Record<string, unknown> = {}) => {
    if (event !== 'backup-late') return;
    if (fields.primaryPauseMs === undefined || fields.backupBeyondGap !== undefined || fields.primaryBeyondGap !== undefined) this.uncovered++;
    this.lines.push(JSON.stringify(fields));
    const l = this.lab();
    for (const n of l ? [l.lab.backup, l.lab.primary] : []) {
      try {
        this.lines.push(`${n.netns}: ${execFileSync('ip', ['netns', 'exec', n.netns, 'ss', '-tin', 'sport', '= :80'], { timeout: 5000 }).toString().trim()}`);
      } catch (e) {
        this.lines.push(`${n.netns}: ss failed: ${(e as Error).message}`);
      }
    }
  };
}

async function rounds(l: BridgedLab, d: Diagnostics): Promise<Round[]> {
  const content = fixedSeedBytes(BYTES, 0x9ace);
  serveOnBoth(l.servers, FILE, content);
  const out: Round[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    const before = l.bridge.snapshot();
    const uncoveredBefore = d.uncovered;
    const files = Array.from({ length: DOWNLOADS }, (_, i) => join(l.lab.runDir, `paced-${r}-${i}`));
    const t0 = Date.now();
    // The client reads at full speed: only the server paces.
    await Promise.all(files.map((f) => runInAsync(l.lab.client.netns, 'curl', ['-sS', '--fail', '--max-time', '30', '-o', f, `http://${l.lab.serviceIpv4}/${FILE}?rate=1m`], 40_000)));
    const ms = Date.now() - t0;
    for (const f of files) expect(sha256(readFileSync(f))).toBe(sha256(content));
    const after = l.bridge.snapshot();
    const was = before.checkpoints.requested as Record<string, number>;
    out.push({
      ms,
      timeouts: after.checkpoints.requested.timeout - before.checkpoints.requested.timeout,
      uncovered: d.uncovered - uncoveredBefore,
      unmatched: Math.max(0, DOWNLOADS * BYTES - (after.bytesMatched - before.bytesMatched)),
      checkpoints: Object.fromEntries(Object.entries(after.checkpoints.requested as Record<string, number>).map(([k, v]) => [k, v - was[k]]).filter(([, v]) => v !== 0)),
    });
  }
  return out;
}

const describeRounds = (rs: Round[]) => rs.map((r) => `${r.ms} ms, ${r.timeouts} timeout(s) (${r.uncovered} not yet paced or behind a lost segment), ${r.unmatched} bytes not compared, checkpoints asked ${JSON.stringify(r.checkpoints)}`).join('; ');

describe('a server that paces its answers by the clock (nginx limit_rate, netns lab, root)', () => {
  let l: BridgedLab | undefined;
  afterAll(async () => {
    await l?.stop();
  });

  it(`${ROUNDS} rounds of ${DOWNLOADS} paced downloads: no timeout for a backup that trails a pacing primary, every byte compared`, async () => {
    requireRoot('paced-server.test.ts');
    const d = new Diagnostics(() => l);
    l = await startBridgedLab({ prefix: PREFIX, log: d.log });
    const rs = await rounds(l, d);
    const waits = l.bridge.pipeline.stageCounters().compare.paced_waits;
    console.log(`paced nginx (maxUnmatchedAgeMs ${l.bridge.pipeline.config.maxUnmatchedAgeMs}): ${describeRounds(rs)}; held frames let wait for a paced backup: ${waits}`
      + (d.lines.length ? `\nbackup-late:\n${d.lines.join('\n')}` : ''));
    // Paced for real: 3 MiB at 1 MB/s takes more than a second.
    for (const r of rs) expect(r.ms).toBeGreaterThan(900);
    // Two timeouts are not the paced rule's to prevent, and come rarely (3 runs in about 140 here): at a download's
    // start, the replicas' first chunks may differ by a segment before the primary has paused at all (the stream does
    // not count as paced yet, and a first pause looks like an answer's end); and a segment lost before the bridge
    // leaves a gap that only that replica's retransmission timer fills, seconds later, since holding output
    // stretches the round trips it measures (rto 2.9 s seen). One such timeout may cost one round of three; a
    // regression of the rule (1 to 6 timeouts a round) still fails.
    expect(waits).toBeGreaterThan(0);
    for (const r of rs) expect(r.timeouts).toBe(r.uncovered);
    const clean = rs.filter((r) => r.timeouts === 0);
    expect(clean.length).toBeGreaterThanOrEqual(ROUNDS - 1);
    expect(rs.every((r) => r.timeouts <= 1)).toBe(true);
    expect(clean.map((r) => [r.unmatched, r.checkpoints])).toEqual(clean.map(() => [0, {}]));
  });

  it('the primary dies while paced answers wait for a late backup: the backup takes over and every download arrives intact', async () => {
    const lab = l!;
    const p = lab.bridge.pipeline;
    const content = fixedSeedBytes(BYTES, 0x9ace);
    const before = p.failover.failovers;
    const files = Array.from({ length: DOWNLOADS }, (_, i) => join(lab.lab.runDir, `paced-failover-${i}`));
    const downloads = files.map((f) => runInAsync(lab.lab.client.netns, 'curl', ['-sS', '--fail', '--max-time', '30', '-o', f, `http://${lab.lab.serviceIpv4}/${FILE}?rate=1m`], 40_000));
    for (const d of downloads) d.catch(() => {}); // awaited below
    // After nginx's first burst, in its sleeps: output the backup has not said yet may be waiting.
    await delay(1200);
    const onWire = clientBytesReceived(lab.lab).filter((b) => b > 0 && b < BYTES).length;
    await lab.kill(lab.activeNode(), 'abrupt');
    await Promise.all(downloads);
    for (const f of files) expect(sha256(readFileSync(f))).toBe(sha256(content));
    const rec = p.failoverHistory.at(-1);
    console.log(`paced nginx, primary killed 1.2 s in: ${onWire} of ${DOWNLOADS} downloads on the wire; failover ${JSON.stringify({ cause: rec?.cause, flowsCarried: rec?.flowsCarried, discardedFrames: rec?.discardedFrames, backlogFrames: rec?.backlogFrames })}`);
    expect(onWire).toBe(DOWNLOADS);
    expect(p.failover.failovers).toBe(before + 1);
  });
});
