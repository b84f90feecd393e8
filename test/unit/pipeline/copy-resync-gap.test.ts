/**
 * A copying checkpoint (resync copy) restarts comparison past everything the
 * primary has sent, gaps included. The comparator's contiguous end of the
 * primary can lag what the primary sent: a frame its ring had no room for,
 * or output forwarded unchecked while DEGRADED (a bridge restarted under
 * traffic takes its flows up in the middle, and the agent's first copy comes
 * only once it has connected). Restarted at that stale end, comparison waited
 * forever for the bytes in the gap: each new segment of the flow was held
 * until its `timeout` checkpoint, which restarted at the same stale end again,
 * about one checkpoint a second for the connection's whole life (seen in
 * run-qemu-agent.test.ts: 22 in 23 s after a restart).
 */
import { BACKUP, PRIMARY } from '../../../lib/compare';
import { C, P, fromClient, fromVm, handshake, harness } from '../../support/pipeline-harness';

const MS = 1000;
const seg = (i: number) => fromVm({ seq: P + 1 + i * 100, ack: C + 1, flags: 'PA', payload: String.fromCharCode(97 + (i % 26)).repeat(100) });
const timeouts = (h: ReturnType<typeof harness>) => h.out.checkpoints.filter((c) => c.reason === 'timeout').length;

/** Ticks every 50 ms over [from, to) ms, answering each checkpoint 5 ms after it was asked. */
function run(h: ReturnType<typeof harness>, from: number, to: number, each: (t: number) => void): void {
  for (let t = from; t < to; t += 50) {
    each(t);
    h.p.tick(t * MS);
    const asked = h.out.checkpoints.length;
    if (asked > 0 && h.p.replicator.state === 'CHECKPOINTING') h.p.checkpointDone(h.out.checkpoints[asked - 1].epoch, (t + 5) * MS, 5);
  }
}

describe('a copying checkpoint after the primary\'s contiguous end fell behind what it sent', () => {
  it('restarts comparison past the gap: the flow is compared again, not timed out at every checkpoint', () => {
    const h = harness({ resync: 'copy', maxUnmatchedAgeMs: 100 });
    handshake(h);
    h.p.fromVm(PRIMARY, seg(0), 10 * MS);
    h.p.fromVm(BACKUP, seg(0), 11 * MS);
    // The primary's piece 1 never reaches the bridge (its ring was full); piece 2 does.
    h.p.fromVm(PRIMARY, seg(2), 20 * MS);
    h.p.fromVm(BACKUP, seg(1), 21 * MS);
    h.p.fromVm(BACKUP, seg(2), 22 * MS);
    // Nothing fills the gap: one timeout, and the copy that follows.
    run(h, 50, 1400, () => {});
    expect(timeouts(h)).toBe(1);
    const client = h.out.client.length;
    // From the copy on, both say the same, piece by piece, and the client acknowledges it.
    let i = 3;
    run(h, 1400, 4000, (t) => {
      h.p.fromVm(PRIMARY, seg(i), t * MS);
      h.p.fromVm(BACKUP, seg(i), (t + 1) * MS);
      h.p.fromClient(fromClient({ seq: C + 1, ack: P + 1 + (i + 1) * 100, flags: 'A' }), (t + 2) * MS);
      i++;
    });
    // Every piece went to the client once matched, with no checkpoint more.
    expect(timeouts(h)).toBe(1);
    expect(h.out.client.length - client).toBe(i - 3);
    expect(h.logged.filter((l) => l.event === 'backup-late')).toHaveLength(1);
  });
});
