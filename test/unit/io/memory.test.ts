import { MemoryPort, PortUsageError, ReceivedFrame } from '../../../lib/io';
import { ethernetFrame } from '../../support/pcap-builders';

describe('MemoryPort', () => {
  it('delivers injected buffers as one batch stamped by its clock', () => {
    const port = new MemoryPort('vm0', () => 42);
    const batches: (readonly ReceivedFrame[])[] = [];
    port.onBatch((batch) => batches.push(batch));
    port.inject([ethernetFrame(1), ethernetFrame(2)]);
    expect(batches).toEqual([[{ frame: ethernetFrame(1), timeUs: 42 }, { frame: ethernetFrame(2), timeUs: 42 }]]);
  });

  it('delivers injected ReceivedFrames with their own timestamps', () => {
    const port = new MemoryPort();
    const receiver = jest.fn();
    port.onBatch(receiver);
    const frames = [{ frame: ethernetFrame(1), timeUs: 7 }];
    port.inject(frames);
    expect(receiver).toHaveBeenCalledWith(frames);
  });

  it('holds sent frames as pending until flush, then moves them to sent', () => {
    const port = new MemoryPort();
    port.send(ethernetFrame(1));
    port.send(ethernetFrame(2));
    expect(port.pending).toEqual([ethernetFrame(1), ethernetFrame(2)]);
    expect(port.sent).toEqual([]);
    port.flush();
    expect(port.pending).toEqual([]);
    expect(port.sent).toEqual([ethernetFrame(1), ethernetFrame(2)]);
    port.send(ethernetFrame(3));
    port.flush();
    expect(port.sent).toHaveLength(3);
  });

  it('copies sent frames, so the sender may reuse its buffer', () => {
    const port = new MemoryPort();
    const scratch = ethernetFrame(1);
    port.send(scratch);
    scratch.fill(0);
    port.flush();
    expect(port.sent[0]).toEqual(ethernetFrame(1));
  });

  it('counts frames received on inject and transmitted on flush', () => {
    const port = new MemoryPort();
    port.onBatch(() => {});
    port.inject([ethernetFrame(1, 100)]);
    port.send(ethernetFrame(2));
    expect(port.stats()).toEqual({ rxFrames: 1, rxBytes: 114, txFrames: 0, txBytes: 0, rxDrops: 0, txErrors: 0 });
    port.flush();
    expect(port.stats()).toMatchObject({ txFrames: 1, txBytes: 60 });
  });

  it('refuses to inject with no receiver, rather than drop frames unseen', () => {
    expect(() => new MemoryPort('vm1').inject([ethernetFrame(1)])).toThrow(new PortUsageError('vm1', 'inject with no receiver; call onBatch first'));
  });

  it('refuses to send or inject after close', async () => {
    const port = new MemoryPort();
    port.onBatch(() => {});
    await port.close();
    expect(() => port.send(ethernetFrame(1))).toThrow(/send after close/);
    expect(() => port.inject([ethernetFrame(1)])).toThrow(/inject after close/);
  });
});
