import { decodeFrame } from '../../../lib/packet/frame';
import { datagramContent } from '../../../lib/normalize/datagram';
import { icmpFrame, icmpv6, tcpFrame } from '../../support/frames';

/** The IP packet inside a frame (what an ICMP error quotes). */
const ipPacket = (frame: Buffer) => frame.subarray(14);

describe('ICMP errors quoting a client segment', () => {
  // The client's segment as each replica received it: the backup's copy has its ACK translated.
  const primaryCopy = tcpFrame({ from: 'client', seq: 1000, ack: 5001, payload: 'garbage' });
  const backupCopy = tcpFrame({ from: 'client', seq: 1000, ack: 900001, payload: 'garbage', ttl: 63 });

  it('compare equal when the quotes differ only where the backup\'s copy was translated', () => {
    const body = (q: Buffer) => Buffer.concat([Buffer.alloc(4), ipPacket(q)]);
    const a = datagramContent(decodeFrame(icmpFrame({ from: 'vm', type: 3, code: 3, body: body(primaryCopy) })));
    const b = datagramContent(decodeFrame(icmpFrame({ from: 'vm', type: 3, code: 3, body: body(backupCopy) })));
    expect(a.equals(b)).toBe(true);
    const v6a = datagramContent(decodeFrame(icmpv6({ from: 'vm', type: 1, code: 4, body: Buffer.concat([Buffer.alloc(4), ipPacket(tcpFrame({ from: 'client', v6: true, seq: 7, ack: 1 }))]) })));
    const v6b = datagramContent(decodeFrame(icmpv6({ from: 'vm', type: 1, code: 4, body: Buffer.concat([Buffer.alloc(4), ipPacket(tcpFrame({ from: 'client', v6: true, seq: 7, ack: 99 }))]) })));
    expect(v6a.equals(v6b)).toBe(true);
  });

  it('still differ when they quote different segments or say different things', () => {
    const body = (q: Buffer) => Buffer.concat([Buffer.alloc(4), ipPacket(q)]);
    const other = tcpFrame({ from: 'client', seq: 2000, ack: 5001, payload: 'garbage' });
    const a = datagramContent(decodeFrame(icmpFrame({ from: 'vm', type: 3, code: 3, body: body(primaryCopy) })));
    expect(a.equals(datagramContent(decodeFrame(icmpFrame({ from: 'vm', type: 3, code: 3, body: body(other) }))))).toBe(false);
    expect(a.equals(datagramContent(decodeFrame(icmpFrame({ from: 'vm', type: 3, code: 1, body: body(primaryCopy) }))))).toBe(false);
  });
});
