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
 * checkpoint, and every byte compared. (Before, 1 to 6 timeouts a round, up to a fifth of the bytes
 * released uncompared.) Then the primary dies in the middle of paced
 * downloads: the backup, behind or not, takes over and they arrive intact.
 */
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

interface Round { ms: number; timeouts: number; unmatched: number }

async function rounds(l: BridgedLab): Promise<Round[]> {
  const content = fixedSeedBytes(BYTES, 0x9ace);
  serveOnBoth(l.servers, FILE, content);
  const out: Round[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    const before = l.bridge.snapshot();
    const files = Array.from({ length: DOWNLOADS }, (_, i) => join(l.lab.runDir, `paced-${r}-${i}`));
    const t0 = Date.now();
    // The client reads at full speed: only the server paces.
    await Promise.all(files.map((f) => runInAsync(l.lab.client.netns, 'curl', ['-sS', '--fail', '--max-time', '30', '-o', f, `http://${l.lab.serviceIpv4}/${FILE}?rate=1m`], 40_000)));
    const ms = Date.now() - t0;
    for (const f of files) expect(sha256(readFileSync(f))).toBe(sha256(content));
    const after = l.bridge.snapshot();
    out.push({
      ms,
      timeouts: after.checkpoints.requested.timeout - before.checkpoints.requested.timeout,
      unmatched: Math.max(0, DOWNLOADS * BYTES - (after.bytesMatched - before.bytesMatched)),
    });
  }
  return out;
}

const describeRounds = (rs: Round[]) => rs.map((r) => `${r.ms} ms, ${r.timeouts} timeout(s), ${r.unmatched} bytes not compared`).join('; ');

describe('a server that paces its answers by the clock (nginx limit_rate, netns lab, root)', () => {
  let l: BridgedLab | undefined;
  afterAll(async () => {
    await l?.stop();
  });

  it(`${ROUNDS} rounds of ${DOWNLOADS} paced downloads: no timeout checkpoint, every byte compared`, async () => {
    requireRoot('paced-server.test.ts');
    // Why a timeout came, if one does: its backup-late lines.
    const late: string[] = [];
    l = await startBridgedLab({ prefix: PREFIX, log: (_level, event, fields) => { if (event === 'backup-late') late.push(JSON.stringify(fields)); } });
    const rs = await rounds(l);
    const waits = l.bridge.pipeline.stageCounters().compare.paced_waits;
    console.log(`paced nginx (maxUnmatchedAgeMs ${l.bridge.pipeline.config.maxUnmatchedAgeMs}): ${describeRounds(rs)}; held frames let wait for a paced backup: ${waits}`
      + (late.length ? `\nbackup-late:\n${late.join('\n')}` : ''));
    // Paced for real: 3 MiB at 1 MB/s takes more than a second.
    for (const r of rs) expect(r.ms).toBeGreaterThan(900);
    expect(rs.map((r) => [r.timeouts, r.unmatched])).toEqual(rs.map(() => [0, 0]));
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
