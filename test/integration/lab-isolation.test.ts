/**
 * The backup never speaks to the client (root). Three captures while HTTP and
 * FTP run through the live bridge in the netns lab:
 *
 *   client ns eth0, -Q in    what the client received
 *   primary host veth, -Q in what the primary sent
 *   backup host veth, -Q in  what the backup sent
 *
 * The bridge releases the primary's frames unchanged, so every frame the
 * client received must be byte-identical to one the primary sent; a frame
 * that only the backup sent must never show up at the client. FTP matters
 * here: the replicas' 227 replies differ, and the backup answers the client's
 * connection to the primary's passive port with a RST.
 */
import { join } from 'node:path';
import type { BridgeSnapshot } from '../../lib/control/snapshot';
import { readPcapFile } from '../../lib/io';
import { BridgedLab, startBridgedLab } from '../../lib/lab/bridged';
import { LAB_FILES } from '../../lib/lab/content';
import { runInAsync } from '../../lib/lab/exec';
import { Capture, CaptureSummary, delay, requireRoot, sha256File, startCapture, stopLabAfterAll } from '../support/lab-helpers';

const PREFIX = 'svmi4';
jest.setTimeout(50_000);

/** How many times each distinct frame (as hex) occurs. */
function frameCounts(file: string): Map<string, number> {
  const counts = new Map<string, number>();
  for (const { frame, origLen } of readPcapFile(file)) {
    if (origLen !== frame.length) throw new Error(`${file}: a frame was cut to ${frame.length} of ${origLen} bytes; the capture must be -s0`);
    const key = frame.toString('hex');
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  return counts;
}

/** A short, readable label of a frame for failure messages: its length and first bytes past the MACs. */
function label(hex: string): string {
  return `${hex.length / 2} B: ${hex.slice(24, 24 + 2 * 60)}…`;
}

describe('isolation of the backup', () => {
  let l: BridgedLab | undefined;
  let summaries: { client: CaptureSummary; primary: CaptureSummary; backup: CaptureSummary } | undefined;
  /** The bridge's port counters just before the captures stopped. */
  let ports: BridgeSnapshot['ports'] = [];

  beforeAll(async () => {
    requireRoot('lab-isolation.test.ts');
    // Different passive ports for sure (from one wide range both vsftpds once drew the same one).
    l = await startBridgedLab({ prefix: PREFIX, ftpPassivePorts: { min: 30100, max: 30100 }, backupFtpPassivePorts: { min: 30101, max: 30101 } });
    const { lab, servers } = l;
    const dir = lab.runDir;
    const captures: Capture[] = [];
    try {
      captures.push(await startCapture({ netns: lab.client.netns, iface: lab.client.nsIf, direction: 'in', file: join(dir, 'client-received.pcap') }));
      captures.push(await startCapture({ iface: lab.primary.hostIf, direction: 'in', file: join(dir, 'primary-sent.pcap') }));
      captures.push(await startCapture({ iface: lab.backup.hostIf, direction: 'in', file: join(dir, 'backup-sent.pcap') }));

      const fetched: [string, string][] = [];
      const curlArgs = ['-sS', '--fail', '-g', '--max-time', '20'];
      for (const [i, url] of [
        `http://${lab.serviceIpv4}/${LAB_FILES.blob}`,
        `http://[${lab.serviceIpv6}]/${LAB_FILES.lorem}`,
        `http://${lab.serviceIpv4}/${LAB_FILES.hello}`,
      ].entries()) {
        curlArgs.push('-o', join(dir, `http-${i}`), url);
        fetched.push([join(dir, `http-${i}`), url.slice(url.lastIndexOf('/') + 1)]);
      }
      await runInAsync(lab.client.netns, 'curl', curlArgs, 30_000);
      const ftpTarget = join(dir, 'ftp-hello');
      await runInAsync(lab.client.netns, 'lftp', [
        '-e', `set ftp:passive-mode on; set ftp:prefer-epsv no; set net:max-retries 1; set net:timeout 10; get ${LAB_FILES.hello} -o ${ftpTarget}; quit`,
        `ftp://${lab.serviceIpv4}`,
      ], 30_000);
      fetched.push([ftpTarget, LAB_FILES.hello]);
      // The traffic must have worked, or the captures prove little.
      for (const [file, served] of fetched) {
        if (sha256File(file) !== sha256File(join(servers.primary.contentRoot, served))) throw new Error(`${file} differs from the served ${served}`);
      }
      // Let the last released frames (FIN/ACK) reach the captures.
      await delay(300);
      ports = l.bridge.snapshot().ports;
    } finally {
      const stopped = await Promise.all(captures.map((c) => c.stop()));
      if (stopped.length === 3) summaries = { client: stopped[0], primary: stopped[1], backup: stopped[2] };
    }
  }, 45_000);

  stopLabAfterAll(PREFIX, () => l);

  const captured = () => {
    if (!summaries) throw new Error('the captures did not complete (see beforeAll)');
    return { client: frameCounts(summaries.client.file), primary: frameCounts(summaries.primary.file), backup: frameCounts(summaries.backup.file) };
  };

  test('the three captures are complete: no frame dropped, every frame the bridge moved is in them', () => {
    if (!summaries) throw new Error('the captures did not complete (see beforeAll)');
    expect([summaries.client, summaries.primary, summaries.backup].map((s) => s.droppedByKernel)).toEqual([0, 0, 0]);
    const total = (file: string) => readPcapFile(file).length;
    const port = (role: string) => ports.find((p) => p.role === role)!;
    // The lab is silent apart from the test's traffic, so the captures hold at least what the bridge counted.
    expect(total(summaries.client.file)).toBeGreaterThanOrEqual(port('uplink').txFrames);
    expect(total(summaries.primary.file)).toBeGreaterThanOrEqual(port('primary').rxFrames);
    expect(total(summaries.backup.file)).toBeGreaterThanOrEqual(port('backup').rxFrames);
    expect(port('uplink').txFrames).toBeGreaterThan(50);
  });

  test('the backup sent frames (HTTP answers and the RST to the primary\'s passive port)', () => {
    const { backup } = captured();
    expect(backup.size).toBeGreaterThan(50);
    // A TCP RST from the backup: IPv4, protocol 6, flags with RST set.
    const rsts = [...backup.keys()].filter((hex) => {
      const f = Buffer.from(hex, 'hex');
      return f.readUInt16BE(12) === 0x0800 && f[23] === 6 && (f[14 + (f[14] & 0x0f) * 4 + 13] & 0x04) !== 0;
    });
    expect(rsts.length).toBeGreaterThanOrEqual(1);
  });

  test('every frame the client received is byte-identical to a frame the primary sent', () => {
    const { client, primary } = captured();
    expect(client.size).toBeGreaterThan(50);
    const foreign = [...client.keys()].filter((hex) => !primary.has(hex));
    expect(foreign.map(label)).toEqual([]);
    // Released at most as often as the primary sent it: nothing was duplicated or added.
    const extra = [...client].filter(([hex, n]) => n > (primary.get(hex) ?? 0)).map(([hex, n]) => `${n}× ${label(hex)}`);
    expect(extra).toEqual([]);
  });

  test('no frame of the backup reached the client unless the primary sent the very same bytes', () => {
    const { client, primary, backup } = captured();
    const leaked = [...client.keys()].filter((hex) => backup.has(hex) && !primary.has(hex));
    expect(leaked.map(label)).toEqual([]);
    const backupOnly = [...backup.keys()].filter((hex) => !primary.has(hex));
    expect(backupOnly.length).toBeGreaterThan(0);
    expect(backupOnly.filter((hex) => client.has(hex)).map(label)).toEqual([]);
  });

  test('the client heard the primary\'s 227 reply, never the backup\'s', () => {
    const { client, backup } = captured();
    const pasv = (frames: Map<string, number>) => [...frames.keys()]
      .map((hex) => /227 Entering Passive Mode \([\d,]+\)/.exec(Buffer.from(hex, 'hex').toString('latin1'))?.[0])
      .filter((reply): reply is string => reply !== undefined);
    // Distinct replies: a side may retransmit its reply.
    const heard = [...new Set(pasv(client))];
    const backupSaid = [...new Set(pasv(backup))];
    expect(heard).toHaveLength(1);
    expect(backupSaid).toHaveLength(1);
    // Each vsftpd picked its own passive port.
    expect(heard[0]).not.toBe(backupSaid[0]);
  });
});
