/**
 * `normalize.httpDate` through the whole pipeline: what the client receives,
 * whether a checkpoint is asked for, and the counter in the compare stage's
 * report, in status snapshots and in /metrics.
 */
import { BACKUP, PRIMARY } from '../../../lib/compare';
import { emptyAgentSnapshot, snapshotOf } from '../../../lib/control/snapshot';
import { renderMetrics } from '../../../lib/control/metrics';
import { C, P, B, fromVm, handshake, harness } from '../../support/pipeline-harness';

const response = (date: string) => `HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: ${date}\r\nContent-Length: 2\r\n\r\nok`;
const PRIMARY_DATE = 'Sun, 01 Mar 2026 12:00:00 GMT';

/** One response from each replica on an established connection; the backup's stamped `backupDate`. */
function exchange(httpDate: boolean, backupDate: string) {
  const h = harness({ normalize: { httpDate, httpDateToleranceMs: 2000 } });
  handshake(h);
  h.out.client.length = 0;
  const primaryFrame = fromVm({ seq: P + 1, ack: C + 1, flags: 'PA', payload: response(PRIMARY_DATE) });
  h.p.fromVm(PRIMARY, primaryFrame, 10);
  h.p.fromVm(BACKUP, fromVm({ seq: B + 1, ack: C + 1, flags: 'PA', payload: response(backupDate) }), 11);
  return { h, primaryFrame };
}

describe('HTTP Date values through the pipeline', () => {
  it('releases the primary\'s response unchanged and asks for no checkpoint when the dates are a second apart', () => {
    const { h, primaryFrame } = exchange(true, 'Sun, 01 Mar 2026 12:00:01 GMT');
    expect(h.out.checkpoints).toEqual([]);
    expect(h.out.client).toEqual([primaryFrame]);
    expect(h.p.stageCounters().compare).toMatchObject({ http_date_normalized: 1, http_date_rejected: 0, mismatches: 0 });
  });

  it('asks for a mismatch checkpoint and holds the response when the setting is off', () => {
    const { h } = exchange(false, 'Sun, 01 Mar 2026 12:00:01 GMT');
    expect(h.out.checkpoints.map((c) => c.reason)).toEqual(['mismatch']);
    expect(h.out.client).toEqual([]);
    expect(h.p.stageCounters().compare).toMatchObject({ http_date_normalized: 0, mismatches_data: 1 });
  });

  it('asks for a mismatch checkpoint when the dates are further apart than the tolerance, and counts the refusal', () => {
    const { h } = exchange(true, 'Sun, 01 Mar 2026 12:00:05 GMT');
    expect(h.out.checkpoints.map((c) => c.reason)).toEqual(['mismatch']);
    expect(h.p.stageCounters().compare).toMatchObject({ http_date_normalized: 0, http_date_rejected: 1, mismatches_data: 1 });
  });

  it('shows the count in the status snapshot and in /metrics', () => {
    const { h } = exchange(true, 'Sun, 01 Mar 2026 12:00:01 GMT');
    const snap = snapshotOf(h.p, { name: 't', startedMs: 0, nowMs: 1, ports: [], agent: emptyAgentSnapshot() });
    expect(snap.stages.compare.http_date_normalized).toBe(1);
    expect(renderMetrics(snap)).toContain('shadowvm_stage_events_total{stage="compare",counter="http_date_normalized"} 1');
  });
});
