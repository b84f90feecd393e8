import { DecodedFrame, decodeFrame } from '../../../lib/packet';
import { Direction, describeFlow, describeKey, flowKeyOf, flowProtocolOf } from '../../../lib/flow';
import {
  PROTO, icmpEcho, icmpFrame, icmpv6, ipFrame, ipv4Fragment, tcpFrame, udpFrame, udpSegment,
} from '../../support/frames';

/** Keys are built in a shared scratch buffer: decode each frame into its own DecodedFrame. */
function keyOf(frame: Buffer, dir: Direction): string {
  const f = decodeFrame(frame, new DecodedFrame());
  expect(f.error).toBeNull();
  return flowKeyOf(f, dir);
}

function nameOf(frame: Buffer, dir: Direction): string {
  return describeFlow(decodeFrame(frame), dir);
}

describe('flowKeyOf', () => {
  it.each([
    ['TCP over IPv4', { v6: false }],
    ['TCP over IPv6', { v6: true }],
    ['TCP over 802.1Q', { vlan: [100] }],
    ['TCP over QinQ IPv6', { v6: true, vlan: [300, 42] }],
  ])('gives a client segment (ingress) and the VM answer (egress) the same key: %s', (_name, link) => {
    const fromClient = tcpFrame({ ...link, sport: 40000, dport: 80, seq: 1, ack: 0, flags: 'S' });
    const fromVm = tcpFrame({ ...link, from: 'vm', sport: 80, dport: 40000, seq: 9, ack: 2, flags: 'SA' });
    expect(keyOf(fromVm, 'egress')).toBe(keyOf(fromClient, 'ingress'));
  });

  it('gives a UDP request and its answer the same key', () => {
    const request = udpFrame({ sport: 5000, dport: 53, payload: 'q' });
    const answer = udpFrame({ from: 'vm', sport: 53, dport: 5000, payload: 'a' });
    expect(keyOf(answer, 'egress')).toBe(keyOf(request, 'ingress'));
  });

  it('tells the two directions apart when the direction is misstated', () => {
    const fromClient = tcpFrame({ sport: 40000, dport: 80 });
    expect(keyOf(fromClient, 'egress')).not.toBe(keyOf(fromClient, 'ingress'));
  });

  it('gives different client ports, VM ports, addresses and IP versions different keys', () => {
    const base = keyOf(tcpFrame({ sport: 40000, dport: 80 }), 'ingress');
    expect(keyOf(tcpFrame({ sport: 40001, dport: 80 }), 'ingress')).not.toBe(base);
    expect(keyOf(tcpFrame({ sport: 40000, dport: 81 }), 'ingress')).not.toBe(base);
    expect(keyOf(tcpFrame({ sport: 80, dport: 40000 }), 'ingress')).not.toBe(base);
    expect(keyOf(tcpFrame({ sport: 40000, dport: 80, src: '10.77.0.3' }), 'ingress')).not.toBe(base);
    expect(keyOf(tcpFrame({ sport: 40000, dport: 80, dst: '10.77.0.9' }), 'ingress')).not.toBe(base);
    expect(keyOf(tcpFrame({ sport: 40000, dport: 80, v6: true }), 'ingress')).not.toBe(base);
  });

  it('gives different VLANs different keys, inner and outer tags included', () => {
    const keys = [
      keyOf(tcpFrame({}), 'ingress'),
      keyOf(tcpFrame({ vlan: [10] }), 'ingress'),
      keyOf(tcpFrame({ vlan: [11] }), 'ingress'),
      keyOf(tcpFrame({ vlan: [10, 20] }), 'ingress'),
      keyOf(tcpFrame({ vlan: [20, 10] }), 'ingress'),
      keyOf(tcpFrame({ vlan: [10, 21] }), 'ingress'),
      keyOf(tcpFrame({ vlan: [4095, 4095] }), 'ingress'),
    ];
    expect(new Set(keys).size).toBe(keys.length);
  });

  it('ignores VLAN priority bits', () => {
    expect(keyOf(tcpFrame({ vlan: [10], vlanPcp: [6] }), 'ingress')).toBe(keyOf(tcpFrame({ vlan: [10] }), 'ingress'));
  });

  it('gives TCP and UDP on the same ports different keys', () => {
    expect(keyOf(tcpFrame({ sport: 5000, dport: 53 }), 'ingress')).not.toBe(keyOf(udpFrame({ sport: 5000, dport: 53 }), 'ingress'));
  });

  it('gives an ICMP echo request and its reply one key, by identifier', () => {
    const request = icmpEcho({ id: 0x1234, seq: 1 });
    const reply = icmpEcho({ from: 'vm', reply: true, id: 0x1234, seq: 1 });
    const nextRequest = icmpEcho({ id: 0x1234, seq: 2 });
    expect(keyOf(reply, 'egress')).toBe(keyOf(request, 'ingress'));
    expect(keyOf(nextRequest, 'ingress')).toBe(keyOf(request, 'ingress'));
    expect(keyOf(icmpEcho({ id: 0x1235 }), 'ingress')).not.toBe(keyOf(request, 'ingress'));
  });

  it('gives an ICMPv6 echo request and its reply one key, by identifier', () => {
    const request = icmpEcho({ v6: true, id: 77 });
    const reply = icmpEcho({ v6: true, from: 'vm', reply: true, id: 77 });
    expect(keyOf(reply, 'egress')).toBe(keyOf(request, 'ingress'));
    expect(keyOf(icmpEcho({ v6: true, id: 78 }), 'ingress')).not.toBe(keyOf(request, 'ingress'));
  });

  it('keeps other ICMP messages apart from echo flows whose identifier equals their type', () => {
    const unreachable = icmpFrame({ from: 'vm', type: 3, code: 1, body: Buffer.alloc(28) });
    const echoWithId3 = icmpEcho({ from: 'vm', reply: true, id: 3 });
    expect(keyOf(unreachable, 'egress')).not.toBe(keyOf(echoWithId3, 'egress'));
    const packetTooBig = icmpv6({ from: 'vm', type: 2, body: Buffer.alloc(48) });
    expect(keyOf(packetTooBig, 'egress')).not.toBe(keyOf(icmpEcho({ v6: true, from: 'vm', reply: true, id: 2 }), 'egress'));
  });

  it('puts every fragment of a datagram in one flow without ports', () => {
    const datagram = udpSegment({ sport: 5000, dport: 53, payload: Buffer.alloc(64, 1) });
    const first = decodeFrame(ipv4Fragment({ offset: 0, more: true, data: datagram.subarray(0, 32), ipId: 9 }), new DecodedFrame());
    const rest = decodeFrame(ipv4Fragment({ offset: 32, more: false, data: datagram.subarray(32), ipId: 9 }), new DecodedFrame());
    expect(flowProtocolOf(first)).toBe('ip');
    expect(flowProtocolOf(rest)).toBe('ip');
    expect(flowKeyOf(rest, 'ingress')).toBe(flowKeyOf(first, 'ingress'));
    expect(flowKeyOf(first, 'ingress')).not.toBe(keyOf(udpFrame({ sport: 5000, dport: 53 }), 'ingress'));
  });

  it('names the protocol of each kind of frame', () => {
    expect(flowProtocolOf(decodeFrame(tcpFrame({})))).toBe('tcp');
    expect(flowProtocolOf(decodeFrame(udpFrame({})))).toBe('udp');
    expect(flowProtocolOf(decodeFrame(icmpEcho({})))).toBe('icmp');
    expect(flowProtocolOf(decodeFrame(icmpEcho({ v6: true })))).toBe('icmpv6');
    expect(flowProtocolOf(decodeFrame(ipFrame({}, 47, Buffer.alloc(8))))).toBe('ip');
  });

  it('gives different opaque protocols between the same hosts different keys', () => {
    expect(keyOf(ipFrame({}, 47, Buffer.alloc(8)), 'ingress')).not.toBe(keyOf(ipFrame({}, 50, Buffer.alloc(8)), 'ingress'));
  });

  it('does not depend on anything past the L4 ports (sequence numbers, flags, payload)', () => {
    const a = tcpFrame({ seq: 1, ack: 2, flags: 'S', options: { mss: 1460 } });
    const b = tcpFrame({ seq: 99, ack: 100, flags: 'PA', payload: 'data', ttl: 3, ipId: 77 });
    expect(keyOf(b, 'ingress')).toBe(keyOf(a, 'ingress'));
  });
});

describe('describeFlow', () => {
  it('names a TCP flow remote endpoint first, whichever way the frame travels', () => {
    expect(nameOf(tcpFrame({ sport: 40000, dport: 80 }), 'ingress')).toBe('tcp 10.77.0.1:40000 > 10.77.0.2:80');
    expect(nameOf(tcpFrame({ from: 'vm', sport: 80, dport: 40000 }), 'egress')).toBe('tcp 10.77.0.1:40000 > 10.77.0.2:80');
  });

  it('brackets IPv6 addresses and appends the VLAN tags', () => {
    expect(nameOf(udpFrame({ v6: true, sport: 5353, dport: 53, vlan: [100] }), 'ingress'))
      .toBe('udp [fd77::1]:5353 > [fd77::2]:53 vlan 100');
    expect(nameOf(tcpFrame({ v6: true, sport: 1, dport: 2, vlan: [300, 42] }), 'ingress'))
      .toBe('tcp [fd77::1]:1 > [fd77::2]:2 vlan 300.42');
  });

  it('names an ICMP flow by its echo identifier', () => {
    expect(nameOf(icmpEcho({ from: 'vm', reply: true, id: 4660 }), 'egress')).toBe('icmp 10.77.0.1 > 10.77.0.2 id/type 4660');
    expect(nameOf(icmpEcho({ v6: true, id: 7 }), 'ingress')).toBe('icmpv6 [fd77::1] > [fd77::2] id/type 7');
  });

  it('marks fragments and names other protocols by number', () => {
    const datagram = udpSegment({ payload: Buffer.alloc(64) });
    const rest = ipv4Fragment({ offset: 32, more: false, data: datagram.subarray(32) });
    expect(nameOf(rest, 'ingress')).toBe('ip proto 17 10.77.0.1 > 10.77.0.2 (fragments)');
    expect(nameOf(ipFrame({ vlan: [5] }, PROTO.AH, Buffer.alloc(24)), 'ingress')).toBe('ip proto 51 10.77.0.1 > 10.77.0.2 vlan 5');
  });
});

describe('describeKey', () => {
  it('says of a key what describeFlow says of the frames it was made from', () => {
    const datagram = udpSegment({ payload: Buffer.alloc(64) });
    const frames: [Buffer, Direction][] = [
      [tcpFrame({ sport: 40000, dport: 80 }), 'ingress'],
      [tcpFrame({ from: 'vm', sport: 80, dport: 40000, vlan: [7] }), 'egress'],
      [udpFrame({ v6: true, sport: 5353, dport: 53, vlan: [300, 42] }), 'ingress'],
      [icmpEcho({ v6: true, id: 7 }), 'ingress'],
      [icmpEcho({ from: 'vm', reply: true, id: 4660 }), 'egress'],
      [ipv4Fragment({ offset: 32, more: false, data: datagram.subarray(32) }), 'ingress'],
      [ipFrame({ vlan: [5] }, PROTO.AH, Buffer.alloc(24)), 'ingress'],
      [ipFrame({ v6: true }, 47, Buffer.alloc(24)), 'ingress'],
    ];
    for (const [frame, dir] of frames) expect(describeKey(keyOf(frame, dir))).toBe(nameOf(frame, dir));
    expect(nameOf(ipFrame({ v6: true }, 47, Buffer.alloc(24)), 'ingress')).toBe('ip proto 47 [fd77::1] > [fd77::2]');
  });

  it('gives the hex of a key it cannot read', () => {
    expect(describeKey('\x01\x02\x03')).toBe('key 010203');
  });
});
