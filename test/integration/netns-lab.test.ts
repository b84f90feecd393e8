/**
 * The netns lab with real servers, and CapPort on a live veth. Needs root.
 * Uses its own prefix so it can run beside a recording or another lab.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { CapPort } from '../../lib/io/cap-port';
import { ReceivedFrame } from '../../lib/io/port';
import { LAB_FILES, labContent } from '../../lib/lab/content';
import {
  Lab, LabProcess, buildLab, findLabLeftovers, processRunning, teardownLab, waitUntilQuiet,
} from '../../lib/lab/netns';
import { startLabServers } from '../../lib/lab/servers';
import { finishChecksum, onesSum } from '../../lib/packet/checksum';

const run = promisify(execFile);
const prefix = `t${process.pid.toString(36)}`;

function macBytes(mac: string): Buffer {
  return Buffer.from(mac.split(':').map((h) => parseInt(h, 16)));
}

function ipv4Bytes(addr: string): Buffer {
  return Buffer.from(addr.split('.').map(Number));
}

/** An ICMP echo request from the lab's client to the service address, as the client would send it. */
function echoRequest(lab: Lab, id: number): Buffer {
  const payload = Buffer.from('shadowvm cap-port check');
  const icmp = Buffer.alloc(8 + payload.length);
  icmp[0] = 8;
  icmp.writeUInt16BE(id, 4);
  icmp.writeUInt16BE(1, 6);
  payload.copy(icmp, 8);
  icmp.writeUInt16BE(finishChecksum(onesSum(icmp, 0, icmp.length)), 2);
  const ip = Buffer.alloc(20);
  ip[0] = 0x45;
  ip.writeUInt16BE(20 + icmp.length, 2);
  ip.writeUInt16BE(0x4000, 6);
  ip[8] = 64;
  ip[9] = 1;
  ipv4Bytes(lab.client.ipv4).copy(ip, 12);
  ipv4Bytes(lab.primary.ipv4).copy(ip, 16);
  ip.writeUInt16BE(finishChecksum(onesSum(ip, 0, 20)), 10);
  const eth = Buffer.concat([macBytes(lab.primary.mac), macBytes(lab.client.mac), Buffer.from([0x08, 0x00])]);
  return Buffer.concat([eth, ip, icmp]);
}

describe('netns lab', () => {
  let lab: Lab | undefined;
  let servers: LabProcess[] = [];

  beforeAll(async () => {
    if (process.getuid?.() !== 0) {
      throw new Error('the netns lab integration tests need root (ip netns, veth pairs, servers in namespaces): run jest as root');
    }
    lab = buildLab({ prefix });
    await startLabServers(lab);
    servers = [...lab.processes];
  });

  afterAll(() => {
    // Idempotent: also cleans up when beforeAll failed half-way.
    teardownLab(lab ?? prefix);
  });

  test('builds three namespaces with cloned primary and backup addresses', async () => {
    const l = lab as Lab;
    const show = async (netns: string): Promise<string> => (await run('ip', ['-n', netns, 'addr', 'show', 'dev', 'eth0'])).stdout;
    const [primary, backup, client] = await Promise.all([show(l.primary.netns), show(l.backup.netns), show(l.client.netns)]);
    for (const out of [primary, backup]) {
      expect(out).toContain(`link/ether ${l.primary.mac}`);
      expect(out).toContain(`inet ${l.serviceIpv4}/24`);
      expect(out).toContain(`inet6 ${l.serviceIpv6}/64`);
    }
    expect(client).toContain(`link/ether ${l.client.mac}`);
    expect((await run('ip', ['-o', 'addr', 'show', 'dev', l.primary.hostIf])).stdout).not.toMatch(/inet/);
  });

  test('nginx answers inside the primary namespace', async () => {
    const l = lab as Lab;
    const { stdout } = await run('ip', ['netns', 'exec', l.primary.netns, 'curl', '-sS', '--fail', `http://127.0.0.1/${LAB_FILES.hello}`]);
    expect(stdout).toBe(labContent().get(LAB_FILES.hello)?.toString());
  });

  test('primary and backup send the same response headers apart from Date', async () => {
    const l = lab as Lab;
    const headers = async (netns: string): Promise<string> => {
      const { stdout } = await run('ip', ['netns', 'exec', netns, 'curl', '-sS', '--fail', '-o', '/dev/null', '-D', '-', `http://127.0.0.1/${LAB_FILES.blob}`]);
      return stdout.replace(/^Date: .*$/m, 'Date: -');
    };
    const [primary, backup] = await Promise.all([headers(l.primary.netns), headers(l.backup.netns)]);
    expect(primary).toContain('ETag:');
    expect(backup).toBe(primary);
  });

  test('a cap port receives the answer to a frame it sent, never the frame itself', async () => {
    const l = lab as Lab;
    await waitUntilQuiet(l);
    const port = new CapPort(l.primary.hostIf);
    const received: Buffer[] = [];
    port.onBatch((frames: readonly ReceivedFrame[]) => {
      for (const { frame } of frames) received.push(Buffer.from(frame));
    });
    try {
      port.send(echoRequest(l, 0x5eed));
      port.flush();
      await new Promise((resolve) => setTimeout(resolve, 500));
    } finally {
      await port.close();
    }
    expect(received).toHaveLength(1);
    const reply = received[0];
    expect(reply.readUInt16BE(12)).toBe(0x0800);
    expect(reply[14 + 20]).toBe(0); // ICMP echo reply, from the primary
    expect(reply.readUInt16BE(14 + 20 + 4)).toBe(0x5eed);
    expect(port.stats()).toMatchObject({ rxFrames: 1, txFrames: 1, txErrors: 0 });
  });

  test('teardown removes the namespaces, the host veth ends, the servers and the run directory', () => {
    const report = teardownLab(lab as Lab);
    expect(report.failures).toEqual([]);
    expect(findLabLeftovers(prefix)).toEqual({ namespaces: [], links: [], processes: [], runDirExists: false });
    expect(servers.filter((s) => processRunning(s.pid))).toEqual([]);
    expect(teardownLab(prefix).failures).toEqual([]);
  });
});
