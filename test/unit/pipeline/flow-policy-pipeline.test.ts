/** The policy table in the pipeline: what `pass` and `drop-backup-only` flows do, and what a failover does to them. */
import { BACKUP, PRIMARY } from '../../../lib/compare';
import { decodeFrame } from '../../../lib/packet/frame';
import { PipelineConfig } from '../../../lib/pipeline';
import { B, C, Harness, P, SYN_OPTS, ackOf, harness, seqOf } from '../../support/pipeline-harness';
import { l4ChecksumIsValid, tcpFrame, udpFrame } from '../../support/frames';

const client = (sport: number, dport: number, s: Parameters<typeof tcpFrame>[0]) => tcpFrame({ from: 'client', sport, dport, ...s });
const vm = (sport: number, dport: number, s: Parameters<typeof tcpFrame>[0]) => tcpFrame({ from: 'vm', sport, dport, ...s });
const flagsOf = (f: Buffer) => decodeFrame(f).tcp.flags;
const portsOf = (f: Buffer) => { const d = decodeFrame(f); return [d.tcp.srcPort, d.tcp.dstPort]; };
const payloadOf = (f: Buffer) => Buffer.from(decodeFrame(f).payload()).toString();
const RST = 0x04;

/** A connection from client port `cport` to VM port `vport`: SYN, both SYN-ACKs, ACK. */
function open(h: Harness, cport: number, vport: number, t: number): void {
  h.p.fromClient(client(cport, vport, { seq: C, flags: 'S', options: SYN_OPTS }), t);
  h.p.fromVm(PRIMARY, vm(vport, cport, { seq: P, ack: C + 1, flags: 'SA', options: { ...SYN_OPTS, ts: [7000, 111] } }), t + 1);
  h.p.fromVm(BACKUP, vm(vport, cport, { seq: B, ack: C + 1, flags: 'SA', options: { ...SYN_OPTS, ts: [99000, 111] } }), t + 2);
  h.p.fromClient(client(cport, vport, { seq: C + 1, ack: P + 1, flags: 'A' }), t + 3);
}

const table = (rules: PipelineConfig['flowPolicy']) => harness({ flowPolicy: rules });
const flowCounters = (h: Harness) => h.p.stageCounters().flow;

describe('flow policy: pass', () => {
  it('releases the primary\'s output at once, with no answer from the backup, and counts the flow as unprotected', () => {
    const h = table([{ protocol: 'tcp', port: 22, action: 'pass' }]);
    h.p.fromClient(client(40000, 22, { seq: C, flags: 'S', options: SYN_OPTS }), 1);
    h.p.fromVm(PRIMARY, vm(22, 40000, { seq: P, ack: C + 1, flags: 'SA', options: SYN_OPTS }), 2);
    expect(h.out.client).toHaveLength(1); // the SYN-ACK did not wait for the backup's
    h.p.fromVm(PRIMARY, vm(22, 40000, { seq: P + 1, ack: C + 1, flags: 'PA', payload: 'SSH-2.0-primary' }), 3);
    expect(h.out.client.map(payloadOf)).toEqual(['', 'SSH-2.0-primary']);
    h.p.tick(1_000_000);
    expect(h.out.checkpoints).toEqual([]);
    expect(flowCounters(h)).toMatchObject({ policy_pass_flows: 1, policy_drop_backup_only_flows: 0, unprotected: 1 });
    expect(h.p.reports[0]).toMatchObject({ key: 'tcp 10.77.0.1:40000 > 10.77.0.2:22', policy: 'pass' });
  });

  it('asks for no checkpoint when the backup says something else, and never sends the backup\'s output', () => {
    const h = table([{ port: '20-25', action: 'pass' }]);
    open(h, 40000, 22, 1);
    h.p.fromVm(PRIMARY, vm(22, 40000, { seq: P + 1, ack: C + 1, flags: 'PA', payload: 'primary' }), 10);
    h.p.fromVm(BACKUP, vm(22, 40000, { seq: B + 1, ack: C + 1, flags: 'PA', payload: 'BACKUP!' }), 11);
    h.p.tick(1_000_000);
    expect(h.out.checkpoints).toEqual([]);
    expect(h.p.stageCounters().compare.mismatches).toBe(0);
    expect(h.out.client.map(payloadOf)).toEqual(['', 'primary']);
    expect(h.out.client.every((f) => seqOf(f) !== B && seqOf(f) !== B + 1)).toBe(true);
  });

  it('keeps the backup warm: it gets every client frame, acknowledgements translated into its own space', () => {
    const h = table([{ port: 22, action: 'pass' }]);
    open(h, 40000, 22, 1);
    h.p.fromClient(client(40000, 22, { seq: C + 1, ack: P + 1, flags: 'PA', payload: 'ls\n' }), 10);
    expect(h.out.backup).toHaveLength(3);
    expect(h.out.primary).toHaveLength(3);
    expect(h.out.backup.slice(1).map(ackOf)).toEqual([B + 1, B + 1]);
    expect(h.out.primary.slice(1).map(ackOf)).toEqual([P + 1, P + 1]);
    expect(payloadOf(h.out.backup[2])).toBe('ls\n');
    expect(h.out.backup.every(l4ChecksumIsValid)).toBe(true);
  });

  it('after a checkpoint by copy, translates nothing for the backup: it now holds the primary\'s connection', () => {
    const h = table([{ port: 22, action: 'pass' }]);
    open(h, 40001, 22, 1);
    open(h, 40000, 80, 10);
    h.p.fromVm(PRIMARY, vm(80, 40000, { seq: P + 1, ack: C + 1, flags: 'PA', payload: 'primary' }), 20);
    h.p.fromVm(BACKUP, vm(80, 40000, { seq: B + 1, ack: C + 1, flags: 'PA', payload: 'BACKUP!' }), 21);
    expect(h.out.checkpoints).toHaveLength(1);
    h.p.checkpointDone(h.out.checkpoints[0].epoch, 30);
    const before = h.out.backup.length;
    h.p.fromClient(client(40001, 22, { seq: C + 1, ack: P + 1, flags: 'PA', payload: 'ls\n' }), 40);
    expect(h.out.backup.slice(before).map(ackOf)).toEqual([P + 1]);
  });

  it('leaves flows the table does not match compared as before: held until the backup agrees, a checkpoint when it does not', () => {
    const h = table([{ port: 22, action: 'pass' }]);
    open(h, 40000, 80, 1);
    h.p.fromVm(PRIMARY, vm(80, 40000, { seq: P + 1, ack: C + 1, flags: 'PA', payload: 'primary' }), 10);
    expect(h.out.client.map(payloadOf)).toEqual(['']);
    h.p.fromVm(BACKUP, vm(80, 40000, { seq: B + 1, ack: C + 1, flags: 'PA', payload: 'BACKUP!' }), 11);
    expect(h.out.checkpoints.map((c) => c.reason)).toEqual(['mismatch']);
    expect(flowCounters(h)).toMatchObject({ policy_pass_flows: 0, unprotected: 0 });
    expect(h.p.reports[0].policy).toBeUndefined();
  });
});

describe('flow policy: drop-backup-only', () => {
  it('never sends the flow\'s client frames to the backup, and releases the primary\'s output unchecked', () => {
    const h = table([{ protocol: 'tcp', cidr: '10.77.0.0/24', action: 'drop-backup-only' }]);
    h.p.fromClient(client(40000, 80, { seq: C, flags: 'S', options: SYN_OPTS }), 1);
    h.p.fromVm(PRIMARY, vm(80, 40000, { seq: P, ack: C + 1, flags: 'SA', options: SYN_OPTS }), 2);
    h.p.fromClient(client(40000, 80, { seq: C + 1, ack: P + 1, flags: 'A' }), 3);
    h.p.fromClient(client(40000, 80, { seq: C + 1, ack: P + 1, flags: 'PA', payload: 'GET /' }), 4);
    h.p.fromVm(PRIMARY, vm(80, 40000, { seq: P + 1, ack: C + 6, flags: 'PA', payload: 'reply' }), 5);
    expect(h.out.primary).toHaveLength(3);
    expect(h.out.backup).toEqual([]);
    expect(h.out.client.map(payloadOf)).toEqual(['', 'reply']);
    h.p.tick(1_000_000);
    expect(h.out.checkpoints).toEqual([]);
    expect(flowCounters(h)).toMatchObject({ policy_drop_backup_only_flows: 1, unprotected: 1 });
    expect(h.p.stageCounters().ingress.policy_primary_only).toBe(3);
  });

  it('keeps datagrams of a matching UDP flow from the backup, and no others', () => {
    const h = table([{ protocol: 'udp', port: 514, action: 'drop-backup-only' }]);
    h.p.fromClient(udpFrame({ from: 'client', dport: 514, payload: 'log line' }), 1);
    h.p.fromClient(udpFrame({ from: 'client', dport: 53, payload: 'query' }), 2);
    expect(h.out.primary.map((f) => decodeFrame(f).udp.dstPort)).toEqual([514, 53]);
    expect(h.out.backup.map((f) => decodeFrame(f).udp.dstPort)).toEqual([53]);
    h.p.fromVm(PRIMARY, udpFrame({ from: 'vm', sport: 514, payload: 'ack' }), 3);
    expect(h.out.client).toHaveLength(1);
    expect(flowCounters(h).policy_drop_backup_only_flows).toBe(1);
  });
});

describe('flow policy across a failover', () => {
  it('carries compared flows over, and resets a pass flow, which the survivor never had compared', () => {
    const h = table([{ port: 22, action: 'pass' }]);
    open(h, 40000, 80, 1);
    open(h, 40001, 22, 10);
    h.p.fromVm(PRIMARY, vm(22, 40001, { seq: P + 1, ack: C + 1, flags: 'PA', payload: 'primary says' }), 20);
    h.p.fromVm(BACKUP, vm(22, 40001, { seq: B + 1, ack: C + 1, flags: 'PA', payload: 'backup says!' }), 21);
    expect(h.p.failoverNow('agent', 'test', 30)).toBe('promoted');
    expect(h.p.failoverHistory[0]).toMatchObject({ flowsCarried: 1, flowsLost: 1 });
    expect(h.p.stageCounters().compare.policy_pass_flows_reset).toBe(1);

    // The survivor speaks on the pass flow: dropped, and its end reset at its own ACK.
    const clientBefore = h.out.client.length;
    const survivorBefore = h.out.backup.length;
    h.p.fromVm(BACKUP, vm(22, 40001, { seq: B + 13, ack: C + 1, flags: 'PA', payload: 'more' }), 40);
    expect(h.out.client).toHaveLength(clientBefore);
    const toSurvivor = h.out.backup.slice(survivorBefore);
    expect(toSurvivor).toHaveLength(1);
    expect(flagsOf(toSurvivor[0])).toBe(RST);
    expect(seqOf(toSurvivor[0])).toBe(C + 1);
    expect(portsOf(toSurvivor[0])).toEqual([40001, 22]);
    expect(l4ChecksumIsValid(toSurvivor[0])).toBe(true);

    // The client speaks on it: reset at its ACK (what it expects from the dead primary), the survivor at its sequence number.
    h.p.fromClient(client(40001, 22, { seq: C + 1, ack: P + 13, flags: 'PA', payload: 'exit\n' }), 50);
    const resets = h.out.client.slice(clientBefore);
    expect(resets).toHaveLength(1);
    expect(flagsOf(resets[0])).toBe(RST);
    expect(seqOf(resets[0])).toBe(P + 13);
    expect(portsOf(resets[0])).toEqual([22, 40001]);
    expect(l4ChecksumIsValid(resets[0])).toBe(true);
    const last = h.out.backup[h.out.backup.length - 1];
    expect(flagsOf(last)).toBe(RST);
    expect(seqOf(last)).toBe(C + 1);
    expect(h.out.backup.every((f) => payloadOf(f) !== 'exit\n')).toBe(true);
    expect(h.p.stageCounters().ingress.policy_pass_resets).toBe(1);

    // The compared flow goes on, translated into the space its client knows.
    h.p.fromVm(BACKUP, vm(80, 40000, { seq: B + 1, ack: C + 1, flags: 'PA', payload: 'still here' }), 60);
    const out = h.out.client[h.out.client.length - 1];
    expect(payloadOf(out)).toBe('still here');
    expect(seqOf(out)).toBe(P + 1);
  });

  it('lets a new connection on the same ports through to the survivor after the reset', () => {
    const h = table([{ port: 22, action: 'pass' }]);
    open(h, 40001, 22, 1);
    h.p.failoverNow('agent', 'test', 30);
    const before = h.out.backup.length;
    h.p.fromClient(client(40001, 22, { seq: C + 5000, flags: 'S', options: SYN_OPTS }), 40);
    const sent = h.out.backup.slice(before);
    expect(sent).toHaveLength(1);
    expect(flagsOf(sent[0]) & 0x02).toBe(0x02);
    h.p.fromVm(BACKUP, vm(22, 40001, { seq: 77, ack: C + 5001, flags: 'SA', options: SYN_OPTS }), 41);
    expect(seqOf(h.out.client[h.out.client.length - 1])).toBe(77);
  });
});
