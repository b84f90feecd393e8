/**
 * Detection from what the bridge sees: the primary silent while the backup
 * answers (with an echo probe to rule out one lost frame or a slow guest),
 * carrier loss held for a moment so that a flap does not fail over.
 */
import { ShadowPipeline, makePipelineConfig, PipelineConfig } from '../../../lib/pipeline';
import { CarrierDebouncer, SilenceDetector } from '../../../lib/failover/liveness';
import { buildAnnouncement, buildEchoProbe, isProbeReply, PROBE_ECHO_ID } from '../../../lib/failover/frames';
import { decodeFrame } from '../../../lib/packet/frame';
import { shardOf } from '../../../lib/dataplane/shard';
import { CLIENT_IP, VM_IP, icmpEcho, l4ChecksumIsValid, ipv4HeaderChecksumIsValid, tcpFrame, TcpSpec } from '../../support/frames';

const C = 1000, P = 5000, B = 900_000;
const SYN_OPTS = { mss: 1460, ws: 7, sackOk: true };
const ms = (n: number) => n * 1000;

function harness(partial: Partial<PipelineConfig> = {}) {
  const out = { a: [] as Buffer[], b: [] as Buffer[], client: [] as Buffer[] };
  const p = new ShadowPipeline(makePipelineConfig({ resync: 'align', ...partial }), {
    toReplica: (slot, f) => (slot === 0 ? out.a : out.b).push(Buffer.from(f)),
    toClient: (f) => out.client.push(Buffer.from(f)),
    sendCheckpoint: () => {},
    log: () => {},
  }, 0, true);
  return { p, out };
}
const fromClient = (s: TcpSpec) => tcpFrame({ from: 'client', ...s });
const fromVm = (s: TcpSpec) => tcpFrame({ from: 'vm', ...s });

function established(h: ReturnType<typeof harness>) {
  h.p.fromClient(fromClient({ seq: C, flags: 'S', options: SYN_OPTS }), ms(1));
  h.p.fromVm(0, fromVm({ seq: P, ack: C + 1, flags: 'SA', options: SYN_OPTS }), ms(2));
  h.p.fromVm(1, fromVm({ seq: B, ack: C + 1, flags: 'SA', options: SYN_OPTS }), ms(2));
  h.p.fromClient(fromClient({ seq: C + 1, ack: P + 1, flags: 'PA', payload: 'GET /' }), ms(3));
  h.p.fromVm(0, fromVm({ seq: P + 1, ack: C + 6 }), ms(5)); // the primary acknowledges the request, then dies
}

describe('silence detection', () => {
  it('probes a primary that stays silent while the backup answers, and fails over when the probe goes unanswered', () => {
    const h = harness({ failover: { silenceMs: 20, probeTimeoutMs: 10, minStandbyFrames: 2, fewFramesSilenceMs: 100, carrierHoldMs: 6, announce: false, checkpointWaitMs: 2000 } });
    established(h);
    h.p.fromVm(1, fromVm({ seq: B + 1, ack: C + 6, payload: 'part 1' }), ms(10));
    h.p.fromVm(1, fromVm({ seq: B + 7, ack: C + 6, payload: 'part 2' }), ms(11));
    h.p.tick(ms(25));
    expect(h.p.replicas.describe()).toBe('primary=primary backup=backup');
    h.p.tick(ms(31));
    const probe = h.out.a[h.out.a.length - 1];
    const d = decodeFrame(probe);
    expect(d.l4).toBe('icmp');
    expect(d.icmp.type).toBe(8);
    expect(d.icmp.echoId).toBe(PROBE_ECHO_ID);
    expect(l4ChecksumIsValid(probe) && ipv4HeaderChecksumIsValid(probe)).toBe(true);
    expect(h.out.b.some((f) => decodeFrame(f).l4 === 'icmp')).toBe(false); // to the primary only
    h.p.tick(ms(38));
    expect(h.p.state).toBe('COMPARING');
    h.p.tick(ms(42));
    expect(h.p.state).toBe('FAILED_OVER');
    expect(h.p.failoverHistory[0]).toMatchObject({ cause: 'silence', detectedUs: ms(10) });
    // The backlog (both parts) went out translated.
    expect(h.out.client.slice(-2).map((f) => decodeFrame(f).payload().toString())).toEqual(['part 1', 'part 2']);
  });

  it('counts a GSO super-frame from the backup as its segments: one burst with offloads on is suspicion enough', () => {
    const h = harness({ failover: { silenceMs: 20, probeTimeoutMs: 10, minStandbyFrames: 2, fewFramesSilenceMs: 100, carrierHoldMs: 6, announce: false, checkpointWaitMs: 2000 } });
    established(h);
    // The backup's answer as one 14,480-byte super-frame (ten 1,448-byte segments on the wire); the primary says nothing more.
    const vnet = { flags: 0, gsoType: 1, hdrLen: 66, gsoSize: 1448, csumStart: 34, csumOffset: 16 };
    h.p.fromVm(1, fromVm({ seq: B + 1, ack: C + 6, payload: 'y'.repeat(14_480) }), ms(10), vnet);
    h.p.tick(ms(31));
    expect(h.out.a.some((f) => decodeFrame(f).l4 === 'icmp')).toBe(true); // probed: counted as ten frames, not one
    h.p.tick(ms(42));
    expect(h.p.state).toBe('FAILED_OVER');
    expect(h.p.failoverHistory[0]).toMatchObject({ cause: 'silence', detectedUs: ms(10) });
  });

  it('a primary that dies before it answers a SYN: the backup\'s lone SYN-ACK is suspicion enough after fewFramesSilenceMs', () => {
    const h = harness({ failover: { silenceMs: 20, probeTimeoutMs: 10, minStandbyFrames: 2, fewFramesSilenceMs: 100, carrierHoldMs: 6, announce: false, checkpointWaitMs: 2000 } });
    h.p.fromClient(fromClient({ seq: C, flags: 'S', options: SYN_OPTS }), ms(1));
    h.p.fromVm(1, fromVm({ seq: B, ack: C + 1, flags: 'SA', options: SYN_OPTS }), ms(2)); // the primary says nothing
    h.p.tick(ms(90));
    expect(h.out.a.some((f) => decodeFrame(f).l4 === 'icmp')).toBe(false); // one frame: not yet
    h.p.tick(ms(103));
    expect(h.out.a.some((f) => decodeFrame(f).l4 === 'icmp')).toBe(true);
    h.p.tick(ms(114));
    expect(h.p.state).toBe('FAILED_OVER');
    expect(h.p.failoverHistory[0]).toMatchObject({ cause: 'silence', detectedUs: ms(2) });
  });

  it('does not fail over when the primary answers the probe (one lost frame, a slow guest)', () => {
    const h = harness();
    established(h);
    h.p.fromVm(1, fromVm({ seq: B + 1, ack: C + 6, payload: 'part 1' }), ms(10));
    h.p.fromVm(1, fromVm({ seq: B + 7, ack: C + 6, payload: 'part 2' }), ms(11));
    h.p.tick(ms(31));
    expect(h.p.failover.probesSent).toBe(1);
    const n = h.out.client.length;
    h.p.fromVm(0, icmpEcho({ from: 'vm', reply: true, id: PROBE_ECHO_ID, seq: 0, payload: 'shadowvm liveness probe ' }), ms(33));
    expect(h.out.client).toHaveLength(n); // the reply is ours, not a client's
    h.p.tick(ms(60));
    expect(h.p.state).toBe('COMPARING');
    expect(h.p.failover.probeReplies).toBe(1);
    expect(h.p.failover.silenceFalseAlarms).toBe(1);
  });

  it('one worker of several (run --workers): its probe carries an identifier whose reply hashes back to it, and that reply counts', () => {
    for (const count of [2, 3, 4, 16]) {
      for (let index = 0; index < count; index++) {
        const h = harness();
        h.p.setShard({ count, index });
        established(h);
        h.p.fromVm(1, fromVm({ seq: B + 1, ack: C + 6, payload: 'part 1' }), ms(10));
        h.p.fromVm(1, fromVm({ seq: B + 7, ack: C + 6, payload: 'part 2' }), ms(11));
        h.p.tick(ms(31));
        const probe = h.out.a[h.out.a.length - 1];
        const d = decodeFrame(probe);
        expect(d.l4).toBe('icmp');
        const id = d.icmp.echoId;
        expect(shardOf(probe, count)).toBe(index);
        // The VM's reply (addresses swapped, same identifier) reaches the same worker, and is taken as the answer.
        const reply = icmpEcho({ from: 'vm', reply: true, id, seq: 0, payload: 'shadowvm liveness probe ' });
        expect(shardOf(reply, count)).toBe(index);
        h.p.fromVm(0, reply, ms(33));
        h.p.tick(ms(60));
        expect(h.p.state).toBe('COMPARING');
        expect(h.p.failover.probeReplies).toBe(1);
      }
    }
  });

  it('does not call a quiet service silent: without backup output nothing is suspected', () => {
    const h = harness();
    established(h);
    h.p.fromVm(1, fromVm({ seq: B + 1, ack: C + 6 }), ms(6));
    h.p.tick(ms(500));
    h.p.tick(ms(1000));
    expect(h.p.failover.probesSent).toBe(0);
    expect(h.p.state).toBe('COMPARING');
  });
});

describe('what must not fail over', () => {
  it('a slow or vanished agent degrades the bridge but never promotes the backup: only its explicit primary-down does', () => {
    const h = harness({ replicator: { checkpointTimeoutMs: 50, maxIntervalMs: 0, retryInitialMs: 1000, retryMaxMs: 30000, reprotectTimeoutMs: 30000 } });
    established(h);
    h.p.fromVm(1, fromVm({ seq: B + 1, ack: C + 6 }), ms(6));
    h.p.request('manual', undefined, ms(10));
    h.p.tick(ms(100)); // the agent did not answer in time
    expect(h.p.state).toBe('DEGRADED');
    h.p.agentConnected(false, ms(110));
    h.p.tick(ms(500));
    expect(h.p.failover.failovers).toBe(0);
    expect(h.p.replicas.describe()).toBe('primary=primary backup=backup');
  });
});

describe('SilenceDetector', () => {
  it('counts silence from the first backup frame the primary did not follow, and forgets it when the primary speaks', () => {
    const s = new SilenceDetector({ silenceMs: 20, probeTimeoutMs: 0, minStandbyFrames: 2 });
    s.noteStandby(ms(1));
    expect(s.tick(ms(100), true)).toBe('quiet'); // one frame is not enough
    s.noteStandby(ms(2));
    expect(s.silentForUs(ms(21))).toBe(ms(20));
    s.noteActive(ms(21));
    expect(s.tick(ms(50), true)).toBe('quiet');
    s.noteStandby(ms(60));
    s.noteStandby(ms(61));
    expect(s.tick(ms(80), true)).toBe('dead'); // no probe configured
  });

  it('with fewer frames than minStandbyFrames, suspects after fewFramesSilenceMs instead (a lone SYN-ACK), or never with 0', () => {
    const s = new SilenceDetector({ silenceMs: 20, probeTimeoutMs: 0, minStandbyFrames: 2, fewFramesSilenceMs: 100 });
    s.noteStandby(ms(1));
    expect(s.deadlineUs()).toBe(ms(101));
    expect(s.tick(ms(100), true)).toBe('quiet');
    expect(s.tick(ms(101), true)).toBe('dead');
    const never = new SilenceDetector({ silenceMs: 20, probeTimeoutMs: 0, minStandbyFrames: 2, fewFramesSilenceMs: 0 });
    never.noteStandby(ms(1));
    expect(never.deadlineUs()).toBeNull();
    expect(never.tick(ms(5000), true)).toBe('quiet');
  });

  it('counts a frame as the segments it carries (a GSO super-frame)', () => {
    const s = new SilenceDetector({ silenceMs: 20, probeTimeoutMs: 0, minStandbyFrames: 2 });
    s.noteStandby(ms(1), 45);
    expect(s.silentForUs(ms(21))).toBe(ms(20));
    expect(s.tick(ms(21), true)).toBe('dead');
  });
});

describe('CarrierDebouncer', () => {
  it('ignores a flap shorter than the hold time and counts it', () => {
    const c = new CarrierDebouncer(6);
    expect(c.down(ms(100))).toBe(ms(106));
    expect(c.expired(ms(105))).toBe(false);
    expect(c.up()).toBe(true);
    expect(c.expired(ms(110))).toBe(false);
    expect(c.flaps).toBe(1);
  });

  it('declares a port dead once its carrier stayed down for the hold time', () => {
    const c = new CarrierDebouncer(6);
    c.down(ms(100));
    c.down(ms(103)); // a repeated down does not restart the clock
    expect(c.expired(ms(106))).toBe(true);
  });
});

describe('probe and announcement frames', () => {
  const vmFrame = tcpFrame({ from: 'vm', seq: 1, ack: 1, payload: 'x' });
  it('builds an echo request from the client to the VM out of a VM frame, and recognizes its reply', () => {
    const probe = buildEchoProbe(vmFrame, 7)!;
    const d = decodeFrame(probe);
    expect(d.ipv4.src).toBe(Buffer.from(CLIENT_IP.split('.').map(Number)).readUInt32BE());
    expect(d.ipv4.dst).toBe(Buffer.from(VM_IP.split('.').map(Number)).readUInt32BE());
    expect(probe.subarray(0, 6).equals(vmFrame.subarray(6, 12))).toBe(true);
    expect(isProbeReply(decodeFrame(icmpEcho({ from: 'vm', reply: true, id: PROBE_ECHO_ID })))).toBe(true);
    expect(isProbeReply(decodeFrame(icmpEcho({ from: 'vm', reply: true, id: 0x4242 })))).toBe(false);
    const v6 = buildEchoProbe(tcpFrame({ from: 'vm', v6: true, seq: 1 }), 1)!;
    expect(l4ChecksumIsValid(v6)).toBe(true);
  });

  it('announces the VM address with a gratuitous ARP and an unsolicited NA', () => {
    const arp = buildAnnouncement(vmFrame)!;
    expect(arp.readUInt16BE(12)).toBe(0x0806);
    expect(arp.subarray(0, 6).equals(Buffer.alloc(6, 0xff))).toBe(true);
    const na = buildAnnouncement(tcpFrame({ from: 'vm', v6: true, seq: 1 }))!;
    const d = decodeFrame(na);
    expect(d.l4).toBe('icmpv6');
    expect(d.icmp.type).toBe(136);
    expect(l4ChecksumIsValid(na)).toBe(true);
  });
});

describe('policy counters', () => {
  it('a VM sending random ethertypes cannot grow the policy classes (and metric series) without bound', () => {
    const h = harness();
    const { ethernet } = require('../../support/frames');
    for (let t = 0x9000; t < 0x9000 + 500; t++) h.p.fromVm(0, ethernet({}, t, Buffer.alloc(46)), ms(1));
    const classes = Object.keys(h.p.policyActions);
    expect(classes.length).toBeLessThanOrEqual(33);
    expect(h.p.policyActions['ethertype-other/drop']).toBeGreaterThan(400);
  });
});

describe('silence and a backup that trails', () => {
  it('does not suspect the primary when the backup only repeats, later, what the primary already said', () => {
    const quiet = harness();
    established(quiet);
    quiet.p.fromVm(0, fromVm({ seq: P + 1, ack: C + 6, flags: 'PA', payload: 'reply' }), ms(7));
    quiet.p.fromVm(1, fromVm({ seq: B + 1, ack: C + 6, flags: 'PA', payload: 'reply' }), ms(8));
    quiet.p.fromVm(0, fromVm({ seq: P + 6, ack: C + 6, flags: 'PA', payload: 'more' }), ms(9));
    quiet.p.fromVm(1, fromVm({ seq: B + 6, ack: C + 6, flags: 'PA', payload: 'more' }), ms(10));
    quiet.p.tick(ms(100));
    quiet.p.tick(ms(200));
    expect(quiet.p.failover.probesSent).toBe(0);
    expect(quiet.out.client).toHaveLength(4); // SYN-ACK, the ACK of the request and both replies, released
  });
});
