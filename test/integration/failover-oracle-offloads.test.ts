/**
 * The failover oracle on run's default ports (root): virtio-net headers,
 * each port read through two rings (split rings, a fanout group where the
 * kernel has one), and the namespaces' offloads on, so the servers' answers
 * reach the bridge as GSO super-frames in the large ring while ACKs and
 * small segments use the small one. A download across a failover at a
 * random moment must give the client exactly the bytes of a download with
 * no failover; the deaths alternate A→B→A→B with re-protection in between.
 * The seed is printed (SHADOWVM_SEED replays one).
 */
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { BridgedLab, startBridgedLab } from '../../lib/lab/bridged';
import { serveOnBoth } from '../../lib/lab/servers';
import { fixedSeedBytes } from '../../lib/lab/content';
import { runInAsync } from '../../lib/lab/exec';
import { LinkWatcher } from '../../lib/io/link-watch';
import { IN_FLIGHT_RECEIVE_BUFFER, paced, requireRoot, sha256, stopLabAfterAll } from '../support/lab-helpers';
import { describeDetections, oracleMoments } from '../support/oracle';

const PREFIX = 'svmoo';
const MOMENTS = 20;
const OBJECT = 'oracle-offloads.bin';
const OBJECT_BYTES = 4 << 20;
jest.setTimeout(300_000);

describe('failover oracle on run\'s default ports, offloads on (netns lab)', () => {
  let l: BridgedLab | undefined;
  let links: LinkWatcher | undefined;

  beforeAll(async () => {
    requireRoot('failover-oracle-offloads.test.ts');
    links = LinkWatcher.open();
    l = await startBridgedLab({ prefix: PREFIX, clientReceiveBufferMax: IN_FLIGHT_RECEIVE_BUFFER, links, vnetHdr: true, splitRings: true });
    // TSO and checksum offload in the namespaces: what a VM's virtio-net sends with offloads on. A replica
    // brought back after its death keeps them (its link goes down and up; the device stays).
    for (const n of [l.lab.primary, l.lab.backup, l.lab.client]) await runInAsync(n.netns, 'ethtool', ['-K', n.nsIf, 'tx', 'on', 'sg', 'on', 'tso', 'on', 'gso', 'on'], 10_000);
    serveOnBoth(l.servers, OBJECT, fixedSeedBytes(OBJECT_BYTES, 0x0ff));
  }, 60_000);
  afterAll(() => links?.close());
  stopLabAfterAll(PREFIX, () => l);

  async function download(name: string): Promise<Buffer> {
    const lab = l!.lab;
    const out = join(lab.runDir, name);
    rmSync(out, { force: true });
    await runInAsync(lab.client.netns, 'wget', paced(out, `http://${lab.serviceIpv4}/${OBJECT}`, '8m', 30), 40_000);
    return readFileSync(out);
  }

  test(`the client receives exactly the bytes of a run with no failover, at ${MOMENTS} random moments, super-frames in flight`, async () => {
    const seed = Number(process.env.SHADOWVM_SEED ?? Math.floor(Math.random() * 2 ** 31));
    console.log(`failover oracle (offloads, split rings) seed ${seed} (replay with SHADOWVM_SEED=${seed})`);
    const lab = l!;
    const p = lab.bridge.pipeline;
    const ports = lab.bridge.snapshot().ports;
    expect(ports.every((port) => port.ring?.large !== undefined)).toBe(true);
    const reference = await download('reference');
    expect(sha256(reference)).toBe(sha256(fixedSeedBytes(OBJECT_BYTES, 0x0ff)));
    const run = await oracleMoments(lab, { moments: MOMENTS, seed, download, reference });
    const after = lab.bridge.snapshot().ports;
    const large = after.reduce((n, port) => n + (port.rxLargeFrames ?? 0), 0);
    console.log(`oracle (offloads, split rings): ${MOMENTS} failovers (${run.midDownload} in the middle of the download), ${describeDetections(run.detectionsMs)}; ` +
      `${large} super-frames through the large rings of ${after.reduce((n, port) => n + port.rxFrames, 0)} frames; ring drops ${after.reduce((n, port) => n + port.rxDrops, 0)}`);
    // Deaths in the middle of downloads, not between them (wget paces them: see paced()).
    expect(run.midDownload).toBeGreaterThanOrEqual(Math.ceil(MOMENTS * 0.75));
    if (run.slow.length) console.log(`promotions later than 100 ms after detection:\n${run.slow.join('\n')}`);
    // The servers' answers did come as super-frames.
    expect(large).toBeGreaterThan(MOMENTS);
    expect(p.failover.failovers).toBeGreaterThanOrEqual(MOMENTS);
    for (let i = 1; i < run.survivors.length; i++) expect(run.survivors[i]).not.toBe(run.survivors[i - 1]);
  });
});
