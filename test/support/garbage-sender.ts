/**
 * A hostile client for the live tests: run inside the client namespace, it
 * writes TCP segments no connection accepts straight onto the interface
 * (AF_PACKET), the way a raw-socket attacker would.
 *
 *   node garbage-sender.js IFACE DST_MAC SRC_MAC SRC_IP DST_IP COUNT SEED CLIENT_PORT
 *
 * Half the segments go to random 4-tuples (port 80 and random ports) with
 * random flags, sequence and acknowledgment numbers. The other half aim at a
 * live connection of the client (its local port CLIENT_PORT): the sender
 * watches the interface and sends around where that connection stands
 * (±256 KiB; a quarter with any sequence number), with random flags and
 * payloads. Prints one JSON line.
 */
import { AfPacketPort } from '../../lib/io/afpacket-port';
import { seededRandom } from './random';
import { ipv4Bytes, tcpFrame } from './frames';

async function main(): Promise<void> {
  const [iface, dstMac, srcMac, srcIp, dstIp, countText, seedText, portText] = process.argv.slice(2);
  const target = Number(portText);
  const count = Number(countText);
  const rnd = seededRandom(Number(seedText));
  const int = (n: number) => Math.floor(rnd() * n);
  const port = new AfPacketPort(iface);
  let live: { sport: number; seq: number; ack: number } | null = null;
  const dst = ipv4Bytes(dstIp);
  port.onBatch((frames) => {
    for (const { frame } of frames) {
      if (frame.readUInt16BE(12) !== 0x0800 || frame[23] !== 6 || !frame.subarray(26, 30).equals(dst)) continue;
      const l4 = 14 + (frame[14] & 0xf) * 4;
      if (frame.readUInt16BE(l4) !== 80 || frame.readUInt16BE(l4 + 2) !== target) continue;
      const payload = 14 + frame.readUInt16BE(16) - l4 - (frame[l4 + 12] >> 4) * 4;
      live = { sport: target, seq: frame.readUInt32BE(l4 + 8), ack: (frame.readUInt32BE(l4 + 4) + Math.max(payload, 0)) >>> 0 };
    }
  });
  const base = { from: 'client' as const, srcMac, dstMac, src: srcIp, dst: dstIp };
  let sent = 0;
  let aimed = 0;
  for (let i = 0; i < count; i++) {
    const flags = int(256);
    const payload = Buffer.alloc([0, 0, 10, 100][int(4)], int(256));
    const conn = live as { sport: number; seq: number; ack: number } | null;
    if (i % 2 === 1 && conn) {
      aimed++;
      port.send(tcpFrame({
        ...base, sport: conn.sport, dport: 80, flags, payload,
        seq: rnd() < 0.25 ? int(2 ** 32) : (conn.seq + int(1 << 19) - (1 << 18)) >>> 0, ack: (conn.ack + int(1 << 19) - (1 << 18)) >>> 0,
      }));
    } else {
      port.send(tcpFrame({
        ...base, sport: 1024 + int(64000), dport: rnd() < 0.5 ? 80 : 1 + int(65535), flags, payload,
        seq: int(2 ** 32), ack: int(2 ** 32),
      }));
    }
    sent++;
    if (i % 64 === 63) {
      port.flush();
      await new Promise((r) => setTimeout(r, 1));
    }
  }
  port.flush();
  await port.close();
  process.stdout.write(`${JSON.stringify({ sent, aimed })}\n`);
}

main().catch((e) => {
  process.stderr.write(`garbage-sender: ${(e as Error).message}\n`);
  process.exit(1);
});
