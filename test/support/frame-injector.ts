/**
 * Hostile frames for the live lab (issue 7): SYN and UDP floods from
 * spoofed sources, garbage TCP segments, random ethertypes and malformed frames,
 * built with the test frame builder (frames.ts) from a seed, so a run can be
 * replayed.
 *
 * In:  a spec (which kind, how many, seed, pace, which side sends).
 * Out: the frames, written to an interface through an AF_PACKET port.
 *
 * Run as its own process inside a lab namespace, so the bridge under attack
 * (in the test's or bench's process, or a `shadowvm run` child) never waits
 * for the attacker:
 *
 *   ip netns exec <ns> node dist/test/support/frame-injector.js '{"iface":"eth0","kind":"syn-flood","count":20000}'
 *
 * It prints one JSON line: `{"sent":N,"ms":T,"txErrors":E}`.
 */
import { performance } from 'node:perf_hooks';
import { AfPacketPort } from '../../lib/io/afpacket-port';
import { LAB_CLIENT_IPV4, LAB_CLIENT_IPV6, LAB_CLIENT_MAC, LAB_VM_IPV4, LAB_VM_IPV6, LAB_VM_MAC } from '../../lib/lab/netns';
import { ETHERTYPE, FLAG, PROTO, ethernet, ipFrame, tcpFrame, udpFrame } from './frames';
import { seededRandom } from './random';

export type HostileKind = 'syn-flood' | 'udp-flood' | 'garbage-tcp' | 'ethertypes' | 'malformed';

export interface InjectSpec {
  /** Interface to write to (inside the namespace the process runs in). */
  iface: string;
  kind: HostileKind;
  count: number;
  seed?: number;
  /** Which side the frames pretend to come from: sets MACs and addresses. Default: client for the floods and garbage TCP, vm otherwise. */
  from?: 'client' | 'vm';
  /** Frames per millisecond (paced in bursts of `burst`); 0: as fast as the socket takes them. Default 0. */
  perMs?: number;
  /** Frames per send call. Default 64. */
  burst?: number;
}

export interface InjectResult {
  sent: number;
  ms: number;
  txErrors: number;
}

/** Where udp-flood datagrams go. */
export const UDP_FLOOD_PORT = 7777;

/** Ethertypes the bridge decodes; random ethertypes avoid them (and the 802.3 length range). */
const DECODED_ETHERTYPES: ReadonlySet<number> = new Set([ETHERTYPE.IPv4, ETHERTYPE.IPv6, ETHERTYPE.ARP, ETHERTYPE.VLAN, ETHERTYPE.QinQ, 0x9100]);

function randomBytes(rnd: () => number, n: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = Math.floor(rnd() * 256);
  return b;
}

const int = (rnd: () => number, n: number): number => Math.floor(rnd() * n);

function macs(from: 'client' | 'vm'): { srcMac: string; dstMac: string } {
  return from === 'client' ? { srcMac: LAB_CLIENT_MAC, dstMac: LAB_VM_MAC } : { srcMac: LAB_VM_MAC, dstMac: LAB_CLIENT_MAC };
}

/** A spoofed source outside the lab's subnet (198.18.0.0/15, RFC 2544): the replicas have no route back to it. */
function spoofedSource(i: number): string {
  return `198.${18 + ((i >> 16) & 1)}.${(i >> 8) & 0xff}.${i & 0xff}`;
}

/**
 * Frame number `i` of a kind. Every frame is a fresh Buffer (AF_PACKET
 * sends queue them by reference until the flush).
 */
export function hostileFrame(kind: HostileKind, i: number, rnd: () => number, from: 'client' | 'vm'): Buffer {
  const m = macs(from);
  const [src4, dst4] = from === 'client' ? [LAB_CLIENT_IPV4, LAB_VM_IPV4] : [LAB_VM_IPV4, LAB_CLIENT_IPV4];
  const [src6, dst6] = from === 'client' ? [LAB_CLIENT_IPV6, LAB_VM_IPV6] : [LAB_VM_IPV6, LAB_CLIENT_IPV6];
  switch (kind) {
    case 'syn-flood':
      // One spoofed source per SYN, random ports and ISN: a new half-open flow each time.
      return tcpFrame({
        ...m, src: spoofedSource(i % 131072), dst: LAB_VM_IPV4, sport: 1024 + int(rnd, 64000), dport: 80,
        seq: int(rnd, 2 ** 32), flags: FLAG.SYN, options: { mss: 1460 }, ipId: int(rnd, 65536),
      });
    case 'udp-flood':
      // One spoofed source and port per datagram, to UDP_FLOOD_PORT (where a bench runs an echo server, so the
      // replicas answer and the bridge makes a flow of it): a new datagram flow each time.
      return udpFrame({
        ...m, src: spoofedSource((i + 65536) % 131072), dst: LAB_VM_IPV4, sport: 1024 + int(rnd, 64000), dport: UDP_FLOOD_PORT,
        payload: randomBytes(rnd, 16 + int(rnd, 48)), ipId: int(rnd, 65536),
      });
    case 'garbage-tcp': {
      // From the real client address: segments no live flow accepts (random flags, sequence and ack).
      const dport = rnd() < 0.5 ? 80 : 1 + int(rnd, 65535);
      const payload = rnd() < 0.5 ? randomBytes(rnd, int(rnd, 200)) : undefined;
      const v6 = rnd() < 0.2;
      return tcpFrame({
        ...m, v6, src: v6 ? src6 : src4, dst: v6 ? dst6 : dst4,
        sport: 1024 + int(rnd, 64000), dport, seq: int(rnd, 2 ** 32), ack: int(rnd, 2 ** 32), flags: int(rnd, 256), payload,
        ipId: int(rnd, 65536),
      });
    }
    case 'ethertypes': {
      let type: number;
      do type = 0x0600 + int(rnd, 0x10000 - 0x0600); while (DECODED_ETHERTYPES.has(type));
      return ethernet(m, type, randomBytes(rnd, 46 + int(rnd, 64)));
    }
    case 'malformed':
      return malformedFrame(i, rnd, m, src4, dst4, src6, dst6);
  }
}

/** Well-formed frames from the builder, then one header field broken, in turn. */
function malformedFrame(i: number, rnd: () => number, m: { srcMac: string; dstMac: string },
  src4: string, dst4: string, src6: string, dst6: string): Buffer {
  const tcp4 = () => tcpFrame({ ...m, src: src4, dst: dst4, sport: 1024 + int(rnd, 64000), dport: 80, seq: int(rnd, 2 ** 32), flags: FLAG.ACK, payload: randomBytes(rnd, 32) });
  const udp4 = () => udpFrame({ ...m, src: src4, dst: dst4, sport: 1024 + int(rnd, 64000), dport: 53, payload: randomBytes(rnd, 24) });
  const tcp6 = () => tcpFrame({ ...m, v6: true, src: src6, dst: dst6, sport: 1024 + int(rnd, 64000), dport: 80, flags: FLAG.ACK, payload: randomBytes(rnd, 16) });
  switch (i % 12) {
    case 0: return ethernet(m, ETHERTYPE.IPv4, randomBytes(rnd, int(rnd, 20))); // shorter than an IPv4 header
    case 1: { const f = tcp4(); f[14] = 0x40 | int(rnd, 5); return f; } // IHL < 5
    case 2: { const f = tcp4(); f[14] = (int(rnd, 16) << 4 & 0xb0) | 5; return f; } // IP version neither 4 nor 6
    case 3: { const f = tcp4(); f.writeUInt16BE(f.length + 1 + int(rnd, 2000), 16); return f; } // total length past the frame
    case 4: { const f = tcp4(); f[14 + 20 + 12] = int(rnd, 5) << 4; return f; } // TCP data offset < 5
    case 5: { const f = tcp4(); f[14 + 20 + 12] = 0xf0; return f.subarray(0, 14 + 20 + 24); } // TCP options past the segment
    case 6: { const f = udp4(); f.writeUInt16BE(9 + int(rnd, 60000), 14 + 20 + 4); return f; } // UDP length past the datagram
    case 7: return ethernet(m, ETHERTYPE.IPv6, randomBytes(rnd, int(rnd, 40))); // shorter than an IPv6 header
    case 8: { const f = tcp6(); f.writeUInt16BE(f.length + int(rnd, 4000), 14 + 4); return f; } // IPv6 payload length past the frame
    case 9: { const f = ipFrame({ ...m, v6: true, src: src6, dst: dst6 }, PROTO.HopByHop, randomBytes(rnd, 8)); f[14 + 40 + 1] = 0xff; return f; } // extension header past the frame
    case 10: return ethernet({ ...m, vlan: [int(rnd, 4095)] }, ETHERTYPE.IPv4, randomBytes(rnd, int(rnd, 16))); // tagged, truncated IPv4
    default: { const f = tcp4(); f[14 + 9] = 6; f[14 + 6] = 0x20 | int(rnd, 0x1f); f[14 + 7] = int(rnd, 256); return f; } // a fragment offset on a first-looking header
  }
}

function pause(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Writes `spec.count` frames of `spec.kind` to `spec.iface`. */
export async function inject(spec: InjectSpec): Promise<InjectResult> {
  const rnd = seededRandom(spec.seed ?? 1);
  const from = spec.from ?? (spec.kind === 'syn-flood' || spec.kind === 'udp-flood' || spec.kind === 'garbage-tcp' ? 'client' : 'vm');
  const burst = Math.max(1, spec.burst ?? 64);
  const perMs = spec.perMs ?? 0;
  // A small receive ring: this port only sends.
  const port = new AfPacketPort(spec.iface, { ringFrames: 64, maxQueuedFrames: burst });
  const t0 = performance.now();
  let sent = 0;
  let txErrors = 0;
  try {
    while (sent < spec.count) {
      const n = Math.min(burst, spec.count - sent);
      for (let k = 0; k < n; k++) port.send(hostileFrame(spec.kind, sent + k, rnd, from));
      port.flush();
      sent += n;
      if (perMs > 0) {
        const due = t0 + sent / perMs;
        const wait = due - performance.now();
        if (wait >= 1) await pause(wait);
      }
    }
    txErrors = port.stats().txErrors;
  } finally {
    await port.close();
  }
  return { sent, ms: performance.now() - t0, txErrors };
}

if (require.main === module) {
  const spec = JSON.parse(process.argv[2] ?? '{}') as InjectSpec;
  inject(spec).then(
    (r) => process.stdout.write(`${JSON.stringify(r)}\n`),
    (e) => {
      process.stderr.write(`frame-injector: ${(e as Error).message}\n`);
      process.exitCode = 1;
    },
  );
}
