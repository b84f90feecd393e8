/**
 * HTTP through the live bridge in the netns lab (root): curl in the client
 * namespace, nginx in both replicas, every download compared with the file
 * nginx serves.
 */
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { BridgedLab, startBridgedLab, waitFor } from '../../lib/lab/bridged';
import { LAB_BLOB_BYTES, LAB_FILES } from '../../lib/lab/content';
import type { FlowReport } from '../../lib/pipeline/shadow-flow';
import { runInAsync } from '../../lib/lab/exec';
import { stopLabAfterAll, flowReports, recordingLog, requireRoot, clientPort, serverPort, sha256File } from '../support/lab-helpers';

const PREFIX = 'svmi1';
jest.setTimeout(40_000);

describe('HTTP through the bridge', () => {
  let l: BridgedLab | undefined;
  const recorded = recordingLog();
  /** Body bytes the client received in this file's tests. */
  let downloaded = 0;
  let fetchCount = 0;
  /**
   * The client ends of the connections the tests opened (IP version and port): the flows to look at afterwards.
   * Not the port alone: the kernel may give an IPv4 and an IPv6 connection the same port.
   */
  const clientEnds = new Set<string>();
  const reportEnd = (r: FlowReport) => `${r.key.includes('[') ? 6 : 4}:${clientPort(r)}`;

  const bridged = (): BridgedLab => {
    if (!l) throw new Error('the bridged lab did not start (see beforeAll)');
    return l;
  };

  /** One curl run: every URL written to its own file; `-w` reports the connection of each transfer. */
  async function curl(urls: string[]): Promise<{ files: string[]; transfers: { connects: number; localIp: string; localPort: number; code: number }[] }> {
    const { lab } = bridged();
    const files = urls.map(() => join(lab.runDir, `download-${++fetchCount}`));
    const args = ['-sS', '--fail', '-g', '--max-time', '20', '-w', '%{num_connects} %{local_ip} %{local_port} %{http_code}\\n'];
    urls.forEach((url, i) => args.push('-o', files[i], url));
    const out = await runInAsync(lab.client.netns, 'curl', args, 30_000);
    const transfers = out.trim().split('\n').map((line) => {
      const [connects, localIp, localPort, code] = line.split(' ');
      return { connects: Number(connects), localIp, localPort: Number(localPort), code: Number(code) };
    });
    for (const t of transfers) clientEnds.add(`${t.localIp.includes(':') ? 6 : 4}:${t.localPort}`);
    return { files, transfers };
  }

  /** Asserts each downloaded file is byte-identical to the file nginx serves. */
  function expectIdentical(files: string[], served: string[]): void {
    const root = bridged().servers.primary.contentRoot;
    const sizes = files.map((f) => statSync(f).size);
    expect(files.map(sha256File)).toEqual(served.map((name) => sha256File(join(root, name))));
    downloaded += sizes.reduce((a, b) => a + b, 0);
  }

  beforeAll(async () => {
    requireRoot('lab-http.test.ts');
    l = await startBridgedLab({ prefix: PREFIX, log: recorded.log });
  }, 30_000);

  stopLabAfterAll(PREFIX, () => l);

  test('downloads the 100 KiB blob over IPv4 byte-identical to the served file', async () => {
    const { lab } = bridged();
    const { files, transfers } = await curl([`http://${lab.serviceIpv4}/${LAB_FILES.blob}`]);
    expect(transfers.map((t) => t.code)).toEqual([200]);
    expectIdentical(files, [LAB_FILES.blob]);
    expect(statSync(files[0]).size).toBe(LAB_BLOB_BYTES);
  });

  test('downloads the 100 KiB blob and a text file over IPv6 byte-identical to the served files', async () => {
    const { lab } = bridged();
    const { files, transfers } = await curl([`http://[${lab.serviceIpv6}]/${LAB_FILES.blob}`, `http://[${lab.serviceIpv6}]/${LAB_FILES.lorem}`]);
    expect(transfers.map((t) => t.code)).toEqual([200, 200]);
    expectIdentical(files, [LAB_FILES.blob, LAB_FILES.lorem]);
  });

  test('serves several files on one keep-alive connection byte-identical to the served files', async () => {
    const { lab } = bridged();
    const names = [LAB_FILES.hello, LAB_FILES.blob, LAB_FILES.index, LAB_FILES.lorem, LAB_FILES.notes, LAB_FILES.blob];
    const { files, transfers } = await curl(names.map((n) => `http://${lab.serviceIpv4}/${n}`));
    expect(transfers.map((t) => t.code)).toEqual(names.map(() => 200));
    // One connection for all: only the first transfer connected, all from the same local port.
    expect(transfers.map((t) => t.connects)).toEqual(names.map((_, i) => (i === 0 ? 1 : 0)));
    expect(new Set(transfers.map((t) => t.localPort)).size).toBe(1);
    expectIdentical(files, names);
  });

  test('afterwards reports no mismatch, at least the downloaded bytes matched, and state COMPARING', async () => {
    const { bridge } = bridged();
    expect(downloaded).toBeGreaterThanOrEqual(3 * LAB_BLOB_BYTES);
    // Released output may still be in flight: wait until nothing is held.
    await waitFor(() => bridge.snapshot().heldOutput.frames === 0, 2000);
    const snap = bridge.snapshot();
    const http = flowReports(bridge).filter((r) => r.protocol === 'tcp' && serverPort(r) === 80);
    // One connection per curl run, each seen by the bridge as one flow.
    expect(clientEnds.size).toBe(3);
    expect(http.map(reportEnd).sort()).toEqual([...clientEnds].sort());
    expect(http.filter((r) => r.mismatches > 0).map((r) => ({ flow: r.key, mismatches: r.mismatchList }))).toEqual([]);
    expect({ mismatches: snap.mismatches, state: snap.state, mismatchCheckpoints: snap.checkpoints.requested.mismatch })
      .toEqual({ mismatches: 0, state: 'COMPARING', mismatchCheckpoints: 0 });
    expect(snap.bytesMatched).toBeGreaterThanOrEqual(downloaded);
    expect(snap.bytesReleased).toBeGreaterThanOrEqual(downloaded);
    expect(http.reduce((sum, r) => sum + r.matchedBytes, 0)).toBeGreaterThanOrEqual(downloaded);
    expect(recorded.events.filter((e) => e.event === 'mismatch')).toEqual([]);
  });
});
