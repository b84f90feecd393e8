/**
 * Failover in the pipeline: roles change, the dead primary's unconfirmed
 * output is dropped, the promoted backup's backlog goes out at once and its
 * output is translated into the spaces the client knows.
 */
import { ShadowPipeline, makePipelineConfig, PipelineConfig, StageEvent } from '../../../lib/pipeline';
import { CheckpointRequest } from '../../../lib/replicate';
import { decodeFrame } from '../../../lib/packet/frame';
import { readTcpOptions, TcpOptions } from '../../../lib/packet/tcp-options';
import { l4ChecksumIsValid, tcpFrame, udpFrame, TcpSpec } from '../../support/frames';
import type { SlotId } from '../../../lib/failover/roles';

const C = 1000; // client ISN
const P = 5000; // primary ISN
const B = 900_000; // backup ISN
const SYN_OPTS = { mss: 1460, ws: 7, sackOk: true };
const A = 0, Bk = 1; // port slots: a starts as primary, b as backup

function harness(partial: Partial<PipelineConfig> = {}) {
  const out = { a: [] as Buffer[], b: [] as Buffer[], client: [] as Buffer[], checkpoints: [] as CheckpointRequest[], reprotects: [] as CheckpointRequest[], events: [] as StageEvent[] };
  const logs: { event: string; fields: Record<string, unknown> }[] = [];
  const p = new ShadowPipeline(makePipelineConfig({ resync: 'align', ...partial }), {
    toReplica: (slot, f) => (slot === A ? out.a : out.b).push(Buffer.from(f)),
    toClient: (f) => out.client.push(Buffer.from(f)),
    sendCheckpoint: (r) => out.checkpoints.push(r),
    sendReprotect: (r) => out.reprotects.push(r),
    event: (ev) => out.events.push(ev),
    log: (_l, event, fields) => logs.push({ event, fields }),
  }, 0, true, 100_000, ['a', 'b']);
  return { p, out, logs };
}

const fromClient = (s: TcpSpec) => tcpFrame({ from: 'client', ...s });
const fromVm = (s: TcpSpec) => tcpFrame({ from: 'vm', ...s });
const seqOf = (f: Buffer) => f.readUInt32BE(14 + 20 + 4);
const ackOf = (f: Buffer) => f.readUInt32BE(14 + 20 + 8);
const flagsOf = (f: Buffer) => f[14 + 20 + 13];
const payloadOf = (f: Buffer) => { const d = decodeFrame(f); return Buffer.from(d.payload()); };
const tsvalOf = (f: Buffer) => {
  const d = decodeFrame(f);
  const o = new TcpOptions();
  readTcpOptions(d, o);
  return o.tsOffset >= 0 ? d.dv.getUint32(o.tsOffset) : -1;
};
const bytes = (n: number, fill: string) => Buffer.alloc(n, fill);

/** An established connection; primary TS base 7000, backup 99000. */
function handshake(h: ReturnType<typeof harness>, sport = 40000, t = 1) {
  h.p.fromClient(fromClient({ sport, seq: C, flags: 'S', options: { ...SYN_OPTS, ts: [111, 0] } }), t);
  h.p.fromVm(A, fromVm({ dport: sport, seq: P, ack: C + 1, flags: 'SA', options: { ...SYN_OPTS, ts: [7000, 111] } }), t + 1);
  h.p.fromVm(Bk, fromVm({ dport: sport, seq: B, ack: C + 1, flags: 'SA', options: { ...SYN_OPTS, ts: [99000, 111] } }), t + 2);
  h.p.fromClient(fromClient({ sport, seq: C + 1, ack: P + 1, flags: 'A', options: { ts: [112, 7000] } }), t + 3);
}

describe('failover', () => {
  it('sends the promoted backup\'s backlog beyond the released point at once, in the client\'s sequence and timestamp spaces', () => {
    const h = harness();
    handshake(h);
    h.p.fromVm(A, fromVm({ seq: P + 1, ack: C + 1, payload: bytes(1000, 'x'), options: { ts: [7010, 112] } }), 10);
    h.p.fromVm(Bk, fromVm({ seq: B + 1, ack: C + 1, payload: bytes(1000, 'x'), options: { ts: [99010, 112] } }), 11);
    // The backup runs ahead of the primary by 1000 bytes, then the primary dies.
    h.p.fromVm(Bk, fromVm({ seq: B + 1001, ack: C + 1, payload: bytes(1000, 'y'), options: { ts: [99011, 112] } }), 12);
    const before = h.out.client.length;
    expect(h.p.failoverNow('agent', 'test', 20, 15)).toBe('promoted');
    expect(h.p.state).toBe('FAILED_OVER');
    const sent = h.out.client.slice(before);
    expect(sent).toHaveLength(1);
    expect(seqOf(sent[0])).toBe(P + 1001);
    expect(tsvalOf(sent[0])).toBe(7011);
    expect(payloadOf(sent[0]).equals(bytes(1000, 'y'))).toBe(true);
    expect(l4ChecksumIsValid(sent[0])).toBe(true);
    expect(h.p.replicas.describe()).toBe('a=dead b=promoted');
    expect(h.p.failoverHistory[0]).toMatchObject({ cause: 'agent', survivor: 'b', flowsCarried: 1, backlogFrames: 1, detectedUs: 15, promotedUs: 20 });
  });

  it('never sends again a byte the client acknowledged: an overlapping segment is cut', () => {
    const h = harness();
    handshake(h);
    h.p.fromVm(Bk, fromVm({ seq: B + 1, ack: C + 1, payload: Buffer.concat([bytes(500, 'a'), bytes(500, 'b')]) }), 10);
    h.p.fromVm(A, fromVm({ seq: P + 1, ack: C + 1, payload: bytes(500, 'a') }), 11); // released: the backup said it
    const before = h.out.client.length;
    expect(before).toBe(2); // SYN-ACK and the first 500 bytes
    h.p.failoverNow('carrier', 'test', 20);
    const sent = h.out.client.slice(before);
    expect(sent).toHaveLength(1);
    expect(seqOf(sent[0])).toBe(P + 501);
    expect(payloadOf(sent[0]).equals(bytes(500, 'b'))).toBe(true);
    expect(l4ChecksumIsValid(sent[0])).toBe(true);
    // The client acknowledges the first 500 bytes: the survivor's resend of them is dropped; the rest is cut and translated.
    h.p.fromClient(fromClient({ seq: C + 1, ack: P + 501, flags: 'A' }), 29);
    h.p.fromVm(Bk, fromVm({ seq: B + 1, ack: C + 1, payload: bytes(500, 'a') }), 30);
    expect(h.out.client).toHaveLength(before + 1);
    expect(h.p.failover.duplicatesDropped).toBe(1);
    h.p.fromVm(Bk, fromVm({ seq: B + 1, ack: C + 1, payload: Buffer.concat([bytes(500, 'a'), bytes(500, 'b'), bytes(10, 'c')]) }), 31);
    const last = h.out.client[h.out.client.length - 1];
    expect(seqOf(last)).toBe(P + 501);
    expect(payloadOf(last).toString()).toBe('b'.repeat(500) + 'c'.repeat(10));
  });

  it('drops what the dead primary said that the backup never confirmed, and releases the backup\'s own answer later', () => {
    const h = harness();
    handshake(h);
    h.p.fromClient(fromClient({ seq: C + 1, ack: P + 1, flags: 'PA', payload: 'GET / HTTP/1.1\r\n\r\n' }), 5);
    h.p.fromVm(A, fromVm({ seq: P + 1, ack: C + 19, flags: 'PA', payload: 'primary only' }), 10);
    const before = h.out.client.length;
    h.p.failoverNow('silence', 'test', 20);
    expect(h.out.client).toHaveLength(before);
    expect(h.p.failover.discardedFrames).toBe(1);
    h.p.fromVm(Bk, fromVm({ seq: B + 1, ack: C + 19, flags: 'PA', payload: 'backup says' }), 30);
    expect(h.out.client).toHaveLength(before + 1);
    const f = h.out.client[before];
    expect(seqOf(f)).toBe(P + 1);
    expect(ackOf(f)).toBe(C + 19);
    expect(payloadOf(f).toString()).toBe('backup says');
  });

  it('sends the survivor\'s resend of bytes released to the client but never acknowledged: a frame lost on its way leaves a hole only the survivor can fill', () => {
    const h = harness();
    handshake(h);
    for (let i = 0; i < 3; i++) {
      h.p.fromVm(A, fromVm({ seq: P + 1 + i * 1000, ack: C + 1, payload: bytes(1000, 'abc'[i]) }), 10 + i);
      h.p.fromVm(Bk, fromVm({ seq: B + 1 + i * 1000, ack: C + 1, payload: bytes(1000, 'abc'[i]) }), 10 + i);
    }
    // All three went out; the second never arrived: the client acknowledges the first only (SACKing the third).
    h.p.fromClient(fromClient({ seq: C + 1, ack: P + 1001, flags: 'A' }), 20);
    h.p.failoverNow('carrier', 'test', 21);
    const before = h.out.client.length;
    // The survivor heard the same ACK; its retransmission timer resends the second segment.
    h.p.fromVm(Bk, fromVm({ seq: B + 1001, ack: C + 1, payload: bytes(1000, 'b') }), 300_000);
    const sent = h.out.client.slice(before);
    expect(sent).toHaveLength(1);
    expect(seqOf(sent[0])).toBe(P + 1001);
    expect(payloadOf(sent[0]).equals(bytes(1000, 'b'))).toBe(true);
    expect(l4ChecksumIsValid(sent[0])).toBe(true);
    expect(compare(h).carried_resent_unacked).toBe(1);
    // One straddling what the client acknowledged is cut there, not at the released point.
    h.p.fromVm(Bk, fromVm({ seq: B + 501, ack: C + 1, payload: Buffer.concat([bytes(500, 'a'), bytes(1000, 'b')]) }), 300_001);
    const cut = h.out.client[h.out.client.length - 1];
    expect(seqOf(cut)).toBe(P + 1001);
    expect(payloadOf(cut).equals(bytes(1000, 'b'))).toBe(true);
    // Once the client acknowledges everything, a resend of it is dropped.
    h.p.fromClient(fromClient({ seq: C + 1, ack: P + 3001, flags: 'A' }), 300_002);
    const n = h.out.client.length;
    h.p.fromVm(Bk, fromVm({ seq: B + 2001, ack: C + 1, payload: bytes(1000, 'c') }), 300_003);
    expect(h.out.client).toHaveLength(n);
  });

  it('gives a new connection on a reused 4-tuple its own released point: the backup\'s lead goes out at failover, and its later frames too', () => {
    const h = harness();
    const sport = 40100;
    // The first connection: 20 kB released, then closed by both ends.
    handshake(h, sport);
    for (let i = 0; i < 20; i++) {
      h.p.fromVm(A, fromVm({ dport: sport, seq: P + 1 + i * 1000, ack: C + 1, payload: bytes(1000, 'x') }), 10 + i);
      h.p.fromVm(Bk, fromVm({ dport: sport, seq: B + 1 + i * 1000, ack: C + 1, payload: bytes(1000, 'x') }), 10 + i);
    }
    h.p.fromVm(A, fromVm({ dport: sport, seq: P + 20_001, ack: C + 1, flags: 'FA' }), 40);
    h.p.fromVm(Bk, fromVm({ dport: sport, seq: B + 20_001, ack: C + 1, flags: 'FA' }), 41);
    h.p.fromClient(fromClient({ sport, seq: C + 1, ack: P + 20_002, flags: 'FA' }), 42);
    // The client opens a new one from the same port (new ISNs everywhere): 3 kB, and the backup runs 1 kB ahead.
    const [c2, p2, b2] = [70_000, 3_000_000, 8_000_000];
    h.p.fromClient(fromClient({ sport, seq: c2, flags: 'S', options: SYN_OPTS }), 100);
    h.p.fromVm(A, fromVm({ dport: sport, seq: p2, ack: c2 + 1, flags: 'SA', options: SYN_OPTS }), 101);
    h.p.fromVm(Bk, fromVm({ dport: sport, seq: b2, ack: c2 + 1, flags: 'SA', options: SYN_OPTS }), 102);
    h.p.fromClient(fromClient({ sport, seq: c2 + 1, ack: p2 + 1, flags: 'A' }), 103);
    for (let i = 0; i < 3; i++) {
      h.p.fromVm(A, fromVm({ dport: sport, seq: p2 + 1 + i * 1000, ack: c2 + 1, payload: bytes(1000, 'n') }), 110 + i);
      h.p.fromVm(Bk, fromVm({ dport: sport, seq: b2 + 1 + i * 1000, ack: c2 + 1, payload: bytes(1000, 'n') }), 110 + i);
    }
    h.p.fromVm(Bk, fromVm({ dport: sport, seq: b2 + 3001, ack: c2 + 1, payload: bytes(1000, 'm') }), 120);
    const before = h.out.client.length;
    h.p.failoverNow('carrier', 'test', 130);
    expect(h.p.failoverHistory[0]).toMatchObject({ flowsCarried: 1, backlogFrames: 1 });
    const backlog = h.out.client.slice(before);
    expect(backlog.map(seqOf)).toEqual([p2 + 3001]);
    expect(payloadOf(backlog[0]).equals(bytes(1000, 'm'))).toBe(true);
    h.p.fromVm(Bk, fromVm({ dport: sport, seq: b2 + 4001, ack: c2 + 1, payload: bytes(1000, 'o') }), 140);
    expect(seqOf(h.out.client[h.out.client.length - 1])).toBe(p2 + 4001);
    expect(h.p.failover.duplicatesDropped).toBe(0);
  });

  /** A connection carried over a failover, then closed by both ends; `reprotect`: a new backup is in place (port a). */
  function closedCarried(h: ReturnType<typeof harness>, sport: number, reprotect: boolean) {
    handshake(h, sport);
    for (let i = 0; i < 5; i++) {
      h.p.fromVm(A, fromVm({ dport: sport, seq: P + 1 + i * 1000, ack: C + 1, payload: bytes(1000, 'x') }), 10 + i);
      h.p.fromVm(Bk, fromVm({ dport: sport, seq: B + 1 + i * 1000, ack: C + 1, payload: bytes(1000, 'x') }), 10 + i);
    }
    h.p.failoverNow('carrier', 'test', 20);
    if (reprotect) h.p.checkpointDone(h.out.reprotects[0].epoch, 21);
    h.p.fromVm(Bk, fromVm({ dport: sport, seq: B + 5001, ack: C + 1, flags: 'FA' }), 30);
    h.p.fromClient(fromClient({ sport, seq: C + 1, ack: P + 5002, flags: 'FA' }), 31);
    h.p.fromVm(Bk, fromVm({ dport: sport, seq: B + 5002, ack: C + 2, flags: 'A' }), 32);
  }

  it('compares a new connection on the 4-tuple of a carried flow that closed, with no translation left over from the old one', () => {
    const h = harness();
    const sport = 40200;
    closedCarried(h, sport, true);
    expect(h.p.state).toBe('COMPARING');
    const [n, na, nb] = [h.out.client.length, h.out.a.length, h.out.b.length];
    // The client reuses its port (the server closed first, or the old connection's TIME_WAIT is over).
    const [c2, b2, a2] = [3_000_000_000, 2_000_000_000, 77];
    h.p.fromClient(fromClient({ sport, seq: c2, flags: 'S', options: SYN_OPTS }), 100);
    expect([h.out.a.length - na, h.out.b.length - nb]).toEqual([1, 1]); // to the new backup as well
    h.p.fromVm(Bk, fromVm({ dport: sport, seq: b2, ack: c2 + 1, flags: 'SA', options: SYN_OPTS }), 101);
    h.p.fromVm(A, fromVm({ dport: sport, seq: a2, ack: c2 + 1, flags: 'SA', options: SYN_OPTS }), 102);
    h.p.fromClient(fromClient({ sport, seq: c2 + 1, ack: b2 + 1, flags: 'A' }), 103);
    h.p.fromVm(Bk, fromVm({ dport: sport, seq: b2 + 1, ack: c2 + 1, payload: bytes(100, 'n') }), 104);
    expect(h.out.client).toHaveLength(n + 1); // held until the backup says the same
    h.p.fromVm(A, fromVm({ dport: sport, seq: a2 + 1, ack: c2 + 1, payload: bytes(100, 'n') }), 105);
    const sent = h.out.client.slice(n);
    expect(sent.map(seqOf)).toEqual([b2, b2 + 1]);
    expect(payloadOf(sent[1]).equals(bytes(100, 'n'))).toBe(true);
    expect(h.p.failover.duplicatesDropped).toBe(0);
    expect(h.p.stageCounters().flow.reopened).toBe(1);
    // A retransmission of the new SYN keeps the new flow.
    h.p.fromClient(fromClient({ sport, seq: c2, flags: 'S', options: SYN_OPTS }), 106);
    expect(h.p.stageCounters().flow.reopened).toBe(1);
  });

  it('lets the survivor alone serve a new connection on the 4-tuple of a closed carried flow before re-protection, untranslated', () => {
    const h = harness();
    const sport = 40300;
    closedCarried(h, sport, false);
    expect(h.p.state).toBe('FAILED_OVER');
    const n = h.out.client.length;
    const [c2, b2] = [3_000_000_000, 2_000_000_000];
    h.p.fromClient(fromClient({ sport, seq: c2, flags: 'S', options: SYN_OPTS }), 100);
    h.p.fromVm(Bk, fromVm({ dport: sport, seq: b2, ack: c2 + 1, flags: 'SA', options: SYN_OPTS }), 101);
    h.p.fromClient(fromClient({ sport, seq: c2 + 1, ack: b2 + 1, flags: 'A' }), 102);
    expect(ackOf(h.out.b[h.out.b.length - 1])).toBe(b2 + 1);
    h.p.fromVm(Bk, fromVm({ dport: sport, seq: b2 + 1, ack: c2 + 1, payload: bytes(100, 'n') }), 103);
    expect(h.out.client.slice(n).map(seqOf)).toEqual([b2, b2 + 1]);
    expect(h.p.failover.duplicatesDropped).toBe(0);
  });

  /** A 1000-byte answer both replicas gave (released), which the client acknowledged; then the primary dies. */
  function carriedAfterAck(h: ReturnType<typeof harness>) {
    handshake(h);
    h.p.fromVm(A, fromVm({ seq: P + 1, ack: C + 1, payload: bytes(1000, 'x') }), 10);
    h.p.fromVm(Bk, fromVm({ seq: B + 1, ack: C + 1, payload: bytes(1000, 'x') }), 11);
    h.p.fromClient(fromClient({ seq: C + 1, ack: P + 1001, flags: 'A', window: 500 }), 12);
    expect(h.p.failoverNow('agent', 'test', 20)).toBe('promoted');
  }
  const compare = (h: ReturnType<typeof harness>) => h.p.stageCounters().compare;

  it('tells a survivor that resends bytes the client acknowledged the client\'s ACK, in its own space, and sends the client nothing', () => {
    const h = harness();
    carriedAfterAck(h);
    const toClient = h.out.client.length, toSurvivor = h.out.b.length;
    // The survivor did not hear that ACK (it went to the dead primary, or a checkpoint paused the survivor).
    h.p.fromVm(Bk, fromVm({ seq: B + 1, ack: C + 1, payload: bytes(1000, 'x') }), 30);
    expect(h.out.client).toHaveLength(toClient);
    const told = h.out.b.slice(toSurvivor);
    expect(told).toHaveLength(1);
    expect(flagsOf(told[0])).toBe(0x10);
    expect(seqOf(told[0])).toBe(C + 1);
    expect(ackOf(told[0])).toBe(B + 1001);
    expect(told[0].readUInt16BE(14 + 20 + 14)).toBe(500);
    expect(l4ChecksumIsValid(told[0])).toBe(true);
    expect(compare(h).carried_survivor_acks).toBe(1);
    // New bytes from it go on as before, translated.
    h.p.fromVm(Bk, fromVm({ seq: B + 1001, ack: C + 1, payload: bytes(100, 'z') }), 40);
    expect(h.out.client).toHaveLength(toClient + 1);
    expect(seqOf(h.out.client[toClient])).toBe(P + 1001);
    expect(compare(h).carried_flows_wedged).toBe(0);
  });

  it('resets both ends of a carried flow whose survivor keeps resending acknowledged bytes after being told the ACK three times: its state is not the one translated for', () => {
    const h = harness();
    carriedAfterAck(h);
    const toClient = h.out.client.length, toSurvivor = h.out.b.length;
    for (let i = 0; i < 3; i++) h.p.fromVm(Bk, fromVm({ seq: B + 1, ack: C + 1, payload: bytes(1000, 'x') }), 30 + i * 200_000);
    expect(h.out.client).toHaveLength(toClient);
    expect(h.out.b.slice(toSurvivor).map(flagsOf)).toEqual([0x10, 0x10, 0x10]);
    h.p.fromVm(Bk, fromVm({ seq: B + 1, ack: C + 1, payload: bytes(1000, 'x') }), 900_000);
    // The client's reset carries exactly what it expects next; the survivor's, what it expects from the client.
    const reset = h.out.client.slice(toClient);
    expect(reset).toHaveLength(1);
    expect(flagsOf(reset[0])).toBe(0x04);
    expect(seqOf(reset[0])).toBe(P + 1001);
    expect(l4ChecksumIsValid(reset[0])).toBe(true);
    const back = h.out.b.slice(toSurvivor + 3);
    expect(back.map(flagsOf)).toEqual([0x04]);
    expect(seqOf(back[0])).toBe(C + 1);
    expect(compare(h).carried_flows_wedged).toBe(1);
    expect(h.logs.some((l) => l.event === 'carried-flow-wedged')).toBe(true);
    // Whatever the survivor says on it now is reset, never passed to the client.
    h.p.fromVm(Bk, fromVm({ seq: B + 1, ack: C + 1, payload: bytes(1000, 'x') }), 1_000_000);
    expect(h.out.client).toHaveLength(toClient + 1);
  });

  it('counts different acknowledged segments resent once each (a loss recovery) as no wedge', () => {
    const h = harness();
    handshake(h);
    h.p.fromVm(A, fromVm({ seq: P + 1, ack: C + 1, payload: bytes(4000, 'x') }), 10);
    h.p.fromVm(Bk, fromVm({ seq: B + 1, ack: C + 1, payload: bytes(4000, 'x') }), 11);
    h.p.fromClient(fromClient({ seq: C + 1, ack: P + 4001, flags: 'A' }), 12);
    h.p.failoverNow('agent', 'test', 20);
    for (let i = 0; i < 4; i++) h.p.fromVm(Bk, fromVm({ seq: B + 1 + i * 1000, ack: C + 1, payload: bytes(1000, 'x') }), 30 + i);
    expect(compare(h).carried_survivor_acks).toBe(4);
    expect(compare(h).carried_flows_wedged).toBe(0);
  });

  it('sends client frames only to the promoted replica, translated, and leaves new flows untranslated', () => {
    const h = harness();
    handshake(h);
    h.p.failoverNow('agent', 'test', 20);
    const [a, b] = [h.out.a.length, h.out.b.length];
    h.p.fromClient(fromClient({ seq: C + 1, ack: P + 1, flags: 'PA', payload: 'more' }), 21);
    expect(h.out.a).toHaveLength(a);
    expect(h.out.b).toHaveLength(b + 1);
    expect(ackOf(h.out.b[b])).toBe(B + 1);
    expect(l4ChecksumIsValid(h.out.b[b])).toBe(true);
    // A new connection after promotion: nothing to translate either way.
    h.p.fromClient(fromClient({ sport: 41000, seq: 7, flags: 'S', options: SYN_OPTS }), 22);
    expect(h.out.a).toHaveLength(a);
    h.p.fromVm(Bk, fromVm({ dport: 41000, seq: 123, ack: 8, flags: 'SA', options: SYN_OPTS }), 23);
    expect(seqOf(h.out.client[h.out.client.length - 1])).toBe(123);
    h.p.fromClient(fromClient({ sport: 41000, seq: 8, ack: 124 }), 24);
    expect(ackOf(h.out.b[h.out.b.length - 1])).toBe(124);
    // The dead slot's frames go nowhere.
    h.p.fromVm(A, fromVm({ seq: P + 1, ack: C + 1, payload: 'zombie' }), 25);
    expect(h.out.client.some((f) => f.includes(Buffer.from('zombie')))).toBe(false);
    expect(h.p.failover.deadSlotFrames).toBe(1);
  });

  it('carries a flow that was mid-FIN: the backup\'s FIN beyond the released point goes out alone', () => {
    const h = harness();
    handshake(h);
    h.p.fromVm(A, fromVm({ seq: P + 1, ack: C + 1, payload: 'last words' }), 10);
    h.p.fromVm(Bk, fromVm({ seq: B + 1, ack: C + 1, flags: 'FA', payload: 'last words' }), 11);
    const before = h.out.client.length;
    expect(payloadOf(h.out.client[before - 1]).toString()).toBe('last words');
    h.p.failoverNow('agent', 'test', 20);
    const fin = h.out.client[before];
    expect(h.out.client).toHaveLength(before + 1);
    expect(flagsOf(fin) & 0x01).toBe(0x01);
    expect(payloadOf(fin)).toHaveLength(0);
    expect(seqOf(fin)).toBe(P + 11);
    expect(l4ChecksumIsValid(fin)).toBe(true);
  });

  it('promotes a backup whose SYN-ACK the client has not seen yet without translating it', () => {
    const h = harness();
    h.p.fromClient(fromClient({ seq: C, flags: 'S', options: SYN_OPTS }), 1);
    h.p.fromVm(A, fromVm({ seq: P, ack: C + 1, flags: 'SA', options: SYN_OPTS }), 2); // held: the backup has not answered
    h.p.failoverNow('agent', 'test', 3);
    h.p.fromVm(Bk, fromVm({ seq: B, ack: C + 1, flags: 'SA', options: SYN_OPTS }), 4);
    const synAck = h.out.client[h.out.client.length - 1];
    expect(seqOf(synAck)).toBe(B);
    h.p.fromClient(fromClient({ seq: C + 1, ack: B + 1 }), 5);
    expect(ackOf(h.out.b[h.out.b.length - 1])).toBe(B + 1);
  });

  it('releases from the backup the UDP replies the primary had not released', () => {
    const h = harness();
    const q = udpFrame({ from: 'client', sport: 5353, dport: 53, payload: 'query' });
    h.p.fromClient(q, 1);
    h.p.fromVm(A, udpFrame({ from: 'vm', sport: 53, dport: 5353, payload: 'answer 1' }), 2);
    h.p.fromVm(Bk, udpFrame({ from: 'vm', sport: 53, dport: 5353, payload: 'answer 1' }), 3);
    h.p.fromVm(Bk, udpFrame({ from: 'vm', sport: 53, dport: 5353, payload: 'answer 2' }), 4);
    const before = h.out.client.length;
    expect(before).toBe(1);
    h.p.failoverNow('agent', 'test', 5);
    expect(h.out.client.slice(before).map((f) => payloadOf(f).toString())).toEqual(['answer 2']);
    // The survivor repeating an answer the client already had is not sent twice... (datagram 1 was released)
    h.p.fromVm(Bk, udpFrame({ from: 'vm', sport: 53, dport: 5353, payload: 'answer 3' }), 6);
    expect(payloadOf(h.out.client[h.out.client.length - 1]).toString()).toBe('answer 3');
  });

  it('after reordered UDP answers, sends from the backup exactly the ones whose equal the client did not receive', () => {
    const h = harness();
    h.p.fromClient(udpFrame({ from: 'client', sport: 5353, dport: 53, payload: 'queries' }), 1);
    const answer = (slot: SlotId, payload: string, t: number) => h.p.fromVm(slot, udpFrame({ from: 'vm', sport: 53, dport: 5353, payload }), t);
    answer(A, 'one', 2);
    answer(Bk, 'two', 3);
    answer(Bk, 'extra', 4);
    answer(A, 'two', 5);
    answer(Bk, 'one', 6);
    const before = h.out.client.length;
    expect(h.out.client.map((f) => payloadOf(f).toString())).toEqual(['one', 'two']);
    h.p.failoverNow('agent', 'test', 7);
    // The backup's 'two' and 'one' reached the client from the primary; only 'extra' is news.
    expect(h.out.client.slice(before).map((f) => payloadOf(f).toString())).toEqual(['extra']);
  });

  it('promotes the backup as it was before a checkpoint that was running, and sends it the client frames held meanwhile', () => {
    const h = harness();
    handshake(h);
    h.p.request('manual', undefined, 5);
    expect(h.p.state).toBe('CHECKPOINTING');
    const b = h.out.b.length;
    h.p.fromClient(fromClient({ seq: C + 1, ack: P + 1, flags: 'PA', payload: 'during' }), 6);
    h.p.fromVm(A, fromVm({ seq: P + 1, ack: C + 1, payload: 'primary, unconfirmed' }), 7);
    h.p.fromVm(Bk, fromVm({ seq: B + 1, ack: C + 1, payload: 'backup says' }), 8);
    expect(h.out.b).toHaveLength(b); // held
    const before = h.out.client.length;
    h.p.failoverNow('agent', 'primary crashed during checkpoint', 9);
    expect(h.out.b).toHaveLength(b + 1);
    expect(ackOf(h.out.b[b])).toBe(B + 1);
    expect(h.out.client.slice(before).map((f) => payloadOf(f).toString())).toEqual(['backup says']);
    expect(h.p.replicator.history[0].outcome).toBe('abandoned');
    // The late answer to the abandoned checkpoint changes nothing.
    h.p.checkpointDone(h.out.checkpoints[0].epoch, 10);
    expect(h.p.state).toBe('FAILED_OVER');
  });

  it('refuses to promote a stale backup (DEGRADED) and says why', () => {
    const h = harness();
    handshake(h);
    h.p.agentConnected(false, 5);
    expect(h.p.state).toBe('DEGRADED');
    expect(h.p.failoverNow('carrier', 'test', 6)).toBe('refused');
    expect(h.p.failover.refused).toBe(1);
    expect(h.logs.find((l) => l.event === 'failover-refused')?.fields.why).toMatch(/stale/);
    expect(h.p.replicas.describe()).toBe('a=primary b=backup');
  });

  it('releases the primary\'s output unchecked when the backup dies, and sends client frames to the primary only', () => {
    const h = harness();
    handshake(h);
    h.p.fromVm(A, fromVm({ seq: P + 1, ack: C + 1, payload: 'held' }), 10);
    const before = h.out.client.length;
    expect(h.p.backupLost('carrier lost on b', 11)).toBe(true);
    expect(h.p.state).toBe('DEGRADED');
    expect(h.out.client).toHaveLength(before + 1);
    h.p.fromVm(A, fromVm({ seq: P + 5, ack: C + 1, payload: 'more' }), 12);
    expect(h.out.client).toHaveLength(before + 2);
    const b = h.out.b.length;
    h.p.fromClient(fromClient({ seq: C + 1, ack: P + 9 }), 13);
    expect(h.out.b).toHaveLength(b);
    expect(h.p.failoverNow('agent', 'test', 14)).toBe('refused');
    expect(h.out.reprotects).toHaveLength(1);
  });

  it('asks for re-protection after a failover; once done, new flows are compared with roles swapped and old ones stay carried', () => {
    const h = harness();
    handshake(h);
    h.p.failoverNow('agent', 'test', 20);
    expect(h.out.reprotects).toHaveLength(1);
    h.p.checkpointDone(h.out.reprotects[0].epoch, 30);
    expect(h.p.state).toBe('COMPARING');
    expect(h.p.replicas.describe()).toBe('a=backup b=primary');
    // The old flow: client frames to b only, translated; b's output translated.
    const a = h.out.a.length;
    h.p.fromClient(fromClient({ seq: C + 1, ack: P + 1, flags: 'PA', payload: 'old' }), 31);
    expect(h.out.a).toHaveLength(a);
    h.p.fromVm(Bk, fromVm({ seq: B + 1, ack: C + 4, payload: 'reply' }), 32);
    expect(seqOf(h.out.client[h.out.client.length - 1])).toBe(P + 1);
    // A new flow: b is its primary, a its backup; b's answer waits for a's.
    h.p.fromClient(fromClient({ sport: 42000, seq: 50, flags: 'S', options: SYN_OPTS }), 33);
    expect(h.out.a).toHaveLength(a + 1);
    const n = h.out.client.length;
    h.p.fromVm(Bk, fromVm({ dport: 42000, seq: 7777, ack: 51, flags: 'SA', options: SYN_OPTS }), 34);
    expect(h.out.client).toHaveLength(n);
    h.p.fromVm(A, fromVm({ dport: 42000, seq: 3333, ack: 51, flags: 'SA', options: SYN_OPTS }), 35);
    expect(h.out.client).toHaveLength(n + 1);
    expect(seqOf(h.out.client[n])).toBe(7777);
  });

  it('fails over back and forth: A→B→A→B, each time keeping a connection born after the last re-protection', () => {
    const h = harness();
    let t = 1;
    for (let round = 0; round < 4; round++) {
      const sport = 43000 + round;
      const [act, stb] = round % 2 === 0 ? [A, Bk] : [Bk, A];
      const [actIsn, stbIsn] = [10_000 * (round + 1), 500_000 * (round + 1)];
      h.p.fromClient(fromClient({ sport, seq: C, flags: 'S', options: SYN_OPTS }), t++);
      h.p.fromVm(act as 0 | 1, fromVm({ dport: sport, seq: actIsn, ack: C + 1, flags: 'SA', options: SYN_OPTS }), t++);
      h.p.fromVm(stb as 0 | 1, fromVm({ dport: sport, seq: stbIsn, ack: C + 1, flags: 'SA', options: SYN_OPTS }), t++);
      h.p.fromVm(act as 0 | 1, fromVm({ dport: sport, seq: actIsn + 1, ack: C + 1, payload: 'abc' }), t++);
      h.p.fromVm(stb as 0 | 1, fromVm({ dport: sport, seq: stbIsn + 1, ack: C + 1, payload: 'abcdef' }), t++);
      const n = h.out.client.length;
      expect(h.p.failoverNow('agent', `round ${round}`, t++)).toBe('promoted');
      const last = h.out.client[n];
      expect(seqOf(last)).toBe(actIsn + 4);
      expect(payloadOf(last).toString()).toBe('def');
      h.p.checkpointDone(h.out.reprotects[round].epoch, t++);
      expect(h.p.state).toBe('COMPARING');
    }
    expect(h.p.failover.failovers).toBe(4);
    expect(h.p.replicas.describe()).toBe('a=primary b=backup');
    expect(h.out.events.filter((e) => e.type === 'failover')).toHaveLength(4);
  });
});

describe('failover with client data in flight', () => {
  it('tells the client at once what the promoted backup has acknowledged, so an upload does not wait for its retransmission timeout', () => {
    const h = harness();
    handshake(h);
    h.p.fromClient(fromClient({ seq: C + 1, ack: P + 1, flags: 'PA', payload: bytes(1000, 'u') }), 10);
    h.p.fromVm(Bk, fromVm({ seq: B + 1, ack: C + 1001, flags: 'A', options: { ts: [99020, 112] } }), 11); // the backup acknowledges the upload
    const n = h.out.client.length;
    h.p.failoverNow('carrier', 'test', 12); // the primary died before its ACK
    const ack = h.out.client.slice(n).find((f) => ackOf(f) === C + 1001);
    expect(ack).toBeDefined();
    expect(seqOf(ack!)).toBe(P + 1);
    expect(tsvalOf(ack!)).toBe(7020);
    expect(l4ChecksumIsValid(ack!)).toBe(true);
  });

  it('sends no extra ACK when the client already heard as much from the primary', () => {
    const h = harness();
    handshake(h);
    h.p.fromClient(fromClient({ seq: C + 1, ack: P + 1, flags: 'PA', payload: bytes(10, 'u') }), 10);
    h.p.fromVm(A, fromVm({ seq: P + 1, ack: C + 11, flags: 'A' }), 11);
    h.p.fromVm(Bk, fromVm({ seq: B + 1, ack: C + 11, flags: 'A' }), 12);
    const n = h.out.client.length;
    expect(ackOf(h.out.client[n - 1])).toBe(C + 11); // released: the backup agreed
    h.p.failoverNow('carrier', 'test', 13);
    expect(h.out.client).toHaveLength(n);
  });
});

describe('cutting a segment with a partial checksum', () => {
  it('leaves the pseudo-header sum for the device to finish, as the frame came', () => {
    const { trimmedTcpCopy } = require('../../../lib/rewrite/egress');
    const { pseudoHeaderSum } = require('../../../lib/packet/l4-checksum');
    const { foldSum } = require('../../../lib/packet/checksum');
    const f = decodeFrame(fromVm({ seq: 100, ack: 1, payload: bytes(300, 'p') }));
    const out: Buffer = trimmedTcpCopy(f, 100, 0, undefined, true);
    const d = decodeFrame(out);
    expect(d.payloadLength).toBe(200);
    expect(d.tcp.seq).toBe(200);
    expect(d.tcp.checksum).toBe(foldSum(pseudoHeaderSum(d)));
    const full: Buffer = trimmedTcpCopy(decodeFrame(fromVm({ seq: 100, ack: 1, payload: bytes(300, 'p') })), 100);
    expect(l4ChecksumIsValid(full)).toBe(true);
  });
});

describe('re-protection when things die in the middle of it', () => {
  it('asks again when the agent dies during a re-protection, and stays unprotected until a new backup is done', () => {
    const h = harness();
    handshake(h);
    h.p.failoverNow('agent', 'test', 20);
    expect(h.out.reprotects).toHaveLength(1);
    h.p.agentConnected(false, 30); // the agent dies while building the new backup
    expect(h.p.state).toBe('FAILED_OVER');
    h.p.checkpointDone(h.out.reprotects[0].epoch, 31); // a late answer from the dead agent changes nothing
    expect(h.p.replicas.describe()).toBe('a=dead b=promoted');
    h.p.agentConnected(true, 40);
    expect(h.out.reprotects).toHaveLength(2);
    h.p.checkpointDone(h.out.reprotects[1].epoch, 50);
    expect(h.p.state).toBe('COMPARING');
    expect(h.p.replicas.describe()).toBe('a=backup b=primary');
  });

  it('refuses a second failover while the survivor runs alone: there is nothing to promote', () => {
    const h = harness();
    handshake(h);
    h.p.failoverNow('agent', 'first', 20);
    expect(h.p.failoverNow('carrier', 'the survivor dies too', 21)).toBe('refused');
    expect(h.logs.find((l) => l.event === 'failover-refused')?.fields.why).toBe('no backup');
  });
});

describe('a failover the bridge decides while a checkpoint is in flight', () => {
  /** An established connection, a checkpoint in flight (epoch returned), and output of both sides held meanwhile. */
  function midCheckpoint(partial: Partial<PipelineConfig> = {}) {
    const h = harness(partial);
    handshake(h);
    h.p.request('mismatch', undefined, 5);
    h.p.fromVm(A, fromVm({ seq: P + 1, ack: C + 1, payload: 'primary, unconfirmed' }), 6);
    h.p.fromVm(Bk, fromVm({ seq: B + 1, ack: C + 1, payload: 'backup says' }), 7);
    return { h, epoch: h.out.checkpoints[0].epoch };
  }
  const failovers = (h: ReturnType<typeof harness>) => h.out.events.filter((e) => e.type === 'failover');

  it('waits for checkpoint-done, then promotes the backup that checkpoint made', () => {
    const { h, epoch } = midCheckpoint();
    expect(h.p.failoverNow('carrier', 'a lost carrier', 10)).toBe('deferred');
    expect(h.p.replicas.describe()).toBe('a=primary b=backup');
    expect(h.p.failoverWaiting?.epoch).toBe(epoch);
    expect(h.logs.find((l) => l.event === 'failover-deferred')?.fields).toMatchObject({ cause: 'carrier', epoch });
    // A second detection while it waits is the same failover.
    expect(h.p.failoverNow('carrier', 'a deleted', 11)).toBe('deferred');
    expect(h.p.failover.failovers).toBe(0);
    h.p.checkpointDone(epoch, 20);
    expect(h.p.replicator.history[0].outcome).toBe('done');
    expect(failovers(h)).toHaveLength(1);
    expect(h.p.replicas.describe()).toBe('a=dead b=promoted');
    // The checkpoint was applied first: the events say so in this order.
    const kinds = h.out.events.map((e) => e.type);
    expect(kinds.indexOf('checkpoint-done')).toBeLessThan(kinds.indexOf('failover'));
    expect(h.p.failoverWaiting).toBeNull();
    expect(h.p.failoverStage.counters().deferred).toBe(1);
  });

  it('promotes the old backup when the checkpoint fails, instead of calling it stale', () => {
    const { h, epoch } = midCheckpoint();
    expect(h.p.failoverNow('carrier', 'test', 10)).toBe('deferred');
    h.p.checkpointFailed(epoch, 'migration failed: the source went away', 12);
    expect(failovers(h)).toHaveLength(1);
    expect(h.p.state).toBe('FAILED_OVER');
    expect(h.p.failover.refused).toBe(0);
    expect(h.p.replicator.history[0].outcome).toBe('abandoned');
  });

  it('promotes when no answer comes within checkpointWaitMs, and says it waited in vain', () => {
    const { h } = midCheckpoint({ failover: { ...makePipelineConfig({}).failover, checkpointWaitMs: 50 } });
    h.p.failoverNow('carrier', 'test', 10);
    h.p.tick(10 + 49_000);
    expect(failovers(h)).toHaveLength(0);
    h.p.tick(10 + 50_000);
    expect(failovers(h)).toHaveLength(1);
    expect(h.logs.find((l) => l.event === 'failover-deferral-ended')?.fields).toMatchObject({ outcome: 'expired' });
  });

  it('promotes at once when the agent goes away, before the checkpoint fails for it', () => {
    const { h } = midCheckpoint();
    h.p.failoverNow('silence', 'test', 10);
    h.p.agentConnected(false, 11);
    expect(failovers(h)).toHaveLength(1);
    expect(h.p.failover.refused).toBe(0);
  });

  it('follows the agent\'s primary-down at once, and ignores a late answer afterwards', () => {
    const { h, epoch } = midCheckpoint();
    h.p.failoverNow('carrier', 'test', 10);
    expect(h.p.failoverNow('agent', 'QEMU a exited', 11)).toBe('promoted');
    expect(h.p.failoverWaiting).toBeNull();
    h.p.checkpointDone(epoch, 12);
    h.p.tick(5_000_000);
    expect(failovers(h)).toHaveLength(1);
  });

  it('drops a silence verdict that began while the primary was paused for the checkpoint, once the checkpoint is done', () => {
    const { h, epoch } = midCheckpoint();
    expect(h.p.failoverNow('silence', 'a silent for 31 ms', 10)).toBe('deferred');
    h.p.checkpointDone(epoch, 20);
    expect(failovers(h)).toHaveLength(0);
    expect(h.p.replicas.describe()).toBe('a=primary b=backup');
    expect(h.logs.find((l) => l.event === 'failover-deferral-cleared')?.fields).toMatchObject({ cause: 'silence', outcome: 'done' });
  });

  it('forgets the failover when the backup dies too: nothing is left to promote', () => {
    const { h } = midCheckpoint();
    h.p.failoverNow('carrier', 'test', 10);
    h.p.backupLost('b lost carrier', 11);
    expect(h.p.failoverWaiting).toBeNull();
    h.p.tick(5_000_000);
    expect(failovers(h)).toHaveLength(0);
  });

  it('promotes at once with checkpointWaitMs 0, and never defers the agent\'s own word', () => {
    const { h } = midCheckpoint({ failover: { ...makePipelineConfig({}).failover, checkpointWaitMs: 0 } });
    expect(h.p.failoverNow('carrier', 'test', 10)).toBe('promoted');
    const second = midCheckpoint();
    expect(second.h.p.failoverNow('agent', 'test', 10)).toBe('promoted');
  });
});

describe('what the survivor takes while its copy is made', () => {
  it('is carried over by a checkpoint right after the re-protection, when client frames reached it meanwhile', () => {
    const h = harness();
    handshake(h);
    h.p.failoverNow('agent', 'test', 20);
    expect(h.out.reprotects).toHaveLength(1);
    // A request on the carried flow reaches the survivor alone while the agent copies it.
    h.p.fromClient(fromClient({ seq: C + 1, ack: P + 1, flags: 'PA', payload: 'GET /counter' }), 25);
    const asked = h.out.checkpoints.length;
    h.p.checkpointDone(h.out.reprotects[0].epoch, 30);
    expect(h.out.checkpoints).toHaveLength(asked + 1);
    expect(h.out.checkpoints[asked]).toMatchObject({ reason: 'manual', flow: expect.stringContaining('1 client frame(s) the survivor took while reprotect') });
    expect(h.p.state).toBe('CHECKPOINTING');
    expect(h.p.replicator.counters().after_reprotect).toBe(1);
  });

  it('asks for nothing more when no client frame came during the re-protection', () => {
    const h = harness();
    handshake(h);
    h.p.fromClient(fromClient({ seq: C + 1, ack: P + 1, flags: 'A' }), 19); // before: already in the survivor's state
    h.p.failoverNow('agent', 'test', 20);
    const asked = h.out.checkpoints.length;
    h.p.checkpointDone(h.out.reprotects[0].epoch, 30);
    expect(h.out.checkpoints).toHaveLength(asked);
    expect(h.p.state).toBe('COMPARING');
  });
});
