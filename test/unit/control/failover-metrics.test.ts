import { renderMetrics } from '../../../lib/control/metrics';
import { formatStatus } from '../../../lib/control/status-format';
import { sampleSnapshot } from './sample-snapshot';

describe('failover in metrics and status', () => {
  it('exports roles, failovers and every stage counter in one family', () => {
    const text = renderMetrics(sampleSnapshot());
    expect(text).toContain('shadowvm_replica_role{port="tap-b",role="promoted"} 1');
    expect(text).toContain('shadowvm_replica_role{port="tap-a",role="primary"} 0');
    expect(text).toContain('shadowvm_failovers_total 1');
    expect(text).toContain('shadowvm_failover_last_promotion_seconds 0.0072');
    expect(text).toContain('shadowvm_stage_events_total{stage="compare",counter="out_of_order_dropped"} 5');
    expect(text).toContain('shadowvm_stage_events_total{stage="failover",counter="duplicatesDropped"} 2');
  });

  it('says in status which port is which replica and what the last failover was', () => {
    const text = formatStatus(sampleSnapshot());
    expect(text).toContain('replicas: tap-a dead, tap-b promoted');
    expect(text).toMatch(/failovers: 1 \(0 refused\).*last: carrier \(tap-a lost carrier\), tap-b promoted 7\.2 ms after detection, 12 flows carried/);
  });
});
