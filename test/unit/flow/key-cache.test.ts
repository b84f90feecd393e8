import { FlowLookup, FlowTable, flowKeyOf } from '../../../lib/flow';
import { DecodedFrame, decodeFrame } from '../../../lib/packet';
import { tcpFrame } from '../../support/frames';

const frameOf = (sport: number) => decodeFrame(tcpFrame({ from: 'client', sport, dport: 80, seq: 1, flags: 'A' }), new DecodedFrame());

describe('FlowLookup', () => {
  it('finds consecutive frames of one flow without a key lookup, and the same entry a plain lookup finds', () => {
    const table = new FlowTable<string>(8);
    const lookup = new FlowLookup(table, 'ingress');
    const a = lookup.find(frameOf(1000), 1, () => 'a')!;
    expect(lookup.find(frameOf(1000), 2)).toBe(a);
    expect(lookup.hits).toBe(1);
    expect(table.peek(flowKeyOf(frameOf(1000), 'ingress'))).toBe(a);
    expect(a.lastSeenUs).toBe(2);
  });

  it('does not confuse flows that differ in one byte of the key', () => {
    const table = new FlowTable<string>(8);
    const lookup = new FlowLookup(table, 'ingress');
    const a = lookup.find(frameOf(1000), 1, () => 'a')!;
    const b = lookup.find(frameOf(1001), 2, () => 'b')!;
    expect(b).not.toBe(a);
    expect(lookup.find(frameOf(1000), 3)).toBe(a);
    expect(lookup.hits).toBe(0);
  });

  it('never returns a flow that has left the table', () => {
    const table = new FlowTable<string>(1);
    const lookup = new FlowLookup(table, 'ingress');
    const other = new FlowLookup(table, 'ingress');
    const a = lookup.find(frameOf(1000), 1, () => 'a')!;
    other.find(frameOf(2000), 2, () => 'x'); // evicts a (the table holds one flow)
    expect(a.removed).toBe(true);
    const again = lookup.find(frameOf(1000), 3, () => 'a2')!;
    expect(again).not.toBe(a);
    expect(again.state).toBe('a2');
  });
});
