import { ConfigError, PipelineConfig, makePipelineConfig } from '../../../lib/pipeline/config';
import { FlowPolicyRule, FlowPolicyTable, parseCidr, parsePortRange } from '../../../lib/pipeline/flow-policy';
import { decodeFrame } from '../../../lib/packet/frame';
import { icmpFrame, icmpv6, tcpFrame, udpFrame } from '../../support/frames';

function rejection(flowPolicy: unknown): ConfigError {
  try {
    makePipelineConfig({ flowPolicy } as unknown as Partial<PipelineConfig>);
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    return e as ConfigError;
  }
  throw new Error(`accepted ${JSON.stringify(flowPolicy)}`);
}

describe('flowPolicy settings', () => {
  it('accepts a table of rules and keeps it as given', () => {
    const table: FlowPolicyRule[] = [
      { protocol: 'tcp', port: 22, action: 'pass' },
      { protocol: 'udp', port: '5000-5100', cidr: '10.0.0.0/8', action: 'drop-backup-only' },
      { cidr: '2001:db8::/32', action: 'compare' },
      { protocol: 'icmp', action: 'pass' },
    ];
    expect(makePipelineConfig({ flowPolicy: table }).flowPolicy).toEqual(table);
    expect(makePipelineConfig().flowPolicy).toEqual([]);
  });

  it.each([
    [{ a: 1 }, 'flowPolicy', /must be a list \(at most 1024\) of objects with keys protocol, port, cidr, action, got \{"a":1\}/],
    [[{ action: 'pass' }, 'tcp'], 'flowPolicy[1]', /must be an object with keys protocol, port, cidr, action, got "tcp"/],
    [[{ action: 'pass', proto: 'tcp' }], 'flowPolicy[0].proto', /unknown key; allowed keys in flowPolicy\[0\]: protocol, port, cidr, action$/],
    [[{ action: 'pass' }, { action: 'pass' }, { cidr: '10.0.0.0/33', action: 'pass' }], 'flowPolicy[2].cidr', /the prefix length must be 0 to 32, got "10.0.0.0\/33"/],
    [[{ cidr: '10.0.0.1/8', action: 'pass' }], 'flowPolicy[0].cidr', /host bits are set after \/8/],
    [[{ cidr: 'fd00::1/64', action: 'pass' }], 'flowPolicy[0].cidr', /host bits are set after \/64/],
    [[{ cidr: '10.0.0.300', action: 'pass' }], 'flowPolicy[0].cidr', /"10.0.0.300" is not an IPv4 or IPv6 address/],
    [[{ cidr: 'fd00::/129', action: 'pass' }], 'flowPolicy[0].cidr', /prefix length must be 0 to 128/],
    [[{ port: 70000, action: 'pass' }], 'flowPolicy[0].port', /a port is an integer from 0 to 65535, got 70000/],
    [[{ port: '90-80', action: 'pass' }], 'flowPolicy[0].port', /the range runs backwards \(90 > 80\)/],
    [[{ port: 'http', action: 'pass' }], 'flowPolicy[0].port', /write one port \(443\) or a range/],
    [[{ port: true, action: 'pass' }], 'flowPolicy[0].port', /not a number or a string, got true/],
    [[{ protocol: 'sctp', action: 'pass' }], 'flowPolicy[0].protocol', /must be one of "tcp", "udp", "icmp", "any", got "sctp"/],
    [[{ action: 'skip' }], 'flowPolicy[0].action', /must be one of "compare", "pass", "drop-backup-only", got "skip"/],
    [[{ action: 'pass' }, { port: 80 }], 'flowPolicy[1].action', /is required: one of "compare", "pass", "drop-backup-only"/],
    [[{ protocol: 'icmp', port: 7, action: 'pass' }], 'flowPolicy[0].port', /ICMP has no ports/],
  ])('rejects %j, naming the entry and key', (flowPolicy, setting, detail) => {
    const err = rejection(flowPolicy);
    expect(err.setting).toBe(setting);
    expect(err.message).toMatch(detail);
  });

  it('parses ports and ranges, CIDRs of both families and single addresses', () => {
    expect(parsePortRange(443)).toEqual({ lo: 443, hi: 443 });
    expect(parsePortRange('8000-8099')).toEqual({ lo: 8000, hi: 8099 });
    expect(parsePortRange('22')).toEqual({ lo: 22, hi: 22 });
    const v4 = parseCidr('192.168.0.0/16');
    expect(typeof v4).toBe('object');
    if (typeof v4 === 'string') return;
    expect(v4.v6).toBe(false);
    expect(v4.words[0]).toBe(0xc0a80000);
    expect(v4.masks[0]).toBe(0xffff0000);
    const v6 = parseCidr('2001:db8:0:1::/72');
    if (typeof v6 === 'string') throw new Error(v6);
    expect(Array.from(v6.words)).toEqual([0x20010db8, 0x00000001, 0, 0]);
    expect(Array.from(v6.masks)).toEqual([0xffffffff, 0xffffffff, 0xff000000, 0]);
    const mapped = parseCidr('::ffff:10.1.2.3');
    if (typeof mapped === 'string') throw new Error(mapped);
    expect(Array.from(mapped.words)).toEqual([0, 0, 0xffff, 0x0a010203]);
    const all = parseCidr('0.0.0.0/0');
    if (typeof all === 'string') throw new Error(all);
    expect(all.masks[0]).toBe(0);
  });
});

describe('FlowPolicyTable.match', () => {
  const tcpIn = (dport: number, src = '10.77.0.1') => decodeFrame(tcpFrame({ from: 'client', src, dport, flags: 'S', seq: 1 }));
  const tcpOut = (sport: number, dst = '10.77.0.1') => decodeFrame(tcpFrame({ from: 'vm', dst, sport, flags: 'SA', seq: 1, ack: 2 }));
  const tcp6In = (dport: number, src: string) => decodeFrame(tcpFrame({ v6: true, from: 'client', src, dst: 'fd77::2', dport, flags: 'S', seq: 1 }));
  const udpIn = (dport: number, src = '10.77.0.1') => decodeFrame(udpFrame({ from: 'client', src, dport, payload: 'q' }));

  it('answers compare when the table is empty or nothing matches', () => {
    expect(new FlowPolicyTable([]).match(tcpIn(80), 'ingress')).toBe('compare');
    expect(new FlowPolicyTable([{ protocol: 'tcp', port: 22, action: 'pass' }]).match(tcpIn(80), 'ingress')).toBe('compare');
  });

  it('takes the first rule that matches, not the most specific', () => {
    const t = new FlowPolicyTable([
      { protocol: 'tcp', port: '1-1000', action: 'drop-backup-only' },
      { protocol: 'tcp', port: 80, action: 'pass' },
    ]);
    expect(t.match(tcpIn(80), 'ingress')).toBe('drop-backup-only');
    const reversed = new FlowPolicyTable([
      { protocol: 'tcp', port: 80, action: 'pass' },
      { protocol: 'tcp', port: '1-1000', action: 'drop-backup-only' },
    ]);
    expect(reversed.match(tcpIn(80), 'ingress')).toBe('pass');
    expect(reversed.match(tcpIn(81), 'ingress')).toBe('drop-backup-only');
  });

  it('matches port ranges inclusively, on the VM side in both directions', () => {
    const t = new FlowPolicyTable([{ port: '8000-8099', action: 'pass' }]);
    expect(t.match(tcpIn(7999), 'ingress')).toBe('compare');
    expect(t.match(tcpIn(8000), 'ingress')).toBe('pass');
    expect(t.match(tcpIn(8099), 'ingress')).toBe('pass');
    expect(t.match(tcpIn(8100), 'ingress')).toBe('compare');
    expect(t.match(tcpOut(8050), 'egress')).toBe('pass');
    // The client's port is not the VM's.
    expect(t.match(decodeFrame(tcpFrame({ from: 'client', sport: 8050, dport: 80, flags: 'S', seq: 1 })), 'ingress')).toBe('compare');
  });

  it('matches IPv4 CIDRs on the client address, whichever way the frame goes', () => {
    const t = new FlowPolicyTable([{ cidr: '10.77.0.0/30', action: 'pass' }, { cidr: '10.0.0.0/8', action: 'drop-backup-only' }]);
    expect(t.match(tcpIn(80, '10.77.0.3'), 'ingress')).toBe('pass');
    expect(t.match(tcpIn(80, '10.77.0.4'), 'ingress')).toBe('drop-backup-only');
    expect(t.match(tcpIn(80, '11.0.0.1'), 'ingress')).toBe('compare');
    expect(t.match(tcpOut(80, '10.77.0.1'), 'egress')).toBe('pass');
    expect(t.match(tcpOut(80, '10.200.0.1'), 'egress')).toBe('drop-backup-only');
    // The VM's own address (destination going in) is not what the CIDR is about.
    expect(t.match(decodeFrame(tcpFrame({ from: 'client', src: '192.0.2.1', dst: '10.77.0.2', dport: 80, flags: 'S', seq: 1 })), 'ingress')).toBe('compare');
  });

  it('matches IPv6 CIDRs across every word of the address, and never an IPv4 client against them', () => {
    const t = new FlowPolicyTable([{ cidr: '2001:db8:0:1:8000::/65', action: 'pass' }, { cidr: '::/0', action: 'drop-backup-only' }]);
    expect(t.match(tcp6In(80, '2001:db8:0:1:8000::5'), 'ingress')).toBe('pass');
    expect(t.match(tcp6In(80, '2001:db8:0:1:ffff:ffff:ffff:ffff'), 'ingress')).toBe('pass');
    expect(t.match(tcp6In(80, '2001:db8:0:1:7fff::1'), 'ingress')).toBe('drop-backup-only');
    expect(t.match(tcp6In(80, '2001:db8:0:2:8000::1'), 'ingress')).toBe('drop-backup-only');
    expect(t.match(tcpIn(80), 'ingress')).toBe('compare');
    const single = new FlowPolicyTable([{ cidr: 'fd77::1', action: 'pass' }]);
    expect(single.match(tcp6In(80, 'fd77::1'), 'ingress')).toBe('pass');
    expect(single.match(tcp6In(80, 'fd77::3'), 'ingress')).toBe('compare');
  });

  it('matches protocols: any covers all, icmp covers ICMP and ICMPv6, a port rule never matches ICMP', () => {
    const t = new FlowPolicyTable([
      { protocol: 'udp', port: 53, action: 'drop-backup-only' },
      { protocol: 'icmp', action: 'pass' },
      { protocol: 'any', port: 53, action: 'pass' },
    ]);
    expect(t.match(udpIn(53), 'ingress')).toBe('drop-backup-only');
    expect(t.match(tcpIn(53), 'ingress')).toBe('pass');
    expect(t.match(decodeFrame(icmpFrame({ from: 'client', type: 8, body: Buffer.alloc(8) })), 'ingress')).toBe('pass');
    expect(t.match(decodeFrame(icmpv6({ from: 'client', type: 128, body: Buffer.alloc(8) })), 'ingress')).toBe('pass');
    const portsOnly = new FlowPolicyTable([{ protocol: 'any', port: '0-65535', action: 'pass' }]);
    expect(portsOnly.match(decodeFrame(icmpFrame({ from: 'client', type: 8, body: Buffer.alloc(8) })), 'ingress')).toBe('compare');
    expect(portsOnly.match(udpIn(9), 'ingress')).toBe('pass');
  });
});
