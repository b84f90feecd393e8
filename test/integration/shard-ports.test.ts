/**
 * A worker's ports in the kernel (root): the ports `run --workers 2` opens,
 * one set per worker on the same interface, through openOne and
 * openOneLater with `shard` {2, 0} and {2, 1}. Split-ring ports (each pair
 * of sockets in its own fanout group, each socket's filter its shard AND its
 * ring's length class) and one-ring ports, side by side on one veth, with
 * MTU-sized frames and GSO super-frames of many flows sent into the other
 * end: each kind of port must take every frame once between its two
 * workers, each worker only the frames whose shardOf is its index.
 * test/unit/dataplane/shard.test.ts checks the composed programs in an
 * interpreter; this one checks the kernel accepts and runs them.
 */
import { execFileSync } from 'node:child_process';
import { AfPacketPort, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VirtioNetHeader } from '../../lib/io/afpacket-port';
import { SplitRingPort, SMALL_FRAME_MAX } from '../../lib/io/split-ring-port';
import { openOne, openOneLater, PortOptions } from '../../lib/cli/ports';
import { shardOf } from '../../lib/dataplane/shard';
import { PacketPort } from '../../lib/io/port';
import { run, runQuietly } from '../../lib/lab/exec';
import { flowFrame, layoutOf, randomFlow } from '../support/frames';
import { requireRoot } from '../support/lab-helpers';
import { seededRandom } from '../support/random';
import { until } from '../support/until';

const tag = `svmw${process.pid.toString(36)}`;
const SENDER = `${tag}a`, WORKERS = `${tag}b`;

const SMALL_FRAMES = 300, SUPER_FRAMES = 100;

interface Sent { frame: Buffer; vnet?: VirtioNetHeader }

/** Frames of many flows, each with its number in its payload: MTU-sized ones (tagged or not), then TCP super-frames above the split bound. */
function testFrames(): Sent[] {
  const random = seededRandom(23);
  const sent: Sent[] = [];
  for (let n = 0; n < SMALL_FRAMES; n++) {
    const flow = randomFlow(random);
    // At most 1,514 bytes, 1,518 with one tag: what a 1500-byte MTU lets through the veth.
    const most = 1514 + (flow.vlan?.length === 1 ? 4 : 0);
    sent.push({ frame: flowFrame({ ...flow, vlan: flow.vlan?.length === 2 ? undefined : flow.vlan }, 120 + Math.floor(random() * (most - 120 + 1)), `frame#${n}#`) });
  }
  for (let n = SMALL_FRAMES; n < SMALL_FRAMES + SUPER_FRAMES; n++) {
    const flow = { ...randomFlow(random), udp: false, vlan: undefined };
    const frame = flowFrame(flow, SMALL_FRAME_MAX + 1 + Math.floor(random() * 20_000), `frame#${n}#`);
    const l4 = layoutOf(frame).l4Offset;
    const gsoType = flow.v6 ? VIRTIO_NET_HDR_GSO_TCPV6 : VIRTIO_NET_HDR_GSO_TCPV4;
    sent.push({ frame, vnet: { flags: VIRTIO_NET_HDR_F_NEEDS_CSUM, gsoType, hdrLen: l4 + 20, gsoSize: 1400, csumStart: l4, csumOffset: 16 } });
  }
  return sent;
}

/** The frame's number (its payload says), or -1. */
function numberOf(frame: Buffer): number {
  const m = /frame#(\d+)#/.exec(frame.toString('latin1'));
  return m ? Number(m[1]) : -1;
}

/** Everything but a super-frame's TCP checksum, which offload leaves partial. */
function comparable(s: Sent): Buffer {
  if (!s.vnet) return s.frame;
  const c = Buffer.from(s.frame);
  c.writeUInt16BE(0, s.vnet.csumStart + s.vnet.csumOffset);
  return c;
}

describe('worker ports (PortOptions.shard) on a veth', () => {
  const open: PacketPort[] = [];

  beforeAll(() => {
    requireRoot('shard-ports.test.ts');
    run('ip', ['link', 'add', SENDER, 'type', 'veth', 'peer', 'name', WORKERS]);
    for (const ifname of [SENDER, WORKERS]) {
      // No IPv6 on the pair: nothing on it but what the test sends.
      run('sysctl', ['-q', '-w', `net.ipv6.conf.${ifname}.disable_ipv6=1`]);
      run('ip', ['link', 'set', 'dev', ifname, 'up']);
    }
  });

  afterAll(async () => {
    await Promise.all(open.splice(0).map((p) => p.close()));
    if (runQuietly('ip', ['link', 'show', 'dev', SENDER])) runQuietly('ip', ['link', 'del', 'dev', SENDER]);
  });

  test('split-ring and one-ring ports of workers 0 and 1 each take every frame once between them, each worker its own shard', async () => {
    const options = (split: boolean, index: number): PortOptions => ({ vnetHdr: true, splitRings: split, shard: { count: 2, index } });
    // Worker 0's ports open at start (openOne), worker 1's split port as a new backup's would (openOneLater), and the other way round.
    const kinds = {
      split: [openOne('afpacket', WORKERS, options(true, 0)), await openOneLater('afpacket', WORKERS, options(true, 1))],
      oneRing: [await openOneLater('afpacket', WORKERS, options(false, 0)), openOne('afpacket', WORKERS, options(false, 1))],
      // One worker of one: no filter, every frame.
      whole: [openOne('afpacket', WORKERS, { vnetHdr: true, splitRings: true, shard: { count: 1, index: 0 } })],
    };
    const got = new Map<PacketPort, Buffer[]>();
    for (const port of Object.values(kinds).flat()) {
      open.push(port);
      const frames: Buffer[] = [];
      got.set(port, frames);
      port.onBatch((batch) => { for (const f of batch) frames.push(Buffer.from(f.frame)); });
    }
    expect(kinds.split.every((p) => p instanceof SplitRingPort) && kinds.oneRing.every((p) => p instanceof AfPacketPort)).toBe(true);
    // On a kernel that can, each pair of rings has a fanout group of its own, in one process: three pairs on one interface.
    const [major, minor] = execFileSync('uname', ['-r'], { encoding: 'utf8' }).split('.').map(Number);
    const able = major > 6 || (major === 6 && minor >= 2);
    expect([...kinds.split, ...kinds.whole].map((p) => (p as SplitRingPort).fanout)).toEqual([able, able, able]);

    const sender = new AfPacketPort(SENDER, { vnetHdr: true });
    open.push(sender);
    const sent = testFrames();
    for (let i = 0; i < sent.length; i += 20) {
      for (const s of sent.slice(i, i + 20)) sender.send(s.frame, s.vnet);
      sender.flush();
      await new Promise((resolve) => setImmediate(resolve));
    }
    expect(sender.stats()).toMatchObject({ txFrames: sent.length, txErrors: 0 });
    const total = (ports: PacketPort[]) => ports.reduce((n, p) => n + got.get(p)!.length, 0);
    await until('every frame at every kind of port', () => Object.values(kinds).every((ports) => total(ports) >= sent.length), 5000);
    await new Promise((resolve) => setTimeout(resolve, 100)); // and no duplicates after that

    for (const [kind, ports] of Object.entries(kinds)) {
      const count = ports.length;
      const seen = new Array<number>(sent.length).fill(0);
      const wrong: string[] = [];
      ports.forEach((port, index) => {
        for (const frame of got.get(port)!) {
          const n = numberOf(frame);
          if (n < 0) { wrong.push(`${kind} worker ${index}: a frame not sent (${frame.length} bytes)`); continue; }
          seen[n]++;
          if (!comparable({ frame, vnet: sent[n].vnet }).equals(comparable(sent[n]))) wrong.push(`${kind} worker ${index}: frame ${n} changed`);
          if (count > 1 && shardOf(frame, count) !== index) wrong.push(`${kind} worker ${index}: frame ${n} is worker ${shardOf(frame, count)}'s`);
        }
      });
      expect({ kind, wrong, notOnce: seen.flatMap((times, n) => (times === 1 ? [] : [`frame ${n} ${times} times`])) }).toEqual({ kind, wrong: [], notOnce: [] });
      for (const port of ports) expect(port.stats().rxDrops).toBe(0);
      // The flows are spread: each worker takes a share of both sizes.
      if (count > 1) for (const port of ports) expect(got.get(port)!.filter((f) => f.length > SMALL_FRAME_MAX).length).toBeGreaterThan(SUPER_FRAMES / 5);
    }
    // The split ports' super-frames came through their large rings.
    const large = (p: PacketPort) => (p.stats() as unknown as { rxLargeFrames: number }).rxLargeFrames;
    expect([large(kinds.split[0]) + large(kinds.split[1]), large(kinds.whole[0])]).toEqual([SUPER_FRAMES, SUPER_FRAMES]);
  });
});
