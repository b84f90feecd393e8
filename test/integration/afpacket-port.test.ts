/**
 * AfPacketPort on real veth pairs (root). Frames go in at one end of a pair
 * and must come out of the other byte for byte, in order, tags included.
 * The pairs have IPv6 off and no addresses, so the only frames on them are
 * the ones a test sends.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { join } from 'node:path';
import {
  AfPacketFrame, AfPacketInterfaceDownError, AfPacketNoSuchInterfaceError, AfPacketPermissionError, AfPacketPort,
  VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4, completePartialChecksum, toAfPacketPortError,
} from '../../lib/io/afpacket-port';
import { run, runQuietly } from '../../lib/lab/exec';
import { lengthFilter, SMALL_FRAME_MAX, SplitRingPort } from '../../lib/io/split-ring-port';
import { openOne } from '../../lib/cli/ports';
import { AfPacketOpenHandle, loadAfPacketAddon } from '../../lib/io/afpacket-native';
import { ETHERTYPE, layoutOf, tcpFrame, udpFrame } from '../support/frames';

const tag = `svmt${process.pid.toString(36)}`;
const PAIR = { a: `${tag}a`, b: `${tag}b` };
const JUMBO = { a: `${tag}ja`, b: `${tag}jb` };
const SECOND = { a: `${tag}sa`, b: `${tag}sb` };
const DOWN = `${tag}d`;

function makePair(a: string, b: string, mtu = 1500): void {
  run('ip', ['link', 'add', a, 'mtu', String(mtu), 'type', 'veth', 'peer', 'name', b, 'mtu', String(mtu)]);
  for (const ifname of [a, b]) {
    // No IPv6 on the pair: no MLD or router solicitations, nothing the test did not send.
    run('sysctl', ['-q', '-w', `net.ipv6.conf.${ifname}.disable_ipv6=1`]);
    run('ip', ['link', 'set', 'dev', ifname, 'up']);
  }
}

function removeLinks(): string[] {
  const failures: string[] = [];
  for (const ifname of [PAIR.a, JUMBO.a, SECOND.a, DOWN]) {
    if (runQuietly('ip', ['link', 'show', 'dev', ifname])) runQuietly('ip', ['link', 'del', 'dev', ifname], failures);
  }
  return failures;
}

/** Copies every frame delivered to `port` (ring views are only valid during the callback). */
class Collector {
  readonly frames: AfPacketFrame[] = [];
  batches = 0;
  constructor(port: AfPacketPort) {
    port.onBatch((batch) => {
      this.batches++;
      for (const f of batch as readonly AfPacketFrame[]) this.frames.push({ ...f, frame: Buffer.from(f.frame) });
    });
  }
  get buffers(): Buffer[] {
    return this.frames.map((f) => f.frame);
  }
}

async function waitFor(what: string, done: () => boolean, timeoutMs = 3000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!done()) {
    if (Date.now() > until) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

const settle = (ms = 100): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** A UDP frame whose payload says which test and which position it is. */
function marked(label: string, i: number, spec: Parameters<typeof udpFrame>[0] = {}): Buffer {
  return udpFrame({ ...spec, payload: `${label} #${i} ${'.'.repeat(i % 37)}` });
}

describe('AfPacketPort on a veth pair', () => {
  const open: AfPacketPort[] = [];
  const port = (ifname: string, options?: ConstructorParameters<typeof AfPacketPort>[1]): AfPacketPort => {
    const p = new AfPacketPort(ifname, options);
    open.push(p);
    return p;
  };

  beforeAll(() => {
    if (process.getuid?.() !== 0) {
      throw new Error('the AF_PACKET port integration tests need root (veth pairs, packet sockets): run jest as root');
    }
    removeLinks();
    makePair(PAIR.a, PAIR.b);
    makePair(JUMBO.a, JUMBO.b, 9000);
    makePair(SECOND.a, SECOND.b);
  });

  afterEach(async () => {
    await Promise.all(open.splice(0).map((p) => p.close()));
  });

  afterAll(() => {
    const failures = removeLinks();
    expect(failures).toEqual([]);
  });

  test('delivers frames byte for byte and in order, and never echoes the sender its own frames', async () => {
    const a = port(PAIR.a);
    const b = port(PAIR.b);
    const atA = new Collector(a);
    const atB = new Collector(b);
    const sent = [
      marked('order', 0),
      tcpFrame({ flags: 'S', options: { mss: 1460, ws: 7, sackOk: true, ts: [1, 0] } }),
      marked('order', 1, { v6: true }),
      tcpFrame({ flags: 'PA', seq: 5000, payload: 'x'.repeat(1400) }),
      marked('order', 2, { padTo: 60 }),
    ];
    for (const f of sent) a.send(f);
    a.flush();
    await waitFor('5 frames at b', () => atB.frames.length >= sent.length);
    await settle();
    expect(atB.buffers).toEqual(sent);
    expect(atA.frames).toEqual([]);
    expect(a.stats()).toMatchObject({ txFrames: 5, txBytes: sent.reduce((n, f) => n + f.length, 0), txErrors: 0, rxFrames: 0 });
    expect(b.stats()).toMatchObject({ rxFrames: 5, rxBytes: sent.reduce((n, f) => n + f.length, 0), rxDrops: 0 });
  });

  test('stamps frames with the kernel receive time', async () => {
    const a = port(PAIR.a);
    const atB = new Collector(port(PAIR.b));
    const before = Date.now() * 1000;
    a.send(marked('time', 0));
    a.flush();
    await waitFor('the frame', () => atB.frames.length === 1);
    expect(atB.frames[0].timeUs).toBeGreaterThanOrEqual(before - 1000);
    expect(atB.frames[0].timeUs).toBeLessThanOrEqual(Date.now() * 1000);
  });

  test('keeps the first frame sent right after the port is opened', async () => {
    const b = port(PAIR.b);
    const a = port(PAIR.a);
    const first = marked('first', 0);
    a.send(first);
    a.flush();
    // The receiver comes later: the frame waited in the ring.
    await settle(50);
    const atB = new Collector(b);
    await waitFor('the first frame', () => atB.frames.length === 1);
    expect(atB.buffers).toEqual([first]);
  });

  test('a batch of 1000 frames sent with one flush all arrive, in order, or are counted as drops', async () => {
    const a = port(PAIR.a);
    const b = port(PAIR.b);
    const atB = new Collector(b);
    const sent = Array.from({ length: 1000 }, (_, i) => marked('batch', i));
    for (const f of sent) a.send(f);
    a.flush();
    expect(a.stats()).toMatchObject({ txFrames: 1000, txErrors: 0 });
    await waitFor('1000 frames received or dropped', () => atB.frames.length + b.stats().rxDrops >= 1000);
    const { rxDrops, rxFrames } = b.stats();
    expect(rxFrames + rxDrops).toBe(1000);
    const received = atB.buffers;
    // What arrived is in order: each frame is the next one sent after the previous one.
    let at = 0;
    for (const f of received) {
      while (at < sent.length && !sent[at].equals(f)) at++;
      expect(at).toBeLessThan(sent.length);
      at++;
    }
    expect(rxDrops).toBe(0); // the default ring (4096 slots) holds them all
    expect(atB.batches).toBeLessThan(1000);
  });

  test('counts the frames a full ring could not take as drops', async () => {
    const a = port(PAIR.a);
    const b = port(PAIR.b, { ringFrames: 64 });
    const atB = new Collector(b);
    expect(b.ring.frames).toBe(64);
    // One sendmmsg of 1000 frames runs to its end before the event loop can drain the ring.
    for (let i = 0; i < 1000; i++) a.send(marked('overflow', i));
    a.flush();
    await waitFor('1000 frames received or dropped', () => atB.frames.length + b.stats().rxDrops >= 1000);
    await settle();
    const { rxFrames, rxDrops } = b.stats();
    expect(rxFrames).toBe(atB.frames.length);
    expect(rxFrames + rxDrops).toBe(1000);
    expect(rxDrops).toBeGreaterThan(0);
  });

  test('keeps receiving after its interface goes down and up, and counts the socket error', async () => {
    const a = port(PAIR.a);
    const b = port(PAIR.b);
    const atB = new Collector(b);
    run('ip', ['link', 'set', 'dev', PAIR.b, 'down']);
    run('ip', ['link', 'set', 'dev', PAIR.b, 'up']);
    await waitFor('the socket error', () => b.stats().socketErrors > 0);
    expect(b.stats().lastSocketError).toBe('ENETDOWN');
    // A veth end needs its peer up and itself up: wait for the carrier before sending.
    await waitFor('carrier', () => run('cat', [`/sys/class/net/${PAIR.b}/carrier`]).trim() === '1');
    const after = marked('after-down', 0);
    a.send(after);
    a.flush();
    await waitFor('a frame after the interface came back', () => atB.frames.length === 1);
    expect(atB.buffers).toEqual([after]);
  });

  test('puts back the VLAN tags the kernel takes out: 802.1Q, 802.1Q with priority, and 802.1ad over 802.1Q', async () => {
    const a = port(PAIR.a);
    const atB = new Collector(port(PAIR.b));
    const sent = [
      marked('vlan', 0, { vlan: [42] }),
      marked('vlan', 1, { vlan: [4094], vlanPcp: [5] }),
      tcpFrame({ vlan: [100, 200], flags: 'PA', payload: 'qinq' }),
      marked('vlan', 3, { vlan: [7], v6: true, padTo: 64 }),
    ];
    for (const f of sent) a.send(f);
    a.flush();
    await waitFor('4 tagged frames', () => atB.frames.length >= 4);
    expect(atB.buffers).toEqual(sent);
    expect(atB.buffers[2].readUInt16BE(12)).toBe(ETHERTYPE.QinQ);
  });

  test('carries a 9000-byte frame on an MTU-9000 pair, tagged or not', async () => {
    const a = port(JUMBO.a);
    const b = port(JUMBO.b);
    const atB = new Collector(b);
    expect(b.mtu).toBe(9000);
    expect(b.ring.maxFrameLength).toBeGreaterThanOrEqual(9018);
    const payload = 9000 - 20 - 8;
    const jumbo = udpFrame({ payload: Buffer.alloc(payload, 0x5a) });
    const tagged = udpFrame({ vlan: [9], payload: Buffer.alloc(payload, 0xa5) });
    expect(jumbo.length).toBe(9014);
    a.send(jumbo);
    a.send(tagged);
    a.flush();
    await waitFor('2 jumbo frames', () => atB.frames.length >= 2);
    expect(atB.buffers).toEqual([jumbo, tagged]);
    expect(b.stats().rxDrops).toBe(0);
  });

  test('counts a frame the interface refuses as a send error and sends the rest of the batch', async () => {
    const a = port(PAIR.a);
    const atB = new Collector(port(PAIR.b));
    const tooBig = udpFrame({ payload: Buffer.alloc(3000) });
    const fine = [marked('refused', 0), marked('refused', 1)];
    a.send(fine[0]);
    a.send(tooBig);
    a.send(fine[1]);
    a.flush();
    await waitFor('2 frames', () => atB.frames.length >= 2);
    expect(atB.buffers).toEqual(fine);
    expect(a.stats()).toMatchObject({ txFrames: 2, txErrors: 1, lastTxError: 'EMSGSIZE' });
  });

  test('with vnetHdr, a partial checksum travels with its virtio-net header and can be completed', async () => {
    const a = port(PAIR.a, { vnetHdr: true });
    const atB = new Collector(port(PAIR.b, { vnetHdr: true }));
    const cases = [udpFrame({ payload: 'partial checksum' }), udpFrame({ vlan: [12], payload: 'tagged partial' })];
    const partials = cases.map((full) => {
      // What a sender with checksum offload puts on the wire: the pseudo-header sum only.
      const l = layoutOf(full);
      const partial = Buffer.from(full);
      const pseudo = Buffer.concat([l.src, l.dst, Buffer.from([0, 17]), Buffer.from([(l.l3End - l.l4Offset) >> 8, (l.l3End - l.l4Offset) & 0xff])]);
      let sum = 0;
      for (let i = 0; i < pseudo.length; i += 2) sum += pseudo.readUInt16BE(i);
      while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
      partial.writeUInt16BE(sum, l.l4Offset + 6);
      return { full, partial, csumStart: l.l4Offset };
    });
    for (const p of partials) {
      a.send(p.partial, { flags: VIRTIO_NET_HDR_F_NEEDS_CSUM, gsoType: VIRTIO_NET_HDR_GSO_NONE, hdrLen: 0, gsoSize: 0, csumStart: p.csumStart, csumOffset: 6 });
    }
    a.flush();
    await waitFor('2 frames', () => atB.frames.length >= 2);
    atB.frames.forEach((got, i) => {
      const p = partials[i];
      expect(got.frame).toEqual(p.partial);
      // The tag was re-inserted in front of the IP header: csumStart moved with it.
      expect(got.vnet).toMatchObject({ flags: VIRTIO_NET_HDR_F_NEEDS_CSUM, csumStart: p.csumStart, csumOffset: 6 });
      expect(completePartialChecksum(got.frame, got.vnet!)).toBe(true);
      expect(got.frame).toEqual(p.full);
    });
    expect(a.stats().txErrors).toBe(0);
  });

  test('with vnetHdr, a GSO super-frame larger than the MTU is sent and received whole', async () => {
    const a = port(PAIR.a, { vnetHdr: true });
    const b = port(PAIR.b, { vnetHdr: true });
    const atB = new Collector(b);
    expect(b.ring.maxFrameLength).toBeGreaterThanOrEqual(65535);
    const superFrame = tcpFrame({ flags: 'PA', seq: 1, payload: Buffer.alloc(3 * 1448, 7), options: { ts: [1, 2] } });
    const l = layoutOf(superFrame);
    const hdrLen = l.l4Offset + 32;
    a.send(superFrame, { flags: VIRTIO_NET_HDR_F_NEEDS_CSUM, gsoType: VIRTIO_NET_HDR_GSO_TCPV4, hdrLen, gsoSize: 1448, csumStart: l.l4Offset, csumOffset: 16 });
    a.flush();
    await waitFor('the super-frame', () => atB.frames.length >= 1);
    expect(a.stats()).toMatchObject({ txFrames: 1, txErrors: 0 });
    expect(atB.frames).toHaveLength(1);
    expect(atB.frames[0].frame.length).toBe(superFrame.length);
    expect(atB.frames[0].vnet).toMatchObject({ gsoType: VIRTIO_NET_HDR_GSO_TCPV4, gsoSize: 1448, csumStart: l.l4Offset, csumOffset: 16 });
    // Everything but the (partial) checksum field is what was sent.
    const masked = (f: Buffer): Buffer => { const c = Buffer.from(f); c.writeUInt16BE(0, l.l4Offset + 16); return c; };
    expect(masked(atB.frames[0].frame)).toEqual(masked(superFrame));
  });

  test('a frame kept past close reads as empty instead of touching the unmapped ring', async () => {
    const a = port(PAIR.a);
    const b = port(PAIR.b);
    let kept: Buffer | undefined;
    b.onBatch((batch) => { kept = batch[0].frame; });
    a.send(marked('kept', 0));
    a.flush();
    await waitFor('the frame', () => kept !== undefined);
    expect(kept!.length).toBeGreaterThan(0);
    await b.close();
    expect(kept!.length).toBe(0);
  });

  test('a closed port\'s socket is released by the kernel, from a thread of its own, once its ring is collected', async () => {
    // /proc/net/packet: one line per packet socket, the interface index in the fifth column.
    const ifindex = Number(readFileSync(`/sys/class/net/${SECOND.a}/ifindex`, 'utf8').trim());
    const sockets = () => readFileSync('/proc/net/packet', 'utf8').split('\n').slice(1).filter((l) => Number(l.trim().split(/\s+/)[4]) === ifindex).length;
    const gc = (() => { setFlagsFromString('--expose-gc'); return runInNewContext('gc') as () => void; })();
    const before = sockets();
    let p: AfPacketPort | null = new AfPacketPort(SECOND.a);
    p.onBatch(() => {});
    expect(sockets()).toBe(before + 1);
    await p.close();
    p = null;
    // The unhook and close, then the unmapping that drops the last reference, run on short-lived threads
    // (the kernel's release waits for RCU grace periods, which the data plane must not): released all the same.
    await waitFor('the socket to be released', () => { gc(); return sockets() === before; }, 10_000);
  });

  test('a port closed inside its own callback delivers nothing more', async () => {
    const a = port(PAIR.a);
    const b = port(PAIR.b);
    let batches = 0;
    b.onBatch(() => { batches++; void b.close(); });
    a.send(marked('close', 0));
    a.flush();
    await waitFor('one batch', () => batches === 1);
    a.send(marked('close', 1));
    a.flush();
    await settle();
    expect(batches).toBe(1);
  });

  /**
   * A frame arrives at b; b's callback sends one on the second pair's a end, which the kernel hands to the
   * second pair's b end inside the send. Returns, per attempt, the order in which b's callback, that
   * frame's delivery and a setImmediate queued in b's callback ran.
   */
  async function wakeUpOrders(sweepOnWake: boolean, attempts: number): Promise<{ orders: string[]; swept: number }> {
    const a = port(PAIR.a, { sweepOnWake });
    const b = port(PAIR.b, { sweepOnWake });
    const relay = port(SECOND.a, { sweepOnWake });
    const far = port(SECOND.b, { sweepOnWake });
    let order: string[] = [];
    b.onBatch(() => {
      order.push('wake');
      setImmediate(() => order.push('immediate'));
      relay.send(marked('relay', order.length));
    });
    far.onBatch(() => order.push('far'));
    const orders: string[] = [];
    for (let i = 0; i < attempts; i++) {
      order = [];
      a.send(marked('wake', i));
      a.flush();
      await waitFor('the relayed frame and the immediate', () => order.length >= 3);
      orders.push(order.join(' '));
    }
    return { orders, swept: far.stats().sweepBreaths };
  }

  test('a wake-up delivers what its breath made appear on another port before the event loop goes on (sweepOnWake)', async () => {
    const { orders, swept } = await wakeUpOrders(true, 10);
    // The kernel may leave a send's receive work to ksoftirqd on a busy machine: then that frame comes later.
    expect(orders).toContain('wake far immediate');
    expect(swept).toBe(orders.filter((o) => o === 'wake far immediate').length);
  });

  test('without sweepOnWake, such a frame waits for the next turn of the event loop', async () => {
    const { orders, swept } = await wakeUpOrders(false, 5);
    expect(orders).toEqual(Array(5).fill('wake immediate far'));
    expect(swept).toBe(0);
  });

  describe('with sendThread (the sends are copied and made by a thread of their own)', () => {
    const threaded = { sendThread: true };

    /** More frames than a flush the caller sends itself (8, with nothing queued): this flush goes to the thread. */
    const THREAD_FLUSH = 12;

    test('frames arrive byte for byte and in order, and the counters are settled when read', async () => {
      const a = port(PAIR.a, threaded);
      const atB = new Collector(port(PAIR.b));
      const sent = [marked('thread', 0), tcpFrame({ flags: 'PA', seq: 9, payload: 'y'.repeat(1400) }), marked('thread', 1, { v6: true, padTo: 60 })];
      for (let i = 2; sent.length < THREAD_FLUSH; i++) sent.push(marked('thread', i));
      for (const f of sent) a.send(f);
      a.flush();
      // stats() waits for the thread: nothing counted late.
      expect(a.stats()).toMatchObject({ txQueued: THREAD_FLUSH, txFrames: THREAD_FLUSH, txBytes: sent.reduce((n, f) => n + f.length, 0), txErrors: 0 });
      await waitFor(`${THREAD_FLUSH} frames`, () => atB.frames.length >= THREAD_FLUSH);
      expect(atB.buffers).toEqual(sent);
    });

    test('a small flush with nothing queued is sent by the caller, at once', async () => {
      const a = port(PAIR.a, threaded);
      const atB = new Collector(port(PAIR.b));
      a.send(marked('small', 0));
      a.flush();
      expect(a.stats()).toMatchObject({ txQueued: 0, txFrames: 1 });
      expect(a.stats().txSyncUs).toBeGreaterThan(0);
      await waitFor('1 frame', () => atB.frames.length >= 1);
    });

    test('with sendInlineFrames 0 (what run does), even one frame goes through the thread, and the caller never sends', async () => {
      const a = port(PAIR.a, { ...threaded, sendInlineFrames: 0 });
      const atB = new Collector(port(PAIR.b));
      for (let i = 0; i < 3; i++) {
        a.send(marked('inline0', i));
        a.flush();
      }
      expect(a.stats()).toMatchObject({ txQueued: 3, txFrames: 3, txSyncUs: 0, txSyncMaxUs: 0 });
      await waitFor('3 frames', () => atB.frames.length >= 3);
      expect(atB.buffers).toEqual([0, 1, 2].map((i) => marked('inline0', i)));
    });

    test('sendInlineFrames 2: a flush of 2 goes at once, one of 3 to the thread', async () => {
      const a = port(PAIR.a, { ...threaded, sendInlineFrames: 2 });
      const atB = new Collector(port(PAIR.b));
      a.send(marked('inline2', 0));
      a.send(marked('inline2', 1));
      a.flush();
      expect(a.stats()).toMatchObject({ txQueued: 0, txFrames: 2 });
      for (let i = 2; i < 5; i++) a.send(marked('inline2', i));
      a.flush();
      expect(a.stats()).toMatchObject({ txQueued: 3, txFrames: 5 });
      await waitFor('5 frames', () => atB.frames.length >= 5);
    });

    test('setInlineSends(false) (the bridge\'s rate gate) sends even one frame through the thread; true again: at once', async () => {
      const a = port(PAIR.a, threaded);
      const atB = new Collector(port(PAIR.b));
      a.setInlineSends(false);
      for (let i = 0; i < 3; i++) {
        a.send(marked('gated', i));
        a.flush();
      }
      expect(a.stats()).toMatchObject({ txQueued: 3, txFrames: 3, txSyncUs: 0 });
      a.setInlineSends(true);
      a.send(marked('gated', 3));
      a.flush();
      expect(a.stats()).toMatchObject({ txQueued: 3, txFrames: 4 });
      expect(a.stats().txSyncUs).toBeGreaterThan(0);
      await waitFor('4 frames', () => atB.frames.length >= 4);
      expect(atB.buffers).toEqual([0, 1, 2, 3].map((i) => marked('gated', i)));
    });

    test('the native setInline takes a boolean only, and a closed port ignores the gate', async () => {
      const a = port(PAIR.a, threaded);
      const socket = (a as unknown as { socket: { setInline(on: unknown): void } }).socket;
      expect(() => socket.setInline(1)).toThrow(/setInline\(on\): on must be a boolean/);
      expect(() => socket.setInline(undefined)).toThrow(/on must be a boolean/);
      await a.close();
      expect(() => a.setInlineSends(false)).not.toThrow();
    });

    test('frames the sender changes right after their flush go out as they were (the flush copied them)', async () => {
      const a = port(PAIR.a, threaded);
      const atB = new Collector(port(PAIR.b));
      const frames = Array.from({ length: THREAD_FLUSH }, (_, i) => marked('copied', i));
      const originals = frames.map((f) => Buffer.from(f));
      for (const f of frames) a.send(f);
      a.flush();
      for (const f of frames) f.fill(0xee, 14);
      await waitFor(`${THREAD_FLUSH} frames`, () => atB.frames.length >= THREAD_FLUSH);
      expect(atB.buffers).toEqual(originals);
      expect(a.stats().txQueued).toBe(THREAD_FLUSH);
    });

    test('12,000 frames in 12 flushes, three times the staging area, all arrive in order or are counted as drops', async () => {
      const a = port(PAIR.a, threaded);
      const b = port(PAIR.b, { ringFrames: 16384 });
      const atB = new Collector(b);
      const sent = Array.from({ length: 12_000 }, (_, i) => udpFrame({ payload: `${i} `.padEnd(1000, '.') }));
      for (let k = 0; k < 12; k++) {
        for (let i = k * 1000; i < (k + 1) * 1000; i++) a.send(sent[i]);
        a.flush();
      }
      expect(a.stats()).toMatchObject({ txQueued: 12_000, txFrames: 12_000, txErrors: 0 });
      await waitFor('12,000 frames received or dropped', () => atB.frames.length + b.stats().rxDrops >= 12_000, 10_000);
      let at = 0;
      for (const f of atB.buffers) {
        while (at < sent.length && !sent[at].equals(f)) at++;
        expect(at).toBeLessThan(sent.length);
        at++;
      }
      expect(atB.frames.length + b.stats().rxDrops).toBe(12_000);
    });

    test('a refused frame is counted as a send error and the rest of the flush is sent', async () => {
      const a = port(PAIR.a, threaded);
      const atB = new Collector(port(PAIR.b));
      const fine = Array.from({ length: THREAD_FLUSH }, (_, i) => marked('refused-t', i));
      fine.forEach((f, i) => {
        a.send(f);
        if (i === 5) a.send(udpFrame({ payload: Buffer.alloc(3000) })); // larger than the MTU
      });
      a.flush();
      await waitFor(`${THREAD_FLUSH} frames`, () => atB.frames.length >= THREAD_FLUSH);
      expect(atB.buffers).toEqual(fine);
      expect(a.stats()).toMatchObject({ txQueued: THREAD_FLUSH + 1, txFrames: THREAD_FLUSH, txErrors: 1, lastTxError: 'EMSGSIZE' });
    });

    test('with vnetHdr, a GSO super-frame and its virtio-net header go out together', async () => {
      const a = port(PAIR.a, { ...threaded, vnetHdr: true });
      const atB = new Collector(port(PAIR.b, { vnetHdr: true }));
      const superFrame = tcpFrame({ flags: 'PA', seq: 1, payload: Buffer.alloc(3 * 1448, 5), options: { ts: [1, 2] } });
      const l = layoutOf(superFrame);
      for (let i = 0; i < THREAD_FLUSH; i++) {
        a.send(superFrame, { flags: VIRTIO_NET_HDR_F_NEEDS_CSUM, gsoType: VIRTIO_NET_HDR_GSO_TCPV4, hdrLen: l.l4Offset + 32, gsoSize: 1448, csumStart: l.l4Offset, csumOffset: 16 });
      }
      a.flush();
      await waitFor(`${THREAD_FLUSH} super-frames`, () => atB.frames.length >= THREAD_FLUSH);
      expect(a.stats()).toMatchObject({ txQueued: THREAD_FLUSH, txFrames: THREAD_FLUSH, txErrors: 0 });
      for (const got of atB.frames) {
        expect(got.frame.length).toBe(superFrame.length);
        expect(got.vnet).toMatchObject({ gsoType: VIRTIO_NET_HDR_GSO_TCPV4, gsoSize: 1448, csumStart: l.l4Offset, csumOffset: 16 });
      }
    });

    test('close waits for what is queued: every frame flushed before close arrives', async () => {
      const a = port(PAIR.a, threaded);
      const b = port(PAIR.b, { ringFrames: 8192 });
      const atB = new Collector(b);
      const sent = Array.from({ length: 3000 }, (_, i) => marked('closing', i));
      for (const f of sent) a.send(f);
      a.flush();
      await a.close(); // no stats() before it: that would wait for the thread itself
      expect(a.stats()).toMatchObject({ txQueued: 3000, txFrames: 3000 });
      await waitFor('3000 frames received or dropped', () => atB.frames.length + b.stats().rxDrops >= 3000);
      expect(b.stats().rxDrops).toBe(0);
      expect(atB.buffers).toEqual(sent);
    });

    test('an interface deleted while its sends are queued: every frame is sent or counted as an error, and the port closes', async () => {
      const gone = `${tag}g`;
      makePair(gone, `${gone}p`);
      try {
        const a = port(gone, threaded);
        const other = port(SECOND.a, threaded);
        const atFar = new Collector(port(SECOND.b));
        for (let i = 0; i < 4000; i++) a.send(marked('gone', i));
        a.flush();
        run('ip', ['link', 'del', 'dev', gone]); // the VM's tap vanishes under the queued sends
        other.send(marked('still', 0));
        other.flush();
        const st = a.stats(); // waits for the thread: nothing left in flight
        expect(st.txQueued).toBe(4000);
        expect(st.txFrames + st.txErrors).toBe(4000);
        await waitFor('the other port\'s frame', () => atFar.frames.length >= 1);
        await a.close();
      } finally {
        runQuietly('ip', ['link', 'del', 'dev', gone]);
      }
    });

    test('the thread ends with the worker that started it, and the worker exits', async () => {
      const { Worker } = await import('node:worker_threads');
      const mod = join(__dirname, '..', '..', 'dist', 'lib', 'io', 'afpacket-port.js');
      const script = `const { AfPacketPort } = require(${JSON.stringify(mod)});
        const { parentPort } = require('node:worker_threads');
        const p = new AfPacketPort(${JSON.stringify(PAIR.a)}, { sendThread: true });
        for (let i = 0; i < 500; i++) p.send(Buffer.alloc(200, i));
        p.flush();
        parentPort.postMessage(p.stats().txFrames);`;
      const atB = new Collector(port(PAIR.b));
      const w = new Worker(script, { eval: true });
      // Its exit code, whether it ends by itself or is terminated (terminate() gives undefined for a worker already gone).
      const exited = new Promise<number>((resolve) => w.once('exit', resolve));
      const sentByWorker = await new Promise<number>((resolve, reject) => { w.once('message', resolve); w.once('error', reject); });
      expect(sentByWorker).toBe(500);
      // The worker ends (by itself or terminated): its env cleanup joined the send thread instead of hanging on it.
      await w.terminate();
      expect([0, 1]).toContain(await exited);
      await waitFor('500 frames', () => atB.frames.length >= 500);
    });
  });

  describe('two rings of one interface read as one (follow; SplitRingPort)', () => {
    const splitAt = (ifname: string): { small: AfPacketPort; large: AfPacketPort; split: SplitRingPort } => {
      const small = port(ifname, { frameSize: 2048, ringFrames: 64, filter: lengthFilter(SMALL_FRAME_MAX, false) });
      const large = port(ifname, { ringFrames: 64, filter: lengthFilter(SMALL_FRAME_MAX, true) });
      return { small, large, split: new SplitRingPort(small, large) };
    };
    /** Alternately small and large (above SMALL_FRAME_MAX) UDP frames, each saying its place. */
    const mixed = (label: string, n: number): Buffer[] =>
      Array.from({ length: n }, (_, i) => udpFrame({ payload: Buffer.concat([Buffer.from(`${label} #${i} `), Buffer.alloc(i % 2 ? 4000 : 100, 0x61 + (i % 26))]) }));

    test('frames that wait in both rings are handed over in one batch, in the order they arrived', async () => {
      const a = port(JUMBO.a);
      const { split } = splitAt(JUMBO.b);
      expect(split.merged).toBe(true);
      const sent = mixed('merge', 24);
      for (const f of sent) a.send(f);
      a.flush(); // all 24 are in the rings before the event loop reads either
      const got: Buffer[] = [];
      const times: number[] = [];
      let batches = 0;
      split.onBatch((batch) => {
        batches++;
        for (const f of batch) { got.push(Buffer.from(f.frame)); times.push(f.timeUs); }
      });
      await waitFor('24 frames', () => got.length >= 24);
      await settle(50);
      // Read ring by ring, the 12 small frames would come first, then the 12 large ones.
      expect(got).toEqual(sent);
      expect(batches).toBe(1);
      expect(times).toEqual([...times].sort((x, y) => x - y));
      expect(split.stats()).toMatchObject({ rxFrames: 24, rxDrops: 0 });
    });

    test('keeps the order while frames arrive during reading, breath after breath', async () => {
      const a = port(JUMBO.a);
      const { split } = splitAt(JUMBO.b);
      const got: Buffer[] = [];
      split.onBatch((batch) => { for (const f of batch) got.push(Buffer.from(f.frame)); });
      const sent = mixed('stream', 400);
      for (let i = 0; i < sent.length; i += 8) {
        for (const f of sent.slice(i, i + 8)) a.send(f);
        a.flush();
        await new Promise((resolve) => setImmediate(resolve));
      }
      await waitFor('400 frames', () => got.length >= 400);
      expect(got.map((f) => f.toString('latin1', 42, 56))).toEqual(sent.map((f) => f.toString('latin1', 42, 56)));
      expect(split.stats().rxDrops).toBe(0);
    });

    test('when the small ring\'s port closes, the large ring delivers on its own; a pair closed inside its callback delivers nothing more', async () => {
      const a = port(JUMBO.a);
      const { small, large, split } = splitAt(JUMBO.b);
      const got: Buffer[] = [];
      split.onBatch((batch) => { for (const f of batch) got.push(Buffer.from(f.frame)); });
      await small.close();
      const later = mixed('alone', 4);
      for (const f of later) a.send(f);
      a.flush();
      await waitFor('the 2 large frames', () => got.length >= 2);
      await settle(50);
      expect(got).toEqual([later[1], later[3]]);
      await large.close();

      const again = splitAt(JUMBO.b).split;
      const seen: number[] = [];
      again.onBatch((batch) => { seen.push(batch.length); void again.close(); });
      for (const f of mixed('closing', 6)) a.send(f);
      a.flush();
      await waitFor('one batch', () => seen.length >= 1);
      for (const f of mixed('after', 6)) a.send(f);
      a.flush();
      await settle(100);
      expect(seen).toEqual([6]);
    });

    test('on a kernel that can (6.2+), the two sockets share a fanout group: every length at the bound reaches exactly one ring, and what the port sends never comes back', async () => {
      const a = port(JUMBO.a);
      const { split } = splitAt(JUMBO.b);
      const [major, minor] = execFileSync('uname', ['-r'], { encoding: 'utf8' }).split('.').map(Number);
      const able = major > 6 || (major === 6 && minor >= 2);
      expect(split.fanout).toBe(able);
      expect(split.fanoutRefused).toBe(able ? null : expect.stringMatching(/kernel before 6\.2/));
      const got: Buffer[] = [];
      split.onBatch((batch) => { for (const f of batch) got.push(Buffer.from(f.frame)); });
      // Whole frames of 1,890 to 1,950 bytes: the fanout program and the rings' filters must agree on each.
      const sent = Array.from({ length: 61 }, (_, i) => udpFrame({ payload: Buffer.alloc(1890 + i - 42, 0x30 + (i % 40)) }));
      expect(sent.map((f) => f.length)).toEqual(Array.from({ length: 61 }, (_, i) => 1890 + i));
      for (const f of sent) a.send(f);
      a.flush();
      await waitFor('61 frames', () => got.length >= 61);
      await settle(50);
      expect(got).toEqual(sent);
      const st = split.stats() as ReturnType<SplitRingPort['stats']> & { rxLargeFrames: number };
      expect([st.rxFrames, st.rxLargeFrames, st.rxDrops]).toEqual([61, sent.filter((f) => f.length > SMALL_FRAME_MAX).length, 0]);
      // Frames the port sends leave on the interface and are not read back (the group ignores outgoing frames).
      const atA = new Collector(a);
      const out = mixed('outgoing', 20);
      for (const f of out) split.send(f);
      split.flush();
      await waitFor('20 frames at the other end', () => atA.frames.length >= 20);
      await settle(100);
      expect(atA.buffers).toEqual(out);
      expect(split.stats().rxFrames).toBe(61);

      // The interface goes down and up: the kernel puts the group's members back in the order their sockets
      // were made, which is the order they joined in: every frame still reaches its own ring.
      run('ip', ['link', 'set', 'dev', JUMBO.b, 'down']);
      run('ip', ['link', 'set', 'dev', JUMBO.b, 'up']);
      await waitFor('carrier', () => run('cat', [`/sys/class/net/${JUMBO.b}/carrier`]).trim() === '1');
      got.length = 0;
      for (const f of sent) a.send(f);
      a.flush();
      await waitFor('61 frames after the flap', () => got.length >= 61);
      expect(got).toEqual(sent);
      expect((split.stats() as ReturnType<SplitRingPort['stats']> & { rxLargeFrames: number }).rxLargeFrames).toBe(2 * st.rxLargeFrames);
    });

    test('as run opens it on a jumbo-MTU interface (virtio-net headers): MTU-sized frames use the small ring, whose slots hold them', async () => {
      const a = port(JUMBO.a);
      const split = openOne('afpacket', JUMBO.b, { vnetHdr: true, splitRings: true }) as SplitRingPort;
      open.push(split as unknown as AfPacketPort);
      expect(split).toBeInstanceOf(SplitRingPort);
      expect(split.ring.frameSize).toBeGreaterThanOrEqual(9022);
      expect(split.ring.frames).toBeGreaterThan(512);
      const got: Buffer[] = [];
      split.onBatch((batch) => { for (const f of batch) got.push(Buffer.from(f.frame)); });
      const sent = [udpFrame({ payload: Buffer.alloc(9000 - 28, 0x41) }), udpFrame({ vlan: [7], payload: Buffer.alloc(9000 - 28, 0x42) }), marked('jumbo', 1)];
      for (const f of sent) a.send(f);
      a.flush();
      await waitFor('3 frames', () => got.length >= 3);
      expect(got).toEqual(sent);
      const st = split.stats() as ReturnType<SplitRingPort['stats']> & { rxLargeFrames: number };
      expect([st.rxFrames, st.rxLargeFrames, st.rxDrops]).toEqual([3, 0, 0]);
    });

    test('follow refuses a port that is closed, itself or already paired', () => {
      const { small, large } = splitAt(JUMBO.b);
      const other = port(JUMBO.b);
      expect(() => other.follow(small)).toThrow(/unpaired/);
      expect(() => other.follow(large)).toThrow(/unpaired/);
      expect(() => other.follow(other)).toThrow(/another open, unpaired/);
    });
  });

  test('names the interface and the errno in typed errors: unknown interface, interface down', () => {
    expect(() => port(`${tag}none`)).toThrow(AfPacketNoSuchInterfaceError);
    expect(() => port(`${tag}none`)).toThrow(new RegExp(`${tag}none: no such interface \\(ioctl\\(SIOCGIFINDEX\\): ENODEV, No such device\\)`));
    run('ip', ['link', 'add', DOWN, 'type', 'veth', 'peer', 'name', `${DOWN}p`]); // created down
    expect(() => port(DOWN)).toThrow(AfPacketInterfaceDownError);
    expect(() => port(DOWN)).toThrow(new RegExp(`${DOWN}: interface is down`));
  });

  describe('AfPacketPort.open (the socket is made on libuv\'s thread pool)', () => {
    test('resolves with a bound port: frames that arrive before anyone reads are in its ring', async () => {
      const opening = AfPacketPort.open(PAIR.b, { ringFrames: 256 });
      const b = await opening;
      open.push(b);
      expect(b.ring.frames).toBeGreaterThanOrEqual(256);
      expect(b.mtu).toBe(1500);
      const a = port(PAIR.a);
      const sent = [marked('later', 0), marked('later', 1)];
      for (const f of sent) a.send(f);
      a.flush();
      await settle(50);
      const atB = new Collector(b);
      await waitFor('2 frames', () => atB.frames.length === 2);
      expect(atB.buffers).toEqual(sent);
    });

    test('rejects with the same typed errors as the constructor', async () => {
      await expect(AfPacketPort.open(`${tag}none`)).rejects.toThrow(AfPacketNoSuchInterfaceError);
      await expect(AfPacketPort.open(`${tag}none`)).rejects.toThrow(new RegExp(`${tag}none: no such interface`));
      if (!runQuietly('ip', ['link', 'show', 'dev', DOWN])) run('ip', ['link', 'add', DOWN, 'type', 'veth', 'peer', 'name', `${DOWN}p`]);
      await expect(AfPacketPort.open(DOWN)).rejects.toThrow(AfPacketInterfaceDownError);
      await expect(AfPacketPort.open('x'.repeat(16))).rejects.toThrow(/not a valid interface name/);
    });

    test('a handle is made into one socket only; one never made into a socket is released', async () => {
      const addon = loadAfPacketAddon();
      const ifindex = Number(readFileSync(`/sys/class/net/${SECOND.a}/ifindex`, 'utf8').trim());
      const sockets = () => readFileSync('/proc/net/packet', 'utf8').split('\n').slice(1).filter((l) => Number(l.trim().split(/\s+/)[4]) === ifindex).length;
      const gc = (() => { setFlagsFromString('--expose-gc'); return runInNewContext('gc') as () => void; })();
      const before = sockets();
      const openHandle = () => new Promise<AfPacketOpenHandle>((resolve, reject) => addon.open(SECOND.a, {}, (err, h) => (err ? reject(err) : resolve(h!))));
      const used = await openHandle();
      const socket = new addon.Socket(used, {}, () => {});
      expect(socket.fd).toBeGreaterThan(0);
      expect(() => new addon.Socket(used, {}, () => {})).toThrow(/already made into a Socket/);
      socket.close();
      let dropped: AfPacketOpenHandle | null = await openHandle();
      expect(sockets()).toBeGreaterThanOrEqual(before + 1);
      dropped = null;
      void dropped;
      await waitFor('both sockets to be released', () => { gc(); return sockets() === before; }, 10_000);
    });
  });

  test('without CAP_NET_RAW, opening a port is a permission error naming the interface', () => {
    // A child without CAP_NET_RAW opens the socket through the addon and reports the raw error.
    const addon = join(__dirname, '..', '..', 'build', 'Release', 'shadowvm_afpacket.node');
    const script = `try { new (require(${JSON.stringify(addon)}).Socket)(${JSON.stringify(PAIR.a)}, {}, () => {}); console.log('{}') }
      catch (e) { console.log(JSON.stringify({ message: e.message, code: e.code, syscall: e.syscall, errnoText: e.errnoText })) }`;
    const out = execFileSync('setpriv', ['--inh-caps=-all', '--bounding-set=-net_raw,-net_admin', process.execPath, '-e', script], { encoding: 'utf8' });
    const raw = JSON.parse(out) as { message: string; code: string; syscall: string; errnoText: string };
    expect(raw.code).toBe('EPERM');
    const err = toAfPacketPortError(PAIR.a, Object.assign(new Error(raw.message), raw));
    expect(err).toBeInstanceOf(AfPacketPermissionError);
    expect(err.message).toBe(`AF_PACKET port ${PAIR.a}: opening a packet socket needs root or CAP_NET_RAW (socket(AF_PACKET): EPERM, Operation not permitted)`);
  });
});
