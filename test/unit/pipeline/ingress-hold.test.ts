/**
 * Client frames held while a checkpoint runs are bounded (`ingressHold`):
 * beyond the bound a frame is dropped and counted (TCP retransmits it),
 * what was held reaches both replicas in order when the checkpoint ends,
 * however it ends, and the counts reach status.
 */
import { BACKUP, PRIMARY } from '../../../lib/compare';
import { emptyAgentSnapshot, snapshotOf } from '../../../lib/control/snapshot';
import { ShadowPipeline } from '../../../lib/pipeline';
import { B, C, P, SYN_OPTS, ackOf, fromClient, fromVm, handshake, harness, seqOf } from '../../support/pipeline-harness';

const status = (p: ShadowPipeline) => snapshotOf(p, { name: 'unit', startedMs: 0, nowMs: 0, ports: [], agent: emptyAgentSnapshot() });

/** Client data segments after the handshake: `n` of them, `size` bytes each. */
function clientSegments(n: number, size: number, from = 0): Buffer[] {
  return Array.from({ length: n }, (_, i) => fromClient({ seq: C + 1 + (from + i) * size, ack: P + 1, flags: 'PA', payload: 'x'.repeat(size) }));
}

describe('the ingress hold during a checkpoint', () => {
  it('drops and counts the frames beyond its frame bound, and sends the held ones to both replicas in order when the checkpoint is done', () => {
    const h = harness({ ingressHold: { frames: 3, bytes: 1 << 20 } });
    handshake(h);
    h.p.request('manual', undefined, 10);
    const [toPrimary, toBackup] = [h.out.primary.length, h.out.backup.length];
    const segments = clientSegments(5, 10);
    segments.forEach((s, i) => h.p.fromClient(s, 11 + i));
    expect([h.out.primary.length, h.out.backup.length]).toEqual([toPrimary, toBackup]);
    expect(h.p.stageCounters().ingress).toMatchObject({ held: 3, hold_dropped: 2, holding: 3 });
    expect(status(h.p).ingress).toEqual({ heldFrames: 3, holdDropped: 2 });

    h.p.checkpointDone(h.out.checkpoints[0].epoch, 20);
    expect(h.out.primary.slice(toPrimary)).toEqual(segments.slice(0, 3));
    expect(h.out.backup.slice(toBackup).map(seqOf)).toEqual(segments.slice(0, 3).map(seqOf));
    expect(h.p.stageCounters().ingress).toMatchObject({ held: 3, hold_dropped: 2, holding: 0 });
  });

  it('drops a frame that would pass its byte bound, and still holds a smaller one that fits', () => {
    const h = harness({ ingressHold: { frames: 100, bytes: 300 } });
    handshake(h);
    h.p.request('manual', undefined, 10);
    const toPrimary = h.out.primary.length;
    const [small] = clientSegments(1, 50);
    const [big] = clientSegments(1, 200, 1);
    const [tiny] = clientSegments(1, 10, 2);
    expect(small.length + big.length).toBeGreaterThan(300);
    expect(small.length + tiny.length).toBeLessThanOrEqual(300);
    h.p.fromClient(small, 11);
    h.p.fromClient(big, 12);
    h.p.fromClient(tiny, 13);
    expect(h.p.stageCounters().ingress).toMatchObject({ held: 2, hold_dropped: 1 });
    h.p.checkpointDone(h.out.checkpoints[0].epoch, 20);
    expect(h.out.primary.slice(toPrimary)).toEqual([small, tiny]);
  });

  it('sends what it held to the primary when the checkpoint fails; a stale backup (resync copy) gets none of it', () => {
    const h = harness({ ingressHold: { frames: 2, bytes: 1 << 20 } });
    handshake(h);
    h.p.request('manual', undefined, 10);
    const [toPrimary, toBackup] = [h.out.primary.length, h.out.backup.length];
    const segments = clientSegments(3, 8);
    segments.forEach((s, i) => h.p.fromClient(s, 11 + i));
    h.p.checkpointFailed(h.out.checkpoints[0].epoch, 'agent: copy failed', 20);
    expect(h.p.state).toBe('DEGRADED');
    expect(h.out.primary.slice(toPrimary)).toEqual(segments.slice(0, 2));
    expect(h.out.backup).toHaveLength(toBackup);
    expect(h.p.ingressHoldDropped).toBe(1);
  });

  it('with resync align sends what it held to both replicas when the checkpoint fails, the backup\'s copy translated', () => {
    const h = harness({ ingressHold: { frames: 2, bytes: 1 << 20 }, resync: 'align' });
    handshake(h);
    h.p.request('manual', undefined, 10);
    const [toPrimary, toBackup] = [h.out.primary.length, h.out.backup.length];
    const segments = clientSegments(3, 8);
    segments.forEach((s, i) => h.p.fromClient(s, 11 + i));
    h.p.checkpointFailed(h.out.checkpoints[0].epoch, 'agent: copy failed', 20);
    expect(h.p.state).toBe('DEGRADED');
    expect(h.out.primary.slice(toPrimary)).toEqual(segments.slice(0, 2));
    expect(h.out.backup.slice(toBackup).map(ackOf)).toEqual([B + 1, B + 1]);
    expect(h.p.ingressHoldDropped).toBe(1);
  });

  it('starts empty at the next checkpoint: its bound applies to each checkpoint, not to the run', () => {
    const h = harness({ ingressHold: { frames: 2, bytes: 1 << 20 } });
    handshake(h);
    h.p.request('manual', undefined, 10);
    clientSegments(2, 8).forEach((s, i) => h.p.fromClient(s, 11 + i));
    h.p.checkpointDone(h.out.checkpoints[0].epoch, 20);
    h.p.request('manual', undefined, 30);
    const toPrimary = h.out.primary.length;
    const again = clientSegments(2, 8, 2);
    again.forEach((s, i) => h.p.fromClient(s, 31 + i));
    h.p.checkpointDone(h.out.checkpoints[1].epoch, 40);
    expect(h.out.primary.slice(toPrimary)).toEqual(again);
    expect(h.p.stageCounters().ingress).toMatchObject({ held: 4, hold_dropped: 0 });
  });
});

describe('the per-flow hold until the backup\'s ISN is known', () => {
  it('keeps the newest 256 client frames for the backup, drops and counts the oldest, and never holds back the primary\'s copy', () => {
    const h = harness();
    h.p.fromClient(fromClient({ seq: C, flags: 'S', options: SYN_OPTS }), 1);
    h.p.fromVm(PRIMARY, fromVm({ seq: P, ack: C + 1, flags: 'SA', options: SYN_OPTS }), 2);
    const segments = clientSegments(258, 4);
    segments.forEach((s, i) => h.p.fromClient(s, 3 + i));
    expect(h.out.primary).toHaveLength(1 + 258);
    expect(h.out.backup).toHaveLength(1); // the SYN only: the ACKs need the backup's ISN
    expect(h.p.ingressHoldDropped).toBe(2);
    h.p.fromVm(BACKUP, fromVm({ seq: B, ack: C + 1, flags: 'SA', options: SYN_OPTS }), 400);
    const flushed = h.out.backup.slice(1);
    expect(flushed.map(seqOf)).toEqual(segments.slice(2).map(seqOf));
    expect(flushed.every((f) => ackOf(f) === B + 1)).toBe(true);
  });
});
