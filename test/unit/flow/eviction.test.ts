import { FlowTable } from '../../../lib/flow/flow-table';
import { ShadowPipeline, makePipelineConfig } from '../../../lib/pipeline';
import { tcpFrame } from '../../support/frames';

describe('eviction under a SYN flood', () => {
  it('evicts a flow marked evict-first before an older one that is not', () => {
    const evicted: string[] = [];
    const t = new FlowTable<{ halfOpen: boolean }>(3, (e) => evicted.push(e.key), (s) => s.halfOpen);
    t.getOrCreate('established', 1, () => ({ halfOpen: false }));
    t.getOrCreate('syn-1', 2, () => ({ halfOpen: true }));
    t.getOrCreate('syn-2', 3, () => ({ halfOpen: true }));
    t.getOrCreate('syn-3', 4, () => ({ halfOpen: true }));
    expect(evicted).toEqual(['syn-1']);
    expect(t.peek('established')).toBeDefined();
  });

  it('keeps an idle established connection while spoofed SYNs fill the table', () => {
    const p = new ShadowPipeline(makePipelineConfig({ maxFlows: 16 }), { toReplica: () => {}, toClient: () => {}, sendCheckpoint: () => {}, log: () => {} }, 0, true);
    p.fromClient(tcpFrame({ from: 'client', sport: 40000, seq: 1, flags: 'S' }), 1);
    p.fromVm(0, tcpFrame({ from: 'vm', dport: 40000, seq: 9, ack: 2, flags: 'SA' }), 2);
    p.fromVm(1, tcpFrame({ from: 'vm', dport: 40000, seq: 99, ack: 2, flags: 'SA' }), 3);
    p.fromClient(tcpFrame({ from: 'client', sport: 40000, seq: 2, ack: 10, flags: 'A' }), 4);
    for (let i = 0; i < 1000; i++) p.fromClient(tcpFrame({ from: 'client', sport: 1024 + i, seq: i, flags: 'S', src: `10.${(i >> 8) & 255}.${i & 255}.9` }), 10 + i);
    expect(p.flows.size).toBe(16);
    expect([...p.flows.entries()].some((e) => e.state.name.includes(':40000 '))).toBe(true);
  });
});
