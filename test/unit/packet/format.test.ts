import { formatIpv4, formatIpv6, formatMac } from '../../../lib/packet';
import { CLIENT_IP, CLIENT_MAC, VM_IP6, ipv4Bytes, ipv6Bytes, macBytes } from '../../support/frames';

/** Formats `text` after parsing it, at an offset so the offset is honoured. */
function roundTrip(text: string): string {
  return formatIpv6(Buffer.concat([Buffer.alloc(3, 0xff), ipv6Bytes(text)]), 3);
}

describe('formatIpv6 (RFC 5952)', () => {
  it.each([
    ['fd77:0:0:0:0:0:0:2', 'fd77::2'],
    ['0:0:0:0:0:0:0:1', '::1'],
    ['0:0:0:0:0:0:0:0', '::'],
    ['fd77:0:0:0:0:0:0:0', 'fd77::'],
    ['2001:db8:0:0:1:0:0:1', '2001:db8::1:0:0:1'], // §4.2.3: equal runs, the first is shortened
    ['2001:db8:0:1:1:1:1:1', '2001:db8:0:1:1:1:1:1'], // §4.2.2: no "::" for one zero group
    ['2001:0:0:1:0:0:0:1', '2001:0:0:1::1'], // §4.2.3: the longest run is shortened
    ['2001:DB8:00AB:0:0:0:0:0FF0', '2001:db8:ab::ff0'], // §4.1 leading zeros, §4.3 lower case
    ['fe80:0:0:0:0:0:0:0', 'fe80::'],
    ['1:2:3:4:5:6:7:8', '1:2:3:4:5:6:7:8'],
    ['0:1:0:1:0:1:0:1', '0:1:0:1:0:1:0:1'],
  ])('writes %s as %s', (input, expected) => {
    expect(roundTrip(input)).toBe(expected);
  });

  it('writes the VM address of the tests as given', () => {
    expect(roundTrip(VM_IP6)).toBe('fd77::2');
  });
});

describe('formatIpv4 and formatMac', () => {
  it('writes dotted quads and colon-separated lower-case MACs', () => {
    expect(formatIpv4(ipv4Bytes(CLIENT_IP), 0)).toBe('10.77.0.1');
    expect(formatIpv4(ipv4Bytes('255.0.10.9'), 0)).toBe('255.0.10.9');
    expect(formatMac(macBytes(CLIENT_MAC), 0)).toBe('02:00:00:00:00:01');
    expect(formatMac(macBytes('AA:bb:0C:dd:EE:0f'), 0)).toBe('aa:bb:0c:dd:ee:0f');
  });
});
