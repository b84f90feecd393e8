import { renderMetrics, STAGE_LEVELS } from '../../../lib/control/metrics';
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
    expect(text).toContain('shadowvm_component_events_total{component="control_socket",counter="closedAbusive"} 1');
    expect(text).toContain('shadowvm_component_events_total{component="agent_link",counter="helloTimeouts"} 2');
  });

  it('says in status which port is which replica and what the last failover was', () => {
    const text = formatStatus(sampleSnapshot());
    expect(text).toContain('replicas: tap-a dead, tap-b promoted');
    expect(text).toMatch(/failovers: 1 \(0 refused, 1 waited for a checkpoint\).*last: carrier \(tap-a lost carrier\), tap-b promoted 7\.2 ms after detection, 12 flows carried/);
    expect(text).toContain('failover waiting: carrier, for the answer to checkpoint 8');
    expect(renderMetrics(sampleSnapshot())).toContain('shadowvm_failovers_deferred_total 1');
  });
});

describe('stage counters', () => {
  it('every counter every stage keeps reaches /metrics and the status snapshot', () => {
    const { ShadowPipeline, makePipelineConfig } = require('../../../lib/pipeline');
    const { snapshotOf, emptyAgentSnapshot } = require('../../../lib/control/snapshot');
    const { tcpFrame } = require('../../support/frames');
    const p = new ShadowPipeline(makePipelineConfig(), { toReplica: () => {}, toClient: () => {}, sendCheckpoint: () => {}, log: () => {} }, 0, true);
    p.fromClient(tcpFrame({ from: 'client', seq: 1, flags: 'S' }), 1);
    p.fromVm(0, tcpFrame({ from: 'vm', seq: 9, ack: 2, flags: 'SA' }), 2);
    p.fromVm(1, tcpFrame({ from: 'vm', seq: 99, ack: 2, flags: 'SA' }), 3);
    const snap = snapshotOf(p, { name: 't', startedMs: 0, nowMs: 1000, ports: [], agent: emptyAgentSnapshot() });
    const text = renderMetrics(snap);
    const stages = p.stageCounters();
    expect(Object.keys(stages).sort()).toEqual(['compare', 'failover', 'flow', 'ingress', 'release', 'replicate']);
    for (const [stage, counters] of Object.entries(stages)) {
      for (const [counter, value] of Object.entries(counters as Record<string, number>)) {
        const level = STAGE_LEVELS.has(counter);
        expect(text).toContain(level ? `shadowvm_stage_level{stage="${stage}",level="${counter}"} ${value}` : `shadowvm_stage_events_total{stage="${stage}",counter="${counter}"} ${value}`);
      }
    }
    expect(snap.stages.release.released_frames).toBe(1);
    expect(snap.flows.created).toBe(1);
  });
});
