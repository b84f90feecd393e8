/**
 * `shadowvm run` as an administrator starts it (its own process, the data
 * plane on a SCHED_RR thread: --realtime auto as root) protecting the netns
 * lab with the lab agent: the primary dies in the middle of a download, the
 * backup takes over, and the download arrives intact. The promotion runs on
 * the realtime thread, which keeps its policy afterwards. Needs root.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fixedSeedBytes } from '../../lib/lab/content';
import { runInAsync } from '../../lib/lab/exec';
import { killReplica } from '../../lib/lab/faults';
import { Lab, buildLab, findLabLeftovers, teardownLab, waitUntilQuiet } from '../../lib/lab/netns';
import { serveOnBoth, startLabServers } from '../../lib/lab/servers';
import { delay, IN_FLIGHT_RECEIVE_BUFFER, NO_LEFTOVERS, paced, readThreads, requireBuiltCli, requireRoot, RunWithLabAgent, SCHED_RR, sha256, startRunWithLabAgent } from '../support/lab-helpers';

const PREFIX = 'svmrtf';
const FILE = 'rt-failover.bin';
const BYTES = 12 << 20;
jest.setTimeout(120_000);

/** The policies of `pid`'s threads named `name`. */
function policiesOf(pid: number, name: string): number[] {
  return readThreads(pid).filter((t) => t.name === name).map((t) => t.policy);
}

describe('shadowvm run with a realtime data plane: failover (netns lab, root)', () => {
  let lab: Lab | undefined;
  let run: RunWithLabAgent | undefined;

  afterAll(async () => {
    await run?.stop();
    teardownLab(PREFIX);
    expect(findLabLeftovers(PREFIX)).toEqual(NO_LEFTOVERS);
  }, 30_000);

  it('the primary dies mid-download: the realtime data plane promotes the backup, the download arrives intact, the thread stays SCHED_RR', async () => {
    requireRoot('run-realtime-failover.test.ts');
    requireBuiltCli();
    lab = buildLab({ prefix: PREFIX, clientReceiveBufferMax: IN_FLIGHT_RECEIVE_BUFFER });
    const servers = await startLabServers(lab);
    const content = fixedSeedBytes(BYTES, 0x4e7);
    serveOnBoth(servers, FILE, content);
    await waitUntilQuiet(lab);
    run = await startRunWithLabAgent(lab, PREFIX, ['--no-vnet-hdr', '--send-thread', 'on', '--log-level', 'info']);
    const s = await run.status();
    expect(s?.dataPlane).toEqual(expect.objectContaining({ policy: 'rr', priority: 10 }));
    const pid = run.bridge.child.pid!;
    expect(policiesOf(pid, 'svm-dataplane')).toEqual([SCHED_RR]);

    const out = join(lab.runDir, 'download.bin');
    const download = runInAsync(lab.client.netns, 'wget', paced(out, `http://${lab.serviceIpv4}/${FILE}`, '4m', 60), 70_000);
    await delay(1200);
    await killReplica(lab, lab.primary, 'abrupt');
    await download;
    expect(sha256(readFileSync(out))).toBe(sha256(content));

    const after = await run.status();
    expect(after?.failover.count).toBe(1);
    expect(after?.failover.last?.cause).toBe('carrier');
    expect(after?.failover.last?.flowsCarried).toBeGreaterThanOrEqual(1);
    expect(after?.replicas?.find((r) => r.port === lab!.backup.hostIf)?.role).toBe('primary');
    expect(after?.dataPlane).toEqual(expect.objectContaining({ policy: 'rr', priority: 10 }));
    expect(policiesOf(pid, 'svm-dataplane')).toEqual([SCHED_RR]);
    expect(policiesOf(pid, 'svm-send')).toEqual([SCHED_RR]);
    // Node's platform threads (V8's helpers) run one step below it; every other 'node' thread, the main one first, stays normal.
    const helpers = after?.dataPlane?.helpers;
    expect(helpers?.priority).toBe(9);
    const threads = readThreads(pid);
    expect(threads.filter((t) => helpers!.tids.includes(t.tid)).every((t) => t.policy === SCHED_RR)).toBe(true);
    expect(threads.filter((t) => t.name === 'node' && !helpers!.tids.includes(t.tid)).every((t) => t.policy === 0)).toBe(true);
    expect(threads.find((t) => t.tid === pid)?.policy).toBe(0);
    console.log(`realtime failover: promoted ${after?.failover.last?.detectionToPromotionMs.toFixed(1)} ms after detection, ${after?.failover.last?.flowsCarried} flow(s) carried`);
  });

  it('run\'s default ports (split rings) with offloads on: the primary dies mid-download (super-frames in flight), the download arrives intact', async () => {
    await run?.stop();
    teardownLab(PREFIX);
    lab = buildLab({ prefix: PREFIX, clientReceiveBufferMax: IN_FLIGHT_RECEIVE_BUFFER });
    const l = lab;
    const servers = await startLabServers(l);
    const content = fixedSeedBytes(BYTES, 0x5f1);
    serveOnBoth(servers, FILE, content);
    // TSO in the namespaces: the servers' segments reach the bridge as super-frames.
    for (const n of [l.primary, l.backup, l.client]) await runInAsync(n.netns, 'ethtool', ['-K', n.nsIf, 'tx', 'on', 'tso', 'on', 'gso', 'on'], 10_000);
    await waitUntilQuiet(l);
    run = await startRunWithLabAgent(l, PREFIX, ['--log-level', 'info']);
    const s = await run.status();
    expect(s!.ports.every((p) => p.ring?.large !== undefined)).toBe(true);

    const out = join(l.runDir, 'download-split.bin');
    const download = runInAsync(l.client.netns, 'wget', paced(out, `http://${l.serviceIpv4}/${FILE}`, '4m', 60), 70_000);
    await delay(1200);
    const mid = await run.status();
    await killReplica(l, l.primary, 'abrupt');
    await download;
    expect(sha256(readFileSync(out))).toBe(sha256(content));

    const after = await run.status();
    expect(after?.failover.count).toBe(1);
    expect(after?.failover.last?.flowsCarried).toBeGreaterThanOrEqual(1);
    expect(after?.replicas?.find((r) => r.port === l.backup.hostIf)?.role).toBe('primary');
    // The download's segments did come as super-frames: the primary's port had frames in its large ring before it died.
    const primaryBefore = mid!.ports.find((p) => p.name === l.primary.hostIf);
    expect(primaryBefore?.rxLargeFrames).toBeGreaterThan(0);
    console.log(`split rings failover: promoted ${after?.failover.last?.detectionToPromotionMs.toFixed(1)} ms after detection, ${after?.failover.last?.flowsCarried} flow(s) carried, ring drops ${after!.ports.reduce((n, p) => n + p.rxDrops, 0)}`);
  });
});
