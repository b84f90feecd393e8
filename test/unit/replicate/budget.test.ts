import { CheckpointBudget, flowSource, MAX_BUDGET_SOURCES } from '../../../lib/replicate/budget';
import { ShadowPipeline, makePipelineConfig } from '../../../lib/pipeline';
import { CheckpointRequest } from '../../../lib/replicate';
import { tcpFrame } from '../../support/frames';

const ms = (n: number) => n * 1000;

describe('CheckpointBudget', () => {
  it('allows a source its budget per window, then refuses until the window has passed', () => {
    const b = new CheckpointBudget({ perSource: 2, windowMs: 1000 });
    expect([b.allow('a', ms(0)), b.allow('a', ms(10)), b.allow('a', ms(20))]).toEqual([true, true, false]);
    expect(b.allow('b', ms(30))).toBe(true); // another source has its own
    expect(b.allow('a', ms(1001))).toBe(true);
    expect([b.allowed, b.denied]).toEqual([4, 1]);
  });

  it('keeps a bounded number of sources', () => {
    const b = new CheckpointBudget({ perSource: 1, windowMs: 1000 });
    for (let i = 0; i < MAX_BUDGET_SOURCES + 100; i++) b.allow(`10.0.${i >> 8}.${i & 255}`, ms(1));
    expect(b.sources).toBe(MAX_BUDGET_SOURCES);
  });

  it('finds the client address in a flow name', () => {
    expect(flowSource('tcp 10.0.0.1:40000 > 10.0.0.2:80')).toBe('10.0.0.1');
    expect(flowSource('udp [fd77::1]:5353 > [fd77::2]:53 vlan 5')).toBe('[fd77::1]');
    expect(flowSource('icmp 10.0.0.9 > 10.0.0.2 id/type 7')).toBe('10.0.0.9');
    expect(flowSource('ip proto 47 10.0.0.8 > 10.0.0.2')).toBe('10.0.0.8');
  });
});

describe('a client that makes the replicas disagree again and again', () => {
  it('spends its checkpoint budget, then its flows go on unprotected while other clients are still checkpointed', () => {
    const checkpoints: CheckpointRequest[] = [];
    const released: Buffer[] = [];
    const p = new ShadowPipeline(makePipelineConfig({ resync: 'align', checkpointBudget: { perSource: 3, windowMs: 10_000 } }), {
      toReplica: () => {}, toClient: (f) => released.push(Buffer.from(f)), sendCheckpoint: (r) => checkpoints.push(r), log: () => {},
    }, 0, true);
    let t = 1;
    const diverge = (src: string, sport: number) => {
      p.fromClient(tcpFrame({ from: 'client', src, sport, seq: 1, flags: 'S' }), ms(t++));
      p.fromVm(0, tcpFrame({ from: 'vm', dst: src, dport: sport, seq: 100, ack: 2, flags: 'SA' }), ms(t++));
      p.fromVm(1, tcpFrame({ from: 'vm', dst: src, dport: sport, seq: 900, ack: 2, flags: 'SA' }), ms(t++));
      p.fromVm(0, tcpFrame({ from: 'vm', dst: src, dport: sport, seq: 101, ack: 2, payload: 'primary says A' }), ms(t++));
      p.fromVm(1, tcpFrame({ from: 'vm', dst: src, dport: sport, seq: 901, ack: 2, payload: 'backup says B!' }), ms(t++));
      if (p.state === 'CHECKPOINTING') p.checkpointDone(checkpoints[checkpoints.length - 1].epoch, ms(t++));
    };
    for (let i = 0; i < 3; i++) diverge('10.77.0.66', 41000 + i);
    expect(checkpoints).toHaveLength(3);
    const before = released.length;
    diverge('10.77.0.66', 41010);
    expect(checkpoints).toHaveLength(3); // no fourth checkpoint for this client
    expect(released.length).toBe(before + 2); // its SYN-ACK and the primary's answer, unchecked
    expect(p.stageCounters().compare.flows_over_checkpoint_budget).toBe(1);
    expect(p.stageCounters().replicate.budget_denied).toBe(1);
    diverge('10.77.0.1', 42000); // another client is still protected
    expect(checkpoints).toHaveLength(4);
  });
});
