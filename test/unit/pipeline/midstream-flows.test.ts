/**
 * A TCP connection the bridge first sees without its SYN (it began before
 * the bridge started, or before a restart under traffic). With `resync:
 * align` the backup's sequence space is its own and only the SYNs tell it:
 * such a connection can never be compared, and before, every frame of it
 * disagreed and asked checkpoints until its client's budget ran out (the
 * restart test with the lab agent: 20-41 per restart). It goes on
 * unprotected from the start, counted. With `copy` the first checkpoint makes
 * the backup's sequence space the primary's, so it is compared.
 */
import { BACKUP, PRIMARY } from '../../../lib/compare';
import { B, C, P, fromClient, fromVm, harness } from '../../support/pipeline-harness';

const MS = 1000;
const piece = (isn: number, i: number) => fromVm({ seq: isn + 1 + i * 100, ack: C + 1, flags: 'PA', payload: 'x'.repeat(100) });

describe('a TCP connection first seen in the middle', () => {
  it('with resync align: unprotected from the start, its output unchecked, no checkpoint asked', () => {
    const h = harness({ resync: 'align', maxUnmatchedAgeMs: 100 });
    h.p.fromClient(fromClient({ seq: C + 1, ack: P + 1, flags: 'A' }), 1 * MS);
    for (let i = 0; i < 3; i++) {
      h.p.fromVm(PRIMARY, piece(P, i), (10 + i) * MS);
      h.p.fromVm(BACKUP, piece(B, i), (10 + i) * MS); // its own sequence space
    }
    for (let t = 20; t < 1500; t += 50) h.p.tick(t * MS);
    expect(h.out.client).toHaveLength(3);
    expect(h.out.checkpoints).toEqual([]);
    const flows = h.p.stageCounters().flow;
    expect([flows.midstream_unprotected, flows.unprotected]).toEqual([1, 1]);
    // The client's next frames go to the primary alone: the backup's copy of the connection is not fed.
    const toBackup = h.out.backup.length;
    h.p.fromClient(fromClient({ seq: C + 1, ack: P + 301, flags: 'A' }), 1600 * MS);
    expect(h.out.backup.length).toBe(toBackup);
  });

  it('with resync copy: compared, its output held until the backup has said the same', () => {
    const h = harness({ resync: 'copy', maxUnmatchedAgeMs: 100 });
    h.p.fromVm(PRIMARY, piece(P, 0), 10 * MS);
    expect(h.out.client).toHaveLength(0);
    h.p.fromVm(BACKUP, piece(P, 0), 11 * MS); // a copy of the primary: the same sequence space
    expect(h.out.client).toHaveLength(1);
    expect(h.p.stageCounters().flow.midstream_unprotected).toBe(0);
  });

  it('with resync align, a connection whose SYN the bridge saw is compared as ever', () => {
    const h = harness({ resync: 'align' });
    h.p.fromClient(fromClient({ seq: C, flags: 'S' }), 1 * MS);
    h.p.fromVm(PRIMARY, fromVm({ seq: P, ack: C + 1, flags: 'SA' }), 2 * MS);
    expect(h.out.client).toHaveLength(0); // held for the backup's SYN-ACK
    h.p.fromVm(BACKUP, fromVm({ seq: B, ack: C + 1, flags: 'SA' }), 3 * MS);
    expect(h.out.client).toHaveLength(1);
    expect(h.p.stageCounters().flow.midstream_unprotected).toBe(0);
  });
});
