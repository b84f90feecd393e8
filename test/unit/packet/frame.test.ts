import fc from 'fast-check';
import { DecodedFrame, MALFORMED_REASONS, MAX_IPV6_EXTENSION_HEADERS, decodeFrame } from '../../../lib/packet';
import {
  CLIENT_IP, ETHERTYPE, ETH_HEADER_LENGTH, IPV4_HEADER_LENGTH, IPV6_HEADER_LENGTH, Ipv6Extension, PROTO, TCP_HEADER_LENGTH,
  UDP_HEADER_LENGTH, VM_IP, arpFrame, ethernet, icmpEcho, icmpFrame, icmpv6, ipFrame, ipv4Bytes, ipv4Fragment,
  ipv6WithExtensions, tcpFrame, tcpSegment, udpFrame, udpSegment,
} from '../../support/frames';

const ETH = ETH_HEADER_LENGTH;

/** Decodes a slice and checks the decoder reported (not threw) the expected outcome. */
function decodeExpectingError(frame: Buffer, reason: string): DecodedFrame {
  const f = decodeFrame(frame);
  expect(f.error).toBe(reason);
  return f;
}

describe('decodeFrame: Ethernet and VLAN tags', () => {
  it('finds the IPv4 header right after an untagged Ethernet header', () => {
    const f = decodeFrame(tcpFrame({ seq: 1, ack: 2, flags: 'A' }));
    expect(f.error).toBeNull();
    expect(f.vlanCount).toBe(0);
    expect(f.vlanKey).toBe(0);
    expect(f.etherType).toBe(ETHERTYPE.IPv4);
    expect(f.l3).toBe('ipv4');
    expect(f.l3Offset - f.base).toBe(ETH);
  });

  it('reads one 802.1Q tag and starts the IP header four bytes later', () => {
    const f = decodeFrame(tcpFrame({ vlan: [100], vlanPcp: [5] }));
    expect(f.error).toBeNull();
    expect(f.vlanCount).toBe(1);
    expect(f.outerVlan).toBe(100);
    expect(f.innerVlan).toBe(0);
    expect(f.vlanKey).toBe(100 * 4096);
    expect(f.l3Offset - f.base).toBe(ETH + 4);
    expect(f.l4).toBe('tcp');
  });

  it('reads an 802.1ad outer tag and an 802.1Q inner tag (QinQ)', () => {
    const frame = tcpFrame({ vlan: [300, 42] });
    expect(frame.readUInt16BE(12)).toBe(ETHERTYPE.QinQ);
    const f = decodeFrame(frame);
    expect(f.error).toBeNull();
    expect(f.vlanCount).toBe(2);
    expect(f.outerVlan).toBe(300);
    expect(f.innerVlan).toBe(42);
    expect(f.vlanKey).toBe(300 * 4096 + 42);
    expect(f.l3Offset - f.base).toBe(ETH + 8);
    expect(f.etherType).toBe(ETHERTYPE.IPv4);
  });

  it('accepts two 802.1Q tags stacked the old way (0x8100 twice)', () => {
    const f = decodeFrame(tcpFrame({ vlan: [7, 8], vlanTpids: [ETHERTYPE.VLAN, ETHERTYPE.VLAN] }));
    expect(f.error).toBeNull();
    expect([f.outerVlan, f.innerVlan]).toEqual([7, 8]);
  });

  it('refuses a stack of three VLAN tags', () => {
    const frame = tcpFrame({ vlan: [1, 2, 3], vlanTpids: [ETHERTYPE.QinQ, ETHERTYPE.VLAN, ETHERTYPE.VLAN] });
    decodeExpectingError(frame, 'vlan-stack-too-deep');
  });

  it('reports a frame shorter than an Ethernet header', () => {
    decodeExpectingError(Buffer.alloc(13), 'truncated-ethernet');
    decodeExpectingError(Buffer.alloc(0), 'truncated-ethernet');
  });

  it('reports a VLAN tag cut short', () => {
    const frame = tcpFrame({ vlan: [100] });
    decodeExpectingError(frame.subarray(0, 16), 'truncated-vlan');
    decodeExpectingError(frame.subarray(0, 14), 'truncated-vlan');
  });

  it('leaves frames of other EtherTypes undecoded but not malformed', () => {
    const lldp = ethernet({}, 0x88cc, Buffer.alloc(46, 0xab));
    const f = decodeFrame(lldp);
    expect(f.error).toBeNull();
    expect(f.l3).toBe('other');
    expect(f.etherType).toBe(0x88cc);
    expect(f.l4).toBe('none');
  });
});

describe('decodeFrame: ARP', () => {
  it('decodes an ARP request and ends the packet before the Ethernet padding', () => {
    const frame = arpFrame({ op: 'request', senderIp: CLIENT_IP, targetIp: VM_IP, padTo: 60 });
    expect(frame.length).toBe(60);
    const f = decodeFrame(frame);
    expect(f.error).toBeNull();
    expect(f.l3).toBe('arp');
    expect(f.l3Offset - f.base).toBe(ETH);
    expect(f.l3End - f.base).toBe(ETH + 28);
    expect(f.arp.operation).toBe(1);
    expect(f.arp.senderIp).toBe(ipv4Bytes(CLIENT_IP).readUInt32BE(0));
    expect(f.arp.targetIp).toBe(ipv4Bytes(VM_IP).readUInt32BE(0));
  });

  it('decodes a tagged ARP reply', () => {
    const f = decodeFrame(arpFrame({ op: 'reply', vlan: [9] }));
    expect(f.error).toBeNull();
    expect(f.arp.operation).toBe(2);
    expect(f.arp.offset - f.base).toBe(ETH + 4);
    expect(f.outerVlan).toBe(9);
  });

  it('reports an ARP packet cut inside its fixed part or its addresses', () => {
    const frame = arpFrame();
    decodeExpectingError(frame.subarray(0, ETH + 7), 'truncated-arp');
    decodeExpectingError(frame.subarray(0, ETH + 27), 'truncated-arp');
  });
});

describe('decodeFrame: IPv4', () => {
  it('skips IPv4 options to find the TCP header', () => {
    const routerAlert = Buffer.from([0x94, 0x04, 0x00, 0x00]);
    const options = Buffer.from([0x01, 0x01, 0x01, 0x00, 0x01, 0x01, 0x01, 0x00]); // NOPs and EOL
    const frame = tcpFrame({ ipv4Options: Buffer.concat([routerAlert, options]), payload: 'abc' });
    const f = decodeFrame(frame);
    expect(f.error).toBeNull();
    expect(f.ipv4.headerLength).toBe(32);
    expect(f.l4Offset - f.base).toBe(ETH + 32);
    expect(f.tcp.offset - f.base).toBe(ETH + 32);
    expect(f.payload().toString()).toBe('abc');
  });

  it('reads the IPv4 header fields through the view', () => {
    const f = decodeFrame(udpFrame({ ipId: 0xbeef, ttl: 17, dontFragment: true }));
    expect(f.ipv4.id).toBe(0xbeef);
    expect(f.ipv4.ttl).toBe(17);
    expect(f.ipv4.protocol).toBe(PROTO.UDP);
    expect(f.ipv4.src).toBe(ipv4Bytes(CLIENT_IP).readUInt32BE(0));
    expect(f.ipv4.dst).toBe(ipv4Bytes(VM_IP).readUInt32BE(0));
    expect(f.ipv4.moreFragments).toBe(false);
    expect(f.ipv4.fragmentOffset).toBe(0);
    expect(f.fragment).toBe(false); // DF alone does not make a fragment
  });

  it('excludes Ethernet padding from the payload by the IPv4 total length', () => {
    const frame = tcpFrame({ flags: 'A', padTo: 60 });
    expect(frame.length).toBe(60);
    const f = decodeFrame(frame);
    expect(f.error).toBeNull();
    expect(f.l3End - f.base).toBe(ETH + IPV4_HEADER_LENGTH + TCP_HEADER_LENGTH);
    expect(f.payloadOffset).toBe(f.l3End);;
    expect(f.payloadLength).toBe(0);
  });

  it('excludes the padding of a short UDP datagram', () => {
    const f = decodeFrame(udpFrame({ payload: 'hi', padTo: 60 }));
    expect(f.error).toBeNull();
    expect(f.payload().toString()).toBe('hi');
  });

  it('marks a first fragment as a fragment but still finds its L4 header', () => {
    const datagram = udpSegment({ sport: 5353, dport: 53, payload: Buffer.alloc(100, 7) });
    const first = ipv4Fragment({ proto: PROTO.UDP, offset: 0, more: true, data: datagram.subarray(0, 48), ipId: 77 });
    const f = decodeFrame(first);
    expect(f.error).toBeNull(); // the UDP length describes the whole datagram, not this piece
    expect(f.fragment).toBe(true);
    expect(f.ipv4.moreFragments).toBe(true);
    expect(f.l4).toBe('udp');
    expect(f.udp.srcPort).toBe(5353);
    expect(f.payloadOffset - f.base).toBe(ETH + IPV4_HEADER_LENGTH + UDP_HEADER_LENGTH);
    expect(f.payloadLength).toBe(40);
  });

  it('gives a non-first fragment no L4 header', () => {
    const datagram = udpSegment({ payload: Buffer.alloc(100, 7) });
    const rest = ipv4Fragment({ proto: PROTO.UDP, offset: 48, more: false, data: datagram.subarray(48) });
    const f = decodeFrame(rest);
    expect(f.error).toBeNull();
    expect(f.fragment).toBe(true);
    expect(f.l4).toBe('fragment');
    expect(f.ipProto).toBe(PROTO.UDP);
    expect(f.ipv4.fragmentOffset).toBe(48);
    expect(f.l4Offset - f.base).toBe(ETH + IPV4_HEADER_LENGTH);
  });

  it('refuses a version other than 4 under the IPv4 EtherType', () => {
    const frame = tcpFrame({});
    frame[ETH] = 0x65;
    decodeExpectingError(frame, 'bad-ipv4-version');
  });

  it('refuses an IHL below 5', () => {
    for (const ihl of [0, 1, 4]) {
      const frame = tcpFrame({});
      frame[ETH] = 0x40 | ihl;
      decodeExpectingError(frame, 'bad-ipv4-header-length');
    }
  });

  it('reports an IHL reaching past the frame', () => {
    const frame = tcpFrame({});
    frame[ETH] = 0x4f;
    decodeExpectingError(frame.subarray(0, ETH + 40), 'truncated-ipv4');
  });

  it('reports a total length beyond the frame', () => {
    const frame = tcpFrame({ payload: 'x' });
    frame.writeUInt16BE(frame.length - ETH + 1, ETH + 2);
    decodeExpectingError(frame, 'truncated-ipv4');
  });

  it('refuses a total length shorter than the header', () => {
    const frame = tcpFrame({});
    frame.writeUInt16BE(19, ETH + 2);
    decodeExpectingError(frame, 'bad-ipv4-total-length');
  });

  it('takes the frame length when the total length is 0 (GSO "BIG TCP")', () => {
    const frame = tcpFrame({ payload: 'big' });
    frame.writeUInt16BE(0, ETH + 2);
    const f = decodeFrame(frame);
    expect(f.error).toBeNull();
    expect(f.l3End - f.base).toBe(frame.length);
    expect(f.payload().toString()).toBe('big');
  });
});

describe('decodeFrame: IPv6 and its extension headers', () => {
  it('finds TCP right after a bare IPv6 header', () => {
    const f = decodeFrame(tcpFrame({ v6: true, payload: 'v6' }));
    expect(f.error).toBeNull();
    expect(f.l3).toBe('ipv6');
    expect(f.etherType).toBe(ETHERTYPE.IPv6);
    expect(f.ipv6.nextHeader).toBe(PROTO.TCP);
    expect(f.ipv6.payloadLength).toBe(TCP_HEADER_LENGTH + 2);
    expect(f.l4Offset - f.base).toBe(ETH + IPV6_HEADER_LENGTH);
    expect(f.payload().toString()).toBe('v6');
  });

  it('walks hop-by-hop, destination options, routing and fragment headers to TCP', () => {
    const extensions: Ipv6Extension[] = [
      { kind: 'hop-by-hop' }, // 8
      { kind: 'dest-options', units: 2 }, // 16
      { kind: 'routing', segments: ['fd77::2', 'fd77::99'] }, // 8 + 32
      { kind: 'fragment', offset: 0, more: true }, // 8
    ];
    const frame = ipv6WithExtensions({ extensions, sport: 1234, dport: 443, payload: 'after the chain' });
    const f = decodeFrame(frame);
    expect(f.error).toBeNull();
    expect(f.ipv6.nextHeader).toBe(PROTO.HopByHop);
    expect(f.ipProto).toBe(PROTO.TCP);
    expect(f.l4).toBe('tcp');
    expect(f.l4Offset - f.base).toBe(ETH + IPV6_HEADER_LENGTH + 8 + 16 + 40 + 8);
    expect(f.tcp.srcPort).toBe(1234);
    expect(f.tcp.dstPort).toBe(443);
    expect(f.fragment).toBe(true);
    expect(f.payload().toString()).toBe('after the chain');
  });

  it('sizes an authentication header in 32-bit words (RFC 4302)', () => {
    const frame = ipv6WithExtensions({ extensions: [{ kind: 'ah', icvWords: 3 }], upper: 'udp', payload: 'ah' });
    const f = decodeFrame(frame);
    expect(f.error).toBeNull();
    expect(f.l4).toBe('udp');
    expect(f.l4Offset - f.base).toBe(ETH + IPV6_HEADER_LENGTH + 24);
    expect(f.payload().toString()).toBe('ah');
  });

  it('gives a non-first IPv6 fragment no L4 header', () => {
    const frame = ipv6WithExtensions({ extensions: [{ kind: 'hop-by-hop' }, { kind: 'fragment', offset: 1448, more: true }] });
    const f = decodeFrame(frame);
    expect(f.error).toBeNull();
    expect(f.fragment).toBe(true);
    expect(f.l4).toBe('fragment');
    expect(f.ipProto).toBe(PROTO.TCP);
    expect(f.l4Offset - f.base).toBe(ETH + IPV6_HEADER_LENGTH + 8 + 8);
  });

  it('treats an atomic fragment (offset 0, no more fragments) as a whole packet (RFC 6946)', () => {
    const frame = ipv6WithExtensions({ extensions: [{ kind: 'fragment', offset: 0, more: false }], payload: 'whole' });
    const f = decodeFrame(frame);
    expect(f.error).toBeNull();
    expect(f.fragment).toBe(false);
    expect(f.l4).toBe('tcp');
    expect(f.payload().toString()).toBe('whole');
  });

  it('stops at No Next Header with an empty opaque upper layer', () => {
    const f = decodeFrame(ipv6WithExtensions({ extensions: [{ kind: 'dest-options' }], upper: 'none' }));
    expect(f.error).toBeNull();
    expect(f.ipProto).toBe(PROTO.NoNext);
    expect(f.l4).toBe('opaque');
    expect(f.payloadLength).toBe(0);
  });

  it(`accepts a chain of ${MAX_IPV6_EXTENSION_HEADERS} extension headers`, () => {
    const extensions: Ipv6Extension[] = Array.from({ length: MAX_IPV6_EXTENSION_HEADERS }, () => ({ kind: 'dest-options' }));
    const f = decodeFrame(ipv6WithExtensions({ extensions }));
    expect(f.error).toBeNull();
    expect(f.l4).toBe('tcp');
  });

  it(`refuses a chain of ${MAX_IPV6_EXTENSION_HEADERS + 1} or more extension headers`, () => {
    for (const n of [MAX_IPV6_EXTENSION_HEADERS + 1, 20]) {
      const extensions: Ipv6Extension[] = Array.from({ length: n }, () => ({ kind: 'dest-options' }));
      decodeExpectingError(ipv6WithExtensions({ extensions }), 'ipv6-header-chain-too-long');
    }
  });

  it('refuses a version other than 6 under the IPv6 EtherType', () => {
    const frame = tcpFrame({ v6: true });
    frame[ETH] = 0x40;
    decodeExpectingError(frame, 'bad-ipv6-version');
  });

  it('reports an extension header whose length runs past the packet', () => {
    const frame = ipv6WithExtensions({ extensions: [{ kind: 'hop-by-hop' }] });
    frame[ETH + IPV6_HEADER_LENGTH + 1] = 200;
    decodeExpectingError(frame, 'truncated-ipv6-extension');
  });

  it('takes the frame length when the payload length is 0 (jumbogram / GSO)', () => {
    const frame = udpFrame({ v6: true, payload: 'jumbo' });
    frame.writeUInt16BE(0, ETH + 4);
    const f = decodeFrame(frame);
    expect(f.error).toBeNull();
    expect(f.l3End - f.base).toBe(frame.length);
    expect(f.payload().toString()).toBe('jumbo');
  });

  it('excludes Ethernet padding by the IPv6 payload length', () => {
    const frame = udpFrame({ v6: true, payload: 'p' });
    const padded = Buffer.concat([frame, Buffer.alloc(10)]);
    const f = decodeFrame(padded);
    expect(f.l3End - f.base).toBe(frame.length);
    expect(f.payload().toString()).toBe('p');
  });
});

describe('decodeFrame: TCP, UDP, ICMP', () => {
  it('reads TCP header fields and puts the payload after the options', () => {
    const frame = tcpFrame({
      sport: 40001, dport: 8080, seq: 0xfffffff0, ack: 0x80000001, flags: 'PA', window: 501,
      options: { ts: [1, 2], sack: [[10, 20]] }, payload: 'GET / HTTP/1.1\r\n',
    });
    const f = decodeFrame(frame);
    expect(f.error).toBeNull();
    expect(f.tcp.srcPort).toBe(40001);
    expect(f.tcp.dstPort).toBe(8080);
    expect(f.tcp.seq).toBe(0xfffffff0);
    expect(f.tcp.ack).toBe(0x80000001);
    expect(f.tcp.flags).toBe(0x18);
    expect(f.tcp.window).toBe(501);
    expect(f.tcp.dataOffset).toBe(TCP_HEADER_LENGTH + 12 + 12);
    expect(f.payloadOffset).toBe(f.l4Offset + f.tcp.dataOffset);;
    expect(f.payloadLength).toBe(16);
    expect(f.payload().toString()).toBe('GET / HTTP/1.1\r\n');
  });

  it('returns the payload as a view into the frame, not a copy', () => {
    const frame = tcpFrame({ payload: 'zero-copy' });
    const f = decodeFrame(frame);
    f.payload()[0] = 0x5a;
    expect(frame[f.payloadOffset - f.base]).toBe(0x5a);
  });

  it('refuses a TCP data offset below 5 words', () => {
    for (const words of [0, 1, 4]) {
      decodeExpectingError(tcpFrame({ dataOffsetWords: words, payload: 'some bytes here' }), 'bad-tcp-data-offset');
    }
  });

  it('refuses a TCP data offset past the end of the packet', () => {
    decodeExpectingError(tcpFrame({ dataOffsetWords: 15, payload: 'short' }), 'bad-tcp-data-offset');
    decodeExpectingError(tcpFrame({ v6: true, dataOffsetWords: 6 }), 'bad-tcp-data-offset');
  });

  it('reads UDP ports and ends the payload at the UDP length', () => {
    const frame = udpFrame({ sport: 1111, dport: 2222, payload: 'datagram' });
    const f = decodeFrame(frame);
    expect(f.error).toBeNull();
    expect(f.l4).toBe('udp');
    expect(f.udp.srcPort).toBe(1111);
    expect(f.udp.dstPort).toBe(2222);
    expect(f.udp.length).toBe(16);
    expect(f.payload().toString()).toBe('datagram');
  });

  it('ends the UDP payload at a UDP length shorter than the IP packet', () => {
    const f = decodeFrame(udpFrame({ payload: 'datagram', length: 12 }));
    expect(f.error).toBeNull();
    expect(f.payload().toString()).toBe('data');
  });

  it('refuses a UDP length below 8 or beyond the packet', () => {
    for (const length of [0, 7]) decodeExpectingError(udpFrame({ payload: 'x', length }), 'bad-udp-length');
    decodeExpectingError(udpFrame({ payload: 'x', length: 10 }), 'bad-udp-length');
    decodeExpectingError(udpFrame({ v6: true, payload: 'x', length: 3 }), 'bad-udp-length');
  });

  it('accepts UDP length 0 over IPv6 (RFC 2675 jumbograms) and uses the packet end', () => {
    const f = decodeFrame(udpFrame({ v6: true, payload: 'jumbo', length: 0 }));
    expect(f.error).toBeNull();
    expect(f.payload().toString()).toBe('jumbo');
  });

  it('decodes an ICMP echo request with its identifier', () => {
    const f = decodeFrame(icmpEcho({ id: 0x1a2b, seq: 3, payload: 'ping' }));
    expect(f.error).toBeNull();
    expect(f.l4).toBe('icmp');
    expect(f.ipProto).toBe(PROTO.ICMP);
    expect(f.icmp.type).toBe(8);
    expect(f.icmp.code).toBe(0);
    expect(f.icmp.echoId).toBe(0x1a2b);
    expect(f.payloadOffset).toBe(f.l4Offset + 4);;
    expect(f.payloadLength).toBe(4 + 4);
  });

  it('decodes ICMPv6 over IPv6', () => {
    const f = decodeFrame(icmpv6({ type: 135, body: Buffer.alloc(20) })); // neighbour solicitation
    expect(f.error).toBeNull();
    expect(f.l4).toBe('icmpv6');
    expect(f.icmp.type).toBe(135);
    expect(f.payloadLength).toBe(20);
  });

  it('treats ICMPv4 inside IPv6 and ICMPv6 inside IPv4 as opaque', () => {
    const icmpInV6 = ipFrame({ v6: true }, PROTO.ICMP, Buffer.alloc(8));
    expect(decodeFrame(icmpInV6).l4).toBe('opaque');
    const icmpv6InV4 = ipFrame({}, PROTO.ICMPv6, Buffer.alloc(8));
    expect(decodeFrame(icmpv6InV4).l4).toBe('opaque');
  });

  it('treats protocols it does not look into as opaque, payload starting at the L4 offset', () => {
    const gre = ipFrame({}, 47, Buffer.alloc(24, 1));
    const f = decodeFrame(gre);
    expect(f.error).toBeNull();
    expect(f.l4).toBe('opaque');
    expect(f.ipProto).toBe(47);
    expect(f.payloadOffset).toBe(f.l4Offset);;
    expect(f.payloadLength).toBe(24);
  });

  it('reports an ICMP message shorter than 4 bytes', () => {
    decodeExpectingError(ipFrame({}, PROTO.ICMP, Buffer.alloc(3)), 'truncated-icmp');
  });

  it('reports UDP and TCP headers cut short', () => {
    decodeExpectingError(ipFrame({}, PROTO.UDP, Buffer.alloc(7)), 'truncated-udp');
    decodeExpectingError(ipFrame({}, PROTO.TCP, Buffer.alloc(19)), 'truncated-tcp');
  });
});

describe('decodeFrame: malformed input never throws', () => {
  // A TCP/IPv6 frame: hop-by-hop header, 12 bytes of TCP options, 10 bytes of payload.
  const v6Frame = ipv6WithExtensions({
    extensions: [{ kind: 'hop-by-hop' }], options: { ts: [5, 6] }, payload: '0123456789',
  });
  const ext = ETH + IPV6_HEADER_LENGTH;
  const tcp = ext + 8;
  const payload = tcp + TCP_HEADER_LENGTH + 12;

  it('reports every truncation of a TCP/IPv6 frame, at every length', () => {
    expect(v6Frame.length).toBe(payload + 10);
    for (let len = 0; len < v6Frame.length; len++) {
      const f = decodeFrame(Buffer.from(v6Frame.subarray(0, len)));
      const expected = len < ETH ? 'truncated-ethernet' : 'truncated-ipv6';
      expect({ len, error: f.error }).toEqual({ len, error: expected });
    }
  });

  it('reports the innermost truncated layer when the IPv6 payload length agrees with the cut', () => {
    for (let len = ext; len <= v6Frame.length; len++) {
      const cut = Buffer.from(v6Frame.subarray(0, len));
      cut.writeUInt16BE(len - ext, ETH + 4);
      const f = decodeFrame(cut);
      // At len === ext the payload length is 0, read as "frame length" (jumbogram): still a cut chain.
      const expected =
        len < tcp ? 'truncated-ipv6-extension'
        : len < tcp + TCP_HEADER_LENGTH ? 'truncated-tcp'
        : len < payload ? 'bad-tcp-data-offset'
        : null;
      expect({ len, error: f.error }).toEqual({ len, error: expected });
      if (expected === null) expect(f.payloadLength).toBe(len - payload);
    }
  });

  it('reports every truncation of a TCP/IPv4 frame with options, at every length', () => {
    const frame = tcpFrame({ ipv4Options: Buffer.from([1, 1, 1, 0]), options: { mss: 1460, sackOk: true }, payload: 'abcdef' });
    const l3 = ETH;
    const l4 = l3 + 24;
    const data = l4 + TCP_HEADER_LENGTH + 8;
    for (let len = 0; len < frame.length; len++) {
      const raw = decodeFrame(Buffer.from(frame.subarray(0, len)));
      expect({ len, error: raw.error }).toEqual({ len, error: len < ETH ? 'truncated-ethernet' : 'truncated-ipv4' });
      if (len < l4) continue;
      const fixed = Buffer.from(frame.subarray(0, len));
      fixed.writeUInt16BE(len - l3, l3 + 2);
      const f = decodeFrame(fixed);
      const expected = len < l4 + TCP_HEADER_LENGTH ? 'truncated-tcp' : len < data ? 'bad-tcp-data-offset' : null;
      expect({ len, error: f.error }).toEqual({ len, error: expected });
    }
  });

  it('never throws on arbitrary bytes behind any EtherType it knows', () => {
    const etherTypes = [ETHERTYPE.IPv4, ETHERTYPE.IPv6, ETHERTYPE.ARP, ETHERTYPE.VLAN, ETHERTYPE.QinQ, 0x88cc];
    fc.assert(
      fc.property(fc.constantFrom(...etherTypes), fc.uint8Array({ maxLength: 200 }), (etherType, body) => {
        const frame = ethernet({}, etherType, Buffer.from(body));
        const f = decodeFrame(frame);
        expect(f.error === null || (MALFORMED_REASONS as readonly string[]).includes(f.error)).toBe(true);
        if (f.error === null && (f.l4 === 'tcp' || f.l4 === 'udp')) {
          expect(f.payloadOffset - f.base + f.payloadLength).toBeLessThanOrEqual(frame.length);
          expect(f.payloadLength).toBeGreaterThanOrEqual(0);
        }
      }),
      { numRuns: 3000 },
    );
  });

  it('never throws on random corruptions of valid frames', () => {
    const seeds = [
      tcpFrame({ options: { mss: 1460, ts: [1, 2] }, payload: 'x' }),
      ipv6WithExtensions({ extensions: [{ kind: 'hop-by-hop' }, { kind: 'routing' }], payload: 'y' }),
      udpFrame({ vlan: [1, 2] }),
      icmpEcho({ v6: true }),
    ];
    fc.assert(
      fc.property(
        fc.constantFrom(...seeds),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 6 }),
        fc.nat(),
        (seed, edits, cut) => {
          const frame = Buffer.from(seed);
          for (const [at, v] of edits) frame[at % frame.length] = v;
          expect(() => decodeFrame(frame.subarray(0, cut % (frame.length + 1)))).not.toThrow();
        },
      ),
      { numRuns: 3000 },
    );
  });

  it('clears the previous frame\'s results when a DecodedFrame is reused', () => {
    const f = new DecodedFrame();
    decodeFrame(ipv6WithExtensions({ extensions: [{ kind: 'fragment', offset: 8, more: false }] }), f);
    expect(f.l4).toBe('fragment');
    decodeFrame(Buffer.alloc(5), f);
    expect(f.error).toBe('truncated-ethernet');
    decodeFrame(tcpFrame({ vlan: [5], payload: 'again' }), f);
    expect(f.error).toBeNull();
    expect(f.fragment).toBe(false);
    expect(f.l4).toBe('tcp');
    expect(f.vlanCount).toBe(1);
    expect(f.payload().toString()).toBe('again');
    decodeFrame(tcpFrame({}), f);
    expect(f.vlanCount).toBe(0);
    expect(f.outerVlan).toBe(0);
  });

  it('rebinds to a byte-identical copy without decoding again', () => {
    const original = tcpFrame({ seq: 99, payload: 'copy me' });
    const f = decodeFrame(original);
    const copy = Buffer.from(original);
    f.rebind(copy);
    f.tcp.seq = 100;
    expect(original.readUInt32BE(f.l4Offset - f.base + 4)).toBe(99);
    expect(copy.readUInt32BE(f.l4Offset - f.base + 4)).toBe(100);
    expect(f.payload().buffer).toBe(copy.buffer);
  });

  it('builds the TCP segment the same way the frame builder frames it', () => {
    // Guard for the builder itself: the segment inside the frame is the segment it builds alone.
    const spec = { seq: 7, ack: 8, flags: 'A', payload: 'q' } as const;
    const f = decodeFrame(tcpFrame(spec));
    expect(f.buf.subarray(f.l4Offset, f.l3End)).toEqual(tcpSegment(spec));
  });
});
