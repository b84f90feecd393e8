/**
 * The data plane's shard filters in the kernel (root): N AF_PACKET ports on
 * one end of a veth pair, each with shardFilter(N, i), and frames sent into
 * the other end. Every frame must reach exactly the port shardOf names,
 * byte for byte: both directions of a flow, both replicas' answers, tagged
 * or not, fragments, IPv6, ARP. The unit test checks the program against
 * shardOf in an interpreter; this one checks the kernel runs it the same way.
 */
import { AfPacketFrame, AfPacketPort } from '../../lib/io/afpacket-port';
import { run, runQuietly } from '../../lib/lab/exec';
import { shardFilter, shardOf } from '../../lib/dataplane/shard';
import { arpFrame, ipv4Fragment, tcpFrame, udpFrame, udpSegment } from '../support/frames';

const tag = `svmf${process.pid.toString(36)}`;
const A = `${tag}a`, B = `${tag}b`;

async function waitFor(what: string, done: () => boolean, timeoutMs = 3000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!done()) {
    if (Date.now() > until) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

beforeAll(() => {
  run('ip', ['link', 'add', A, 'type', 'veth', 'peer', 'name', B]);
  for (const ifname of [A, B]) {
    // No IPv6 on the pair: nothing on it but what the test sends.
    run('sysctl', ['-q', '-w', `net.ipv6.conf.${ifname}.disable_ipv6=1`]);
    run('ip', ['link', 'set', 'dev', ifname, 'up']);
  }
});

afterAll(() => {
  if (runQuietly('ip', ['link', 'show', 'dev', A])) runQuietly('ip', ['link', 'del', 'dev', A]);
});

function testFrames(): Buffer[] {
  const frames: Buffer[] = [];
  for (let i = 0; i < 40; i++) {
    const sport = 40000 + i * 7;
    frames.push(tcpFrame({ sport, dport: 80, payload: `request ${i}` }));
    frames.push(tcpFrame({ from: 'vm', sport: 80, dport: sport, seq: 1000 + i, payload: `primary answer ${i}` }));
    frames.push(tcpFrame({ from: 'vm', sport: 80, dport: sport, seq: 900000 + i, ipId: 4242, payload: `backup answer ${i}` }));
    frames.push(tcpFrame({ v6: true, sport, dport: 443, payload: `v6 ${i}` }));
    frames.push(udpFrame({ sport, dport: 53, vlan: [10 + i], payload: `tagged ${i}` }));
    frames.push(udpFrame({ sport, dport: 53, vlan: [100, 200 + i], payload: `two tags ${i}` }));
  }
  const seg = udpSegment({ sport: 5353, dport: 53, payload: 'z'.repeat(64) });
  frames.push(ipv4Fragment({ offset: 0, more: true, data: seg.subarray(0, 32) }));
  frames.push(ipv4Fragment({ offset: 32, more: false, data: seg.subarray(32) }));
  frames.push(arpFrame({}));
  return frames;
}

describe('shard filters on a real veth', () => {
  for (const count of [2, 3]) {
    it(`deliver each frame to the one port of ${count} that shardOf names, unchanged`, async () => {
      const got: Buffer[][] = Array.from({ length: count }, () => []);
      const ports = Array.from({ length: count }, (_, i) => {
        const p = new AfPacketPort(A, { filter: shardFilter(count, i) });
        p.onBatch((batch) => { for (const f of batch as readonly AfPacketFrame[]) got[i].push(Buffer.from(f.frame)); });
        return p;
      });
      const sender = new AfPacketPort(B);
      try {
        const frames = testFrames();
        for (const f of frames) sender.send(f);
        sender.flush();
        await waitFor('every frame', () => got.reduce((n, g) => n + g.length, 0) >= frames.length);
        await new Promise((resolve) => setTimeout(resolve, 50)); // and no duplicates after that
        const expected: Buffer[][] = Array.from({ length: count }, () => []);
        for (const f of frames) expected[shardOf(f, count)].push(f);
        // A tag may come back from the kernel in its place (the port puts it back): compare the bytes.
        for (let i = 0; i < count; i++) expect(got[i].map((b) => b.toString('hex'))).toEqual(expected[i].map((b) => b.toString('hex')));
        // Both workers take a share (the flows are spread).
        expect(got.every((g) => g.length > 10)).toBe(true);
      } finally {
        await Promise.all([...ports.map((p) => p.close()), sender.close()]);
      }
    });
  }

  it('refuses a filter that is not whole instructions, and the kernel refuses a program that does not end', () => {
    expect(() => new AfPacketPort(A, { filter: new Uint8Array(12) })).toThrow(/whole struct sock_filter/);
    // One instruction, a load: the kernel's checker wants a return at the end.
    const load = Buffer.alloc(8);
    load.writeUInt16LE(0x28, 0); // ldh [k]
    expect(() => new AfPacketPort(A, { filter: load })).toThrow(/SO_ATTACH_FILTER/);
  });
});
