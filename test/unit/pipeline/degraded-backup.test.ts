/**
 * What DEGRADED does with the backup's copy of client frames (issue 9):
 * with `resync: copy` the stale backup gets nothing (the next checkpoint
 * overwrites it whole); with `resync: align` it keeps serving, translated
 * into its own sequence space, so it never answers with resets.
 */
import { BACKUP, PRIMARY } from '../../../lib/compare';
import { B, C, P, ackOf, fromClient, fromVm, handshake, harness } from '../../support/pipeline-harness';

const REQUEST = 'GET / HTTP/1.1\r\n\r\n';

function exchange(h: ReturnType<typeof harness>, t: number) {
  h.p.fromClient(fromClient({ seq: C + 1, ack: P + 1, flags: 'PA', payload: REQUEST }), t);
  h.p.fromVm(PRIMARY, fromVm({ seq: P + 1, ack: C + 1 + REQUEST.length, flags: 'PA', payload: 'hello' }), t + 1);
  h.p.fromVm(BACKUP, fromVm({ seq: B + 1, ack: C + 1 + REQUEST.length, flags: 'PA', payload: 'hello' }), t + 2);
  h.p.fromClient(fromClient({ seq: C + 1 + REQUEST.length, ack: P + 6, flags: 'A' }), t + 3);
}

describe('the backup\'s copy of client frames while DEGRADED', () => {
  it('resync copy: the stale backup gets nothing, counted; the primary serves unchecked', () => {
    const h = harness({ resync: 'copy' }, false);
    expect(h.p.state).toBe('DEGRADED');
    handshake(h);
    exchange(h, 10);
    expect(h.out.backup).toHaveLength(0);
    expect(h.out.primary).toHaveLength(4);
    expect(h.out.client).toHaveLength(2); // SYN-ACK and the answer, unchecked
    expect(h.p.stageCounters().ingress.degraded_not_to_backup).toBe(4);
  });

  it('resync copy: once a checkpoint made the backup a copy, it gets every client frame again, in the primary\'s space', () => {
    const h = harness({ resync: 'copy' }, false);
    handshake(h);
    h.p.agentConnected(true, 100);
    const cp = h.out.checkpoints[h.out.checkpoints.length - 1];
    h.p.checkpointDone(cp.epoch, 200, 5);
    expect(h.p.state).toBe('COMPARING');
    h.p.fromClient(fromClient({ seq: C + 1, ack: P + 1, flags: 'PA', payload: REQUEST }), 300);
    expect(h.out.backup).toHaveLength(1);
    expect(ackOf(h.out.backup[0])).toBe(P + 1); // the copy shares the primary's sequence space
  });

  it('resync align: the backup keeps serving, every ACK translated into its own space (no resets provoked)', () => {
    const h = harness({ resync: 'align' }, false);
    expect(h.p.state).toBe('DEGRADED');
    handshake(h);
    exchange(h, 10);
    const acks = h.out.backup.map(ackOf);
    expect(acks).toEqual([0, B + 1, B + 1, B + 6]);
    expect(h.p.stageCounters().ingress.degraded_not_to_backup).toBe(0);
  });

  it('resync align: client frames that arrive before the backup\'s SYN-ACK wait for it, then go translated', () => {
    const h = harness({ resync: 'align' }, false);
    h.p.fromClient(fromClient({ seq: C, flags: 'S' }), 1);
    h.p.fromVm(PRIMARY, fromVm({ seq: P, ack: C + 1, flags: 'SA' }), 2);
    h.p.fromClient(fromClient({ seq: C + 1, ack: P + 1, flags: 'A' }), 3);
    expect(h.out.backup).toHaveLength(1); // the SYN; the ACK waits for the backup's origin
    h.p.fromVm(BACKUP, fromVm({ seq: B, ack: C + 1, flags: 'SA' }), 4);
    expect(h.out.backup.map(ackOf)).toEqual([0, B + 1]);
  });
});
