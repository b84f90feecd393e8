/**
 * release/held.ts: the primary's output waits here until the comparison
 * says the backup said the same, then leaves per flow in the order the
 * primary sent it, never with an ACK ahead of the backup's.
 */
import { FlowHeldQueue, HeldFrame, HeldQueues, ReleaseGate } from '../../../lib/release/held';
import { SlabPool } from '../../../lib/packet/slab';
import { VirtioNetHeader } from '../../../lib/io/port';
import { FailoverRecord } from '../../../lib/pipeline/events';
import { tcpFrame, udpFrame } from '../../support/frames';

interface Sent { frame: Buffer; vnet?: VirtioNetHeader }

function rig(pool: SlabPool | null = null) {
  const sent: Sent[] = [];
  const queues = new HeldQueues((frame, vnet) => sent.push({ frame: Buffer.from(frame), vnet }), pool);
  return { sent, queues, payloads: () => sent.map((s) => s.frame.subarray(s.frame.length - payloadLengthOf(s.frame)).toString('latin1')) };
}

/** The TCP/UDP payload of a frame built by the test builder (IPv4, no options). */
function payloadLengthOf(frame: Buffer): number {
  const ipLen = frame.readUInt16BE(14 + 2);
  const proto = frame[14 + 9];
  const l4 = proto === 6 ? (frame[14 + 20 + 12] >> 4) * 4 : 8;
  return ipLen - 20 - l4;
}

/** A primary data segment whose stream ends at `end` (relative), optionally carrying an ACK. */
function segment(text: string, opts: { ack?: number; rst?: boolean } = {}): Buffer {
  return tcpFrame({ from: 'vm', seq: 5001, ack: opts.ack ?? 0, flags: opts.rst ? 'R' : opts.ack !== undefined ? 'PA' : 'P', payload: text });
}

function holdSegment(q: FlowHeldQueue, text: string, end: number, opts: { ack?: number; rst?: boolean; atUs?: number; vnet?: VirtioNetHeader } = {}): HeldFrame {
  const frame = segment(text, opts);
  return q.hold(frame, null, end, opts.rst ?? false, opts.ack !== undefined, opts.ack ?? 0, text.length, opts.atUs ?? 0, opts.vnet);
}

const stream = (matchedEnd: number, more: Partial<ReleaseGate> = {}): ReleaseGate => ({ matchedEnd, isStream: true, rstAgreed: false, backupAck: null, ...more });
const datagrams = (matchedEnd: number): ReleaseGate => ({ matchedEnd, isStream: false, rstAgreed: false, backupAck: null });

describe('FlowHeldQueue', () => {
  it('releases nothing and sends nothing when empty', () => {
    const { sent, queues } = rig();
    const q = new FlowHeldQueue(queues, 'tcp a > b');
    expect(q.releaseReady(stream(1000, { backupAck: 1000 }))).toBe(0);
    expect(q.releaseAll()).toBe(0);
    expect(sent).toHaveLength(0);
    expect([q.length, q.bytes, q.releasedEnd, q.releasedMaxAck]).toEqual([0, 0, null, null]);
  });

  it('counts what it holds in frames and frame bytes, in the flow and in the whole release stage', () => {
    const { queues } = rig();
    const q = new FlowHeldQueue(queues, 'tcp a > b');
    const a = holdSegment(q, 'hello', 6);
    const b = holdSegment(q, 'world!', 12);
    expect(q.length).toBe(2);
    expect(q.bytes).toBe(a.frame.length + b.frame.length);
    expect(queues.counters()).toMatchObject({ held_frames: 2, held_bytes: a.frame.length + b.frame.length, released_frames: 0 });
  });

  it('releases a prefix of the stream as far as the backup matched, and the rest once it matches more', () => {
    const { sent, queues, payloads } = rig();
    const q = new FlowHeldQueue(queues, 'tcp a > b');
    const first = holdSegment(q, 'HTTP/1.1 ', 10);
    const second = holdSegment(q, '200 OK', 16);
    expect(q.releaseReady(stream(9))).toBe(0); // one byte short of the first frame's end
    expect(q.releaseReady(stream(12))).toBe(1);
    expect(payloads()).toEqual(['HTTP/1.1 ']);
    expect(q.releasedEnd).toBe(10);
    expect([q.length, q.bytes]).toEqual([1, second.frame.length]);
    expect(q.releaseReady(stream(16))).toBe(1);
    expect(payloads()).toEqual(['HTTP/1.1 ', '200 OK']);
    expect(sent[0].frame.equals(first.frame)).toBe(true);
    expect(q.releasedEnd).toBe(16);
    expect([q.releasedFrames, q.releasedPayloadBytes]).toEqual([2, 15]);
    expect(queues.counters()).toMatchObject({ released_bytes: first.frame.length + second.frame.length });
    expect([q.length, q.bytes]).toEqual([0, 0]);
  });

  it('keeps the primary\'s order: a later frame that could go waits behind an earlier one that cannot', () => {
    const { queues, payloads } = rig();
    const q = new FlowHeldQueue(queues, 'tcp a > b');
    holdSegment(q, 'ack ahead', 10, { ack: 2000 }); // its ACK runs ahead of the backup's
    holdSegment(q, 'no ack', 16);
    expect(q.releaseReady(stream(16, { backupAck: 1500 }))).toBe(0);
    expect(payloads()).toEqual([]);
    expect(q.releaseReady(stream(16, { backupAck: 2000 }))).toBe(2);
    expect(payloads()).toEqual(['ack ahead', 'no ack']);
  });

  it('never releases a frame whose ACK is ahead of the backup\'s, nor one with an ACK before the backup acknowledged anything', () => {
    const { queues } = rig();
    const q = new FlowHeldQueue(queues, 'tcp a > b');
    holdSegment(q, 'x', 2, { ack: 1019 });
    expect(q.releaseReady(stream(2, { backupAck: null }))).toBe(0);
    expect(q.releaseReady(stream(2, { backupAck: 1018 }))).toBe(0);
    expect(q.releaseReady(stream(2, { backupAck: 1019 }))).toBe(1);
    expect(q.releasedMaxAck).toBe(1019);
  });

  it('judges ACKs and stream ends across the 2^32 wrap (RFC 1982)', () => {
    const { queues } = rig();
    const q = new FlowHeldQueue(queues, 'tcp a > b');
    const nearTop = 0xffff_fff0;
    holdSegment(q, 'before the wrap', 0xffff_ffff, { ack: nearTop });
    holdSegment(q, 'after', 4, { ack: 0x0000_0010 }); // end and ACK both wrapped past zero
    // A bare `<` would take 4 for "before" 0xffffffff and 0x10 for "below" 0xfffffff0.
    expect(q.releaseReady(stream(0xffff_ffff, { backupAck: 0xffff_fff8 }))).toBe(1);
    expect(q.releasedEnd).toBe(0xffff_ffff);
    expect(q.releaseReady(stream(0xffff_ffff, { backupAck: 0x20 }))).toBe(0); // matched only up to the wrap
    expect(q.releaseReady(stream(4, { backupAck: 0x0f }))).toBe(0); // ACK one ahead, after the wrap
    expect(q.releaseReady(stream(4, { backupAck: 0x10 }))).toBe(1);
    expect(q.releasedEnd).toBe(4);
    expect(q.releasedMaxAck).toBe(0x10);
  });

  it('holds a reset until both replicas reset', () => {
    const { queues } = rig();
    const q = new FlowHeldQueue(queues, 'tcp a > b');
    q.hold(segment('', { rst: true }), null, 1, true, false, 0, 0, 0);
    expect(q.releaseReady(stream(1))).toBe(0);
    expect(q.releaseReady(stream(1, { rstAgreed: true }))).toBe(1);
  });

  it('releases datagrams by count, whatever ACK they carry, and starts counting again after a checkpoint', () => {
    const { queues, payloads } = rig();
    const q = new FlowHeldQueue(queues, 'udp a > b', false);
    for (const [i, text] of ['one', 'two', 'three'].entries()) {
      q.hold(udpFrame({ from: 'vm', payload: text }), null, i + 1, false, true, 0xdead, text.length, 0);
    }
    expect(q.releaseReady(datagrams(2))).toBe(2);
    expect(payloads()).toEqual(['one', 'two']);
    expect(q.releasedEnd).toBe(2);
    q.restartCount();
    expect(q.releasedEnd).toBeNull();
    expect(q.releaseReady(datagrams(3))).toBe(1);
    expect(q.releasedEnd).toBe(3);
  });

  it('keeps its released point after a checkpoint on a stream (only datagram counts restart)', () => {
    const { queues } = rig();
    const q = new FlowHeldQueue(queues, 'tcp a > b');
    holdSegment(q, 'abc', 4);
    q.releaseReady(stream(4));
    q.restartCount();
    expect(q.releasedEnd).toBe(4);
  });

  it('releases everything it holds in order, ungated, when the flow goes on unprotected', () => {
    const { sent, queues, payloads } = rig();
    const q = new FlowHeldQueue(queues, 'tcp a > b');
    holdSegment(q, 'first', 6);
    holdSegment(q, 'second', 12, { ack: 9999 });
    holdSegment(q, 'third', 17);
    q.releaseReady(stream(6));
    expect(q.releaseAll()).toBe(2);
    expect(payloads()).toEqual(['first', 'second', 'third']);
    expect([q.length, q.bytes]).toEqual([0, 0]);
    expect(queues.counters().held_frames).toBe(0);
    // Nothing is sent twice, whoever asks next.
    expect(q.releaseAll()).toBe(0);
    expect(queues.releaseAll()).toBe(0);
    expect(sent).toHaveLength(3);
  });

  it('keeps order and accounting across many partial releases (its array is compacted on the way)', () => {
    const { queues, payloads } = rig();
    const q = new FlowHeldQueue(queues, 'tcp a > b');
    const texts = Array.from({ length: 300 }, (_, i) => `segment ${String(i).padStart(3, '0')};`);
    let end = 1;
    const ends: number[] = [];
    for (const t of texts) {
      end += t.length;
      ends.push(end);
      holdSegment(q, t, end);
    }
    for (let i = 6; i < texts.length; i += 7) q.releaseReady(stream(ends[i]));
    expect(payloads()).toEqual(texts.slice(0, q.releasedFrames));
    expect(q.length).toBe(texts.length - q.releasedFrames);
    q.releaseReady(stream(end));
    expect(payloads()).toEqual(texts);
    expect([q.length, q.bytes, queues.counters().held_bytes]).toEqual([0, 0, 0]);
    expect(q.releasedPayloadBytes).toBe(texts.join('').length);
  });

  it('counts frames sent around it unchecked apart from released ones', () => {
    const { queues } = rig();
    const q = new FlowHeldQueue(queues, 'tcp a > b');
    q.notePassed(100);
    q.notePassed(20);
    expect([q.passedFrames, q.passedPayloadBytes]).toEqual([2, 120]);
    expect([q.releasedFrames, q.releasedPayloadBytes]).toEqual([0, 0]);
    expect(queues.counters().released_frames).toBe(0);
  });
});

describe('HeldQueues', () => {
  it('sends a released frame with the virtio-net header it came with', () => {
    const { sent, queues } = rig();
    const q = new FlowHeldQueue(queues, 'tcp a > b');
    const vnet: VirtioNetHeader = { flags: 1, gsoType: 1, hdrLen: 54, gsoSize: 1448, csumStart: 34, csumOffset: 16 };
    holdSegment(q, 'gso', 4, { vnet });
    holdSegment(q, 'plain', 9);
    q.releaseReady(stream(9));
    expect(sent.map((s) => s.vnet)).toEqual([vnet, undefined]);
  });

  it('says which held frame is the oldest across flows, skipping those released', () => {
    const { queues } = rig();
    const a = new FlowHeldQueue(queues, 'tcp a');
    const b = new FlowHeldQueue(queues, 'tcp b');
    expect(queues.oldest()).toBeNull();
    const a1 = holdSegment(a, 'a1', 3, { atUs: 10 });
    const b1 = holdSegment(b, 'b1', 3, { atUs: 20 });
    holdSegment(a, 'a2', 5, { atUs: 30 });
    expect(queues.oldest()).toBe(a1);
    a.releaseReady(stream(3));
    expect(queues.oldest()).toBe(b1);
    b.releaseReady(stream(3));
    expect(queues.oldest()?.heldAtUs).toBe(30);
    a.releaseReady(stream(5));
    expect(queues.oldest()).toBeNull();
  });

  it('releases every flow\'s held output in arrival order after a checkpoint, each frame once', () => {
    const { sent, queues, payloads } = rig();
    const a = new FlowHeldQueue(queues, 'tcp a');
    const b = new FlowHeldQueue(queues, 'tcp b');
    holdSegment(a, 'a1', 3);
    holdSegment(b, 'b1', 3);
    holdSegment(a, 'a2', 5);
    holdSegment(b, 'b2', 5);
    b.releaseReady(stream(3)); // b1 is already out
    queues.handleEvent({ type: 'checkpoint-done', epoch: 1 });
    expect(payloads()).toEqual(['b1', 'a1', 'a2', 'b2']);
    expect(queues.counters()).toMatchObject({ released_frames: 4, held_frames: 0, held_bytes: 0, released_payload_bytes: 8 });
    expect([a.releasedEnd, b.releasedEnd]).toEqual([5, 5]);
    queues.handleEvent({ type: 'checkpoint-done', epoch: 2 });
    expect(sent).toHaveLength(4);
  });

  it.each([
    { type: 'degraded', why: 'checkpoint 3 failed' },
    { type: 'backup-lost', slot: 1, cause: 'carrier' },
  ] as const)('releases everything held when comparison stops ($type)', (ev) => {
    const { queues, payloads } = rig();
    const q = new FlowHeldQueue(queues, 'tcp a');
    holdSegment(q, 'unconfirmed', 12, { ack: 77 });
    queues.handleEvent(ev);
    expect(payloads()).toEqual(['unconfirmed']);
  });

  it('never sends a dead primary\'s unconfirmed output at failover, and counts it in the record', () => {
    const pool = new SlabPool(true, false, 4, 4096);
    const { sent, queues, payloads } = rig(pool);
    const q = new FlowHeldQueue(queues, 'tcp a');
    const copy = (f: Buffer) => ({ frame: pool.copy(f), slab: pool.lastSlab });
    const confirmed = copy(segment('confirmed'));
    q.hold(confirmed.frame, confirmed.slab, 10, false, false, 0, 9, 0);
    const lost = [copy(segment('lost one')), copy(segment('lost two'))];
    lost.forEach((c, i) => q.hold(c.frame, c.slab, 20 + i, false, false, 0, 8, 0));
    const slab = confirmed.slab!;
    expect(slab.live).toBe(3);
    q.releaseReady(stream(10));
    expect(slab.live).toBe(2);
    const record = { discardedFrames: 1 } as FailoverRecord;
    queues.handleEvent({ type: 'failover', survivor: 1, record });
    expect(payloads()).toEqual(['confirmed']);
    expect(record.discardedFrames).toBe(3); // adds to what others counted
    expect(slab.live).toBe(0); // the copies' memory is given back
    expect(queues.counters()).toMatchObject({ discarded_frames: 2, held_frames: 0, held_bytes: 0, released_frames: 1 });
    expect([q.length, q.bytes]).toEqual([0, 0]);
    // A later comparison step on the flow finds nothing to send.
    expect(q.releaseReady(stream(100, { rstAgreed: true, backupAck: 1 << 30 }))).toBe(0);
    expect(sent).toHaveLength(1);
  });

  it('gives a released frame\'s slab back to its pool', () => {
    const pool = new SlabPool(true, false, 4, 4096);
    const { queues } = rig(pool);
    const q = new FlowHeldQueue(queues, 'tcp a');
    const frame = pool.copy(segment('pooled'));
    const slab = pool.lastSlab!;
    q.hold(frame, slab, 7, false, false, 0, 6, 0);
    expect(slab.live).toBe(1);
    queues.releaseAll();
    expect(slab.live).toBe(0);
  });

  it('ignores the events that do not concern held output', () => {
    const { sent, queues } = rig();
    const q = new FlowHeldQueue(queues, 'tcp a');
    holdSegment(q, 'kept', 5);
    queues.handleEvent({ type: 'checkpoint-begin', epoch: 4 });
    queues.handleEvent({ type: 'reprotect', epoch: 5, slot: 1 });
    expect(sent).toHaveLength(0);
    expect(queues.counters().held_frames).toBe(1);
  });

  it('keeps its totals equal to the sum of the flows\' held frames through every kind of exit', () => {
    const { queues } = rig();
    const flows = [0, 1, 2].map((i) => new FlowHeldQueue(queues, `tcp ${i}`));
    let end = 1;
    for (let i = 0; i < 30; i++) {
      end += 3;
      holdSegment(flows[i % 3], `f${String(i).padStart(2, '0')}`, end);
    }
    const check = () => {
      const c = queues.counters();
      expect(c.held_frames).toBe(flows.reduce((n, f) => n + f.length, 0));
      expect(c.held_bytes).toBe(flows.reduce((n, f) => n + f.bytes, 0));
    };
    flows[0].releaseReady(stream(40));
    check();
    flows[1].releaseAll();
    check();
    queues.discardAll();
    check();
    expect(queues.counters().held_frames).toBe(0);
    const c = queues.counters();
    expect(c.released_frames + c.discarded_frames).toBe(30);
  });
});

describe('how long output was held', () => {
  it('files one wait per release step, its oldest frame\'s, on the pipeline clock; a checkpoint\'s releaseAll is one step too', () => {
    let nowUs = 0;
    const queues = new HeldQueues(() => {}, null, () => nowUs);
    const q = new FlowHeldQueue(queues, 'f');
    holdSegment(q, 'aa', 2, { atUs: 1_000 });
    holdSegment(q, 'bb', 4, { atUs: 1_500 });
    holdSegment(q, 'cc', 6, { atUs: 2_000 });
    nowUs = 4_000;
    expect(q.releaseReady(stream(4))).toBe(2); // held 3 ms and 2.5 ms: one observation, 3 ms
    let w = queues.holdWait.snapshot();
    expect(w.seconds.count).toBe(1);
    expect(w.seconds.sum).toBeCloseTo(0.003, 9);
    expect(q.releaseReady(stream(4))).toBe(0); // nothing released: nothing filed
    expect(queues.holdWait.snapshot().seconds.count).toBe(1);
    nowUs = 52_000;
    expect(queues.releaseAll()).toBe(1); // the checkpoint released 'cc', held 50 ms
    w = queues.holdWait.snapshot();
    expect(w.seconds.count).toBe(2);
    expect(w.maxMs).toBeCloseTo(50, 6);
    expect(w.maxLast10sMs).toBeCloseTo(50, 6);
  });
});
