/**
 * Idle flows are forgotten: a half-open connection (a client SYN and nothing
 * after it, whatever the replicas answered) after `halfOpenIdleMs`, an
 * established one only after `tcpIdleMs`.
 */
import { PRIMARY, BACKUP } from '../../../lib/compare';
import { C, P, B, SYN_OPTS, fromClient, fromVm, handshake, harness } from '../../support/pipeline-harness';

const S = 1_000_000;

describe('flow expiry', () => {
  it('forgets a half-open connection after halfOpenIdleMs, and keeps an established one', () => {
    const h = harness({ halfOpenIdleMs: 30_000, tcpIdleMs: 3600_000 });
    handshake(h, 1); // sport 40000 (the default): established
    h.p.fromClient(fromClient({ sport: 40001, seq: C, flags: 'S', options: SYN_OPTS }), 10);
    h.p.fromVm(PRIMARY, fromVm({ dport: 40001, seq: P, ack: C + 1, flags: 'SA', options: SYN_OPTS }), 11);
    h.p.fromVm(BACKUP, fromVm({ dport: 40001, seq: B, ack: C + 1, flags: 'SA', options: SYN_OPTS }), 12);
    expect(h.p.flows.size).toBe(2);
    h.p.tick(29 * S);
    expect(h.p.flows.size).toBe(2);
    h.p.tick(32 * S);
    expect(h.p.flows.size).toBe(1);
    const left = [...h.p.flows.entries()].map((e) => e.state.name);
    expect(left).toEqual([expect.stringContaining(':40000 ')]);
  });

  it('counts a retransmitted SYN as activity', () => {
    const h = harness({ halfOpenIdleMs: 30_000 });
    h.p.fromClient(fromClient({ seq: C, flags: 'S', options: SYN_OPTS }), 1);
    h.p.tick(20 * S);
    h.p.fromClient(fromClient({ seq: C, flags: 'S', options: SYN_OPTS }), 20 * S);
    h.p.tick(40 * S);
    expect(h.p.flows.size).toBe(1);
    h.p.tick(52 * S);
    expect(h.p.flows.size).toBe(0);
  });
});
