/**
 * Client TCP segments that no connection accepts must not make the replicas
 * differ: a hostile client would otherwise force checkpoints at will.
 */
import { BACKUP, PRIMARY } from '../../../lib/compare';
import { badTcpFlags, STRAY_WINDOW } from '../../../lib/pipeline/ingress-stage';
import { MAX_NON_IP_FLOWS } from '../../../lib/pipeline/flows';
import { makePipelineConfig } from '../../../lib/pipeline';
import { tcpFlags } from '../../support/frames';
import { B, C, P, SYN_OPTS, ackOf, fromClient, fromVm, handshake, harness, seqOf } from '../../support/pipeline-harness';

const ingress = (h: ReturnType<typeof harness>) => h.p.stageCounters().ingress;
const compare = (h: ReturnType<typeof harness>) => h.p.stageCounters().compare;

describe('badTcpFlags', () => {
  it.each(['SF', 'SR', 'SRA', 'SFA', '', 'F', 'P', 'FPU', 'U'])('calls %j a combination no TCP accepts', (f) => {
    expect(badTcpFlags(tcpFlags(f === '' ? 0 : f))).toBe(true);
  });
  it.each(['S', 'SA', 'A', 'PA', 'FA', 'R', 'RA', 'SEC'])('lets %j through', (f) => {
    expect(badTcpFlags(tcpFlags(f))).toBe(false);
  });
});

describe('stray client segments', () => {
  it('sends a segment far outside the window to the primary alone, and its challenge ACK out without a checkpoint', () => {
    const h = harness();
    handshake(h);
    const [np, nb, nc] = [h.out.primary.length, h.out.backup.length, h.out.client.length];
    h.p.fromClient(fromClient({ seq: C + 1 + STRAY_WINDOW + 4096, ack: P + 1, flags: 'PA', payload: 'junk' }), 10);
    expect(h.out.primary).toHaveLength(np + 1);
    expect(h.out.backup).toHaveLength(nb);
    h.p.fromVm(PRIMARY, fromVm({ seq: P + 1, ack: C + 1, flags: 'A' }), 11);
    expect(h.out.client).toHaveLength(nc + 1);
    expect(ackOf(h.out.client[nc])).toBe(C + 1);
    expect(h.out.checkpoints).toHaveLength(0);
    expect(ingress(h).stray_out_of_window).toBe(1);
    expect(h.logs.filter((e) => e === 'stray-client-segment')).toHaveLength(1);
  });

  it('drops an ACK of bytes the primary never sent (a backup ahead, or a primary ahead of the bridge, would take it)', () => {
    const h = harness();
    handshake(h);
    h.p.fromVm(PRIMARY, fromVm({ seq: P + 1, ack: C + 1, flags: 'PA', payload: 'hello' }), 5);
    h.p.fromVm(BACKUP, fromVm({ seq: B + 1, ack: C + 1, flags: 'PA', payload: 'hello world' }), 6);
    const [np, nb] = [h.out.primary.length, h.out.backup.length];
    // The backup has sent 11 bytes, the primary 5: an ACK of 11 is one no real client can send yet.
    h.p.fromClient(fromClient({ seq: C + 1, ack: P + 12, flags: 'PA', payload: 'junk' }), 7);
    expect(h.out.backup).toHaveLength(nb);
    expect(h.out.primary).toHaveLength(np);
    expect(ingress(h).stray_ack_unsent).toBe(1);
    // An ACK of what the primary did send is the client's own: both get it, the backup's translated.
    h.p.fromClient(fromClient({ seq: C + 1, ack: P + 6, flags: 'A' }), 8);
    expect(h.out.backup).toHaveLength(nb + 1);
    expect(ackOf(h.out.backup[nb])).toBe(B + 6);
    expect(h.out.checkpoints).toHaveLength(0);
  });

  it('takes the client\'s ACK of primary output a checkpoint released past a gap (a primary frame its ring dropped), and compares again past it', () => {
    const h = harness({ resync: 'align' });
    handshake(h);
    const seg = (side: 0 | 1, i: number, t: number) =>
      h.p.fromVm(side, fromVm({ seq: (side === PRIMARY ? P : B) + 1 + i * 1000, ack: C + 1, flags: 'A', payload: Buffer.alloc(1000, 'abcd'[i]) }), t);
    // The primary says 0, (1 lost in the bridge's ring), 2, 3; the backup only 0: the primary's contiguous end stays at 1000.
    seg(PRIMARY, 0, 10); seg(PRIMARY, 2, 11); seg(PRIMARY, 3, 12);
    seg(BACKUP, 0, 13);
    // Its held frames wait past the limit: a timeout checkpoint, which releases them all.
    h.p.tick(200_000);
    expect(h.out.checkpoints.map((c) => c.reason)).toEqual(['timeout']);
    h.p.checkpointDone(h.out.checkpoints[0].epoch, 210_000);
    // The primary resends the lost segment; the client, with everything now, acknowledges all of it.
    seg(PRIMARY, 1, 220_000);
    const [np, nb] = [h.out.primary.length, h.out.backup.length];
    h.p.fromClient(fromClient({ seq: C + 1, ack: P + 4001, flags: 'A' }), 230_000);
    expect(ingress(h).stray_ack_unsent).toBe(0);
    expect(h.out.primary).toHaveLength(np + 1);
    expect(h.out.backup).toHaveLength(nb + 1);
    // Comparison goes on from past the gap: the next segment from both matches and is released, no checkpoint.
    const nc = h.out.client.length;
    seg(BACKUP, 1, 231_000); seg(BACKUP, 2, 231_001); seg(BACKUP, 3, 231_002);
    seg(PRIMARY, 4, 232_000); seg(BACKUP, 4, 232_001);
    expect(h.out.client.length).toBe(nc + 1);
    expect(seqOf(h.out.client[nc])).toBe(P + 4001);
    expect(h.out.checkpoints).toHaveLength(1);
  });

  it('does not judge ACKs on a connection whose output went unfollowed while the bridge was DEGRADED', () => {
    const h = harness({ resync: 'copy' });
    handshake(h);
    h.p.agentConnected(false, 100);
    expect(h.p.state).toBe('DEGRADED');
    // The primary's 1,000 bytes go out unchecked; the bridge does not follow them.
    h.p.fromVm(PRIMARY, fromVm({ seq: P + 1, ack: C + 1, flags: 'PA', payload: 'x'.repeat(1000) }), 200);
    h.p.agentConnected(true, 300);
    const cp = h.out.checkpoints[h.out.checkpoints.length - 1];
    h.p.checkpointDone(cp.epoch, 400, 5);
    expect(h.p.state).toBe('COMPARING');
    const np = h.out.primary.length;
    h.p.fromClient(fromClient({ seq: C + 1, ack: P + 1001, flags: 'A' }), 500);
    expect(h.out.primary).toHaveLength(np + 1);
    expect(ingress(h).stray_ack_unsent).toBe(0);
  });

  it('drops segments with flags no TCP accepts, in a connection or not, and logs the first', () => {
    const h = harness();
    handshake(h);
    const [np, nb] = [h.out.primary.length, h.out.backup.length];
    h.p.fromClient(fromClient({ seq: C + 1, ack: P + 1, flags: 'SF' }), 10);
    h.p.fromClient(fromClient({ seq: C + 1, ack: 0, flags: 0 }), 11);
    h.p.fromClient(fromClient({ sport: 55555, seq: 7, flags: 'FPU' }), 12);
    expect(h.out.primary).toHaveLength(np);
    expect(h.out.backup).toHaveLength(nb);
    expect(ingress(h).stray_bad_flags).toBe(3);
    expect(h.logs.filter((e) => e === 'stray-client-segment')).toHaveLength(1);
    expect(h.p.policyActions['client-bad-flags/drop']).toBe(3);
  });

  it('releases the resets that answer strays on an unknown 4-tuple from the primary, uncompared, however many', () => {
    const h = harness();
    for (const [i, seq] of [[0, 77], [1, 123_456]] as const) {
      h.p.fromClient(fromClient({ sport: 60001, seq, ack: 999 + i, flags: 'A' }), 10 + i);
      // No connection: each replica answers with a reset derived from the client's segment.
      h.p.fromVm(PRIMARY, fromVm({ dport: 60001, seq: 999 + i, flags: 'R' }), 20 + i);
      h.p.fromVm(BACKUP, fromVm({ dport: 60001, seq: 999 + i, flags: 'R' }), 21 + i);
    }
    expect(h.out.primary).toHaveLength(2);
    expect(h.out.backup).toHaveLength(2);
    expect(h.out.client.map(seqOf)).toEqual([999, 1000]);
    expect(h.out.checkpoints).toHaveLength(0);
    expect(ingress(h).stray_no_flow).toBe(2);
    expect(compare(h).stateless_resets).toBe(2);
    expect(h.p.flows.size).toBe(0);
  });

  it('releases the primary\'s reset to a SYN for a closed port at once', () => {
    const h = harness();
    h.p.fromClient(fromClient({ dport: 81, seq: C, flags: 'S' }), 1);
    h.p.fromVm(PRIMARY, fromVm({ sport: 81, seq: 0, ack: C + 1, flags: 'RA' }), 2);
    expect(h.out.client).toHaveLength(1);
    h.p.fromVm(BACKUP, fromVm({ sport: 81, seq: 0, ack: C + 1, flags: 'RA' }), 3);
    expect(h.out.client).toHaveLength(1);
    expect(h.out.checkpoints).toHaveLength(0);
  });

  it('still compares a reset on a connection both replicas opened', () => {
    const h = harness();
    handshake(h);
    const nc = h.out.client.length;
    h.p.fromVm(PRIMARY, fromVm({ seq: P + 1, ack: C + 1, flags: 'RA' }), 10);
    expect(h.out.client).toHaveLength(nc);
    h.p.fromVm(BACKUP, fromVm({ seq: B + 1, ack: C + 1, flags: 'RA' }), 11);
    expect(h.out.client).toHaveLength(nc + 1);
    expect(compare(h).stateless_resets).toBe(0);
  });

  it('sends strays to both under policy both, and to nobody under drop', () => {
    for (const [strayFromClient, toBackup, toPrimary] of [['both', 1, 1], ['drop', 0, 0]] as const) {
      const h = harness({ policy: { ...makePipelineConfig().policy, strayFromClient } });
      handshake(h);
      const [np, nb] = [h.out.primary.length, h.out.backup.length];
      h.p.fromClient(fromClient({ seq: C + 1 - STRAY_WINDOW - 10, ack: P + 1, flags: 'A' }), 10);
      expect(h.out.primary.length - np).toBe(toPrimary);
      expect(h.out.backup.length - nb).toBe(toBackup);
      expect(ingress(h).stray_out_of_window).toBe(1);
    }
  });
});

describe('non-IP frames compared as flows', () => {
  it('keeps at most MAX_NON_IP_FLOWS of them, however many ethertypes a VM invents', () => {
    const h = harness({ policy: { ...makePipelineConfig().policy, otherEtherTypes: 'compare' } });
    for (let t = 0; t < 2000; t++) {
      const frame = Buffer.alloc(60);
      frame.writeUInt16BE(0x9000 + t, 12);
      h.p.fromVm(PRIMARY, frame, 10 + t);
      h.p.fromVm(BACKUP, frame, 10 + t);
    }
    expect(h.p.flowRegistry.nonIp.size).toBe(MAX_NON_IP_FLOWS + 1);
    expect(h.p.flowRegistry.nonIp.has('non-ip other')).toBe(true);
    expect(h.out.checkpoints).toHaveLength(0);
  });
});

describe('the new-connection budget (policy.newFlowsPerSecond)', () => {
  const syn = (sport: number) => fromClient({ sport, seq: C, flags: 'S', options: SYN_OPTS });
  const policy = (n: number) => ({ ...makePipelineConfig().policy, newFlowsPerSecond: n });

  it('admits one second of SYNs at once, drops and counts the rest, and logs once per episode', () => {
    const h = harness({ policy: policy(3) });
    for (let i = 0; i < 5; i++) h.p.fromClient(syn(40000 + i), 1000 + i);
    expect(h.out.primary).toHaveLength(3);
    expect(h.out.backup).toHaveLength(3);
    expect(ingress(h).syn_over_budget).toBe(2);
    expect(h.logs.filter((e) => e === 'new-flow-budget')).toHaveLength(1);
    expect(h.p.stageCounters().flow.created).toBe(3);
  });

  it('lets a SYN of a flow it already admitted through (a retransmission costs no token)', () => {
    const h = harness({ policy: policy(1) });
    h.p.fromClient(syn(40000), 1000);
    h.p.fromClient(syn(40000), 2000);
    h.p.fromClient(syn(40001), 3000);
    expect(h.out.primary).toHaveLength(2);
    expect(ingress(h).syn_over_budget).toBe(1);
  });

  it('refills with frame time: a refused client gets in when it tries again a second later', () => {
    const h = harness({ policy: policy(2) });
    for (let i = 0; i < 3; i++) h.p.fromClient(syn(40000 + i), 1000);
    expect(ingress(h).syn_over_budget).toBe(1);
    h.p.fromClient(syn(40002), 1000 + 600_000);
    expect(h.out.primary).toHaveLength(3);
    expect(ingress(h).syn_over_budget).toBe(1);
    // The bucket never holds more than one second's worth, however long it was idle.
    for (let i = 0; i < 4; i++) h.p.fromClient(syn(41000 + i), 60_000_000);
    expect(ingress(h).syn_over_budget).toBe(3);
  });

  it('does not limit at 0, nor SYN-ACKs, nor segments of open connections', () => {
    const h = harness({ policy: policy(0) });
    for (let i = 0; i < 50; i++) h.p.fromClient(syn(40000 + i), 1000);
    expect(h.out.primary).toHaveLength(50);
    const g = harness({ policy: policy(1) });
    handshake(g);
    const np = g.out.primary.length;
    for (let i = 0; i < 5; i++) g.p.fromClient(fromClient({ sport: 42000 + i, seq: C, ack: P + 1, flags: 'SA' }), 10 + i);
    g.p.fromClient(fromClient({ seq: C + 1, ack: P + 1, flags: 'PA', payload: 'GET / HTTP/1.1\r\n\r\n' }), 20);
    expect(g.out.primary).toHaveLength(np + 6);
    expect(ingress(g).syn_over_budget).toBe(0);
  });
});

describe('the stray budget (policy.straysPerSecond)', () => {
  const policy = (n: number) => ({ ...makePipelineConfig().policy, straysPerSecond: n });
  // A segment of no connection the bridge knows: no flow, no SYN.
  const noFlow = (sport: number) => fromClient({ sport, seq: 77, ack: 88, flags: 'A', payload: 'junk' });

  it('forwards one second of strays at once, then drops and counts the rest, logging once', () => {
    const h = harness({ policy: policy(3) });
    for (let i = 0; i < 5; i++) h.p.fromClient(noFlow(50000 + i), 1000 + i);
    expect(h.out.primary).toHaveLength(3);
    expect(h.out.backup).toHaveLength(3);
    expect(ingress(h)).toMatchObject({ strays_over_budget: 2, stray_no_flow: 3 });
    expect(h.p.policyActions['client-no-flow/drop-over-budget']).toBe(2);
    expect(h.logs.filter((e) => e === 'stray-budget')).toHaveLength(1);
  });

  it('spends the same budget on out-of-window segments of an open connection, never on its own segments', () => {
    const h = harness({ policy: policy(1) });
    handshake(h);
    const np = h.out.primary.length;
    // Far outside the window: for the primary alone, while the budget lasts.
    h.p.fromClient(fromClient({ seq: C + 1 + 10 * STRAY_WINDOW, ack: P + 1, flags: 'A', payload: 'x' }), 10);
    h.p.fromClient(fromClient({ seq: C + 1 + 11 * STRAY_WINDOW, ack: P + 1, flags: 'A', payload: 'y' }), 11);
    expect(h.out.primary).toHaveLength(np + 1);
    expect(ingress(h).strays_over_budget).toBe(1);
    // The connection's own data is never limited.
    for (let i = 0; i < 3; i++) h.p.fromClient(fromClient({ seq: C + 1 + i, ack: P + 1, flags: 'PA', payload: 'a' }), 20 + i);
    expect(h.out.primary).toHaveLength(np + 4);
    expect(ingress(h).strays_over_budget).toBe(1);
  });

  it('does not limit at 0', () => {
    const h = harness({ policy: policy(0) });
    for (let i = 0; i < 50; i++) h.p.fromClient(noFlow(50000 + i), 1000);
    expect(h.out.primary).toHaveLength(50);
    expect(ingress(h).strays_over_budget).toBe(0);
  });
});
