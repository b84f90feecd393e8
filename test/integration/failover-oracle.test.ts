/**
 * The failover oracle (root): a download across a failover at a random
 * moment must give the client exactly the bytes of a download with no
 * failover. 50 random moments per run, alternating A→B→A→B with
 * re-protection in between; the seed is printed (set SHADOWVM_SEED to
 * replay one). Then deaths while the link to the client loses frames
 * (the survivor must fill the holes), what must not fail over (a 5 ms link
 * flap), what must degrade instead (the backup's death), and a death during
 * a checkpoint.
 */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { BridgedLab, startBridgedLab, waitFor } from '../../lib/lab/bridged';
import { serveOnBoth } from '../../lib/lab/servers';
import { fixedSeedBytes, LAB_FILES } from '../../lib/lab/content';
import { runInAsync } from '../../lib/lab/exec';
import { DeathMode } from '../../lib/lab/faults';
import { LinkWatcher } from '../../lib/io/link-watch';
import { Capture, clientBytesReceived, delay, IN_FLIGHT_RECEIVE_BUFFER, paced, requireRoot, sha256, startCapture, stopLabAfterAll } from '../support/lab-helpers';
import { runAsync } from '../../lib/lab/exec';
import { describeDetections, oracleMoments } from '../support/oracle';
import { seededRandom } from '../support/random';

const PREFIX = 'svmor';
const MOMENTS = 50;
const OBJECT = 'oracle.bin';
const OBJECT_BYTES = 4 << 20;
/**
 * The link-outage case's object, fetched at full speed: it needs bytes released and not yet acknowledged when the
 * primary dies, which a paced download rarely has (its window is nearly shut); big enough to be in flight still.
 */
const FAST_OBJECT = 'oracle-fast.bin';
const FAST_OBJECT_BYTES = 64 << 20;
jest.setTimeout(300_000);


describe('failover oracle and edge cases in the netns lab', () => {
  let l: BridgedLab | undefined;
  let links: LinkWatcher | undefined;
  /** The bridge's log events this file looks for (the lab's whole log would be long). */
  const log = { events: [] as { event: string; fields: Record<string, unknown> }[] };
  /** The bridge's last log lines of any kind, for the message of a download that fails. */
  const recent: string[] = [];
  const watched = new Set(['link-flap', 'backup-lost', 'failover', 'carrier-lost', 'failover-deferred', 'checkpoint-done']);
  /**
   * Headers of every HTTP frame, kept for a failure's message: what the client
   * sent and received (its namespace), and what each replica sent (the host
   * end of its veth; the bridge's own sends bypass the taps there).
   */
  const captures: { what: string; capture: Capture }[] = [];

  beforeAll(async () => {
    requireRoot('failover-oracle.test.ts');
    links = LinkWatcher.open();
    // Checkpoints that take 200 ms leave room to kill the primary in the middle of one.
    l = await startBridgedLab({
      clientReceiveBufferMax: IN_FLIGHT_RECEIVE_BUFFER,
      prefix: PREFIX, links, checkpointMs: 200, clientLinkFaults: true,
      log: (level, event, fields) => {
        if (watched.has(event)) log.events.push({ event, fields: fields ?? {} });
        recent.push(`${new Date().toISOString()} ${level} ${event} ${JSON.stringify(fields ?? {})}`.slice(0, 600));
        if (recent.length > 40) recent.shift();
      },
    });
    const object = fixedSeedBytes(OBJECT_BYTES, 99);
    serveOnBoth(l.servers, OBJECT, object);
    serveOnBoth(l.servers, FAST_OBJECT, fixedSeedBytes(FAST_OBJECT_BYTES, 98));
    const lab = l.lab;
    const capture = (what: string, iface: string, netns?: string, direction?: 'inout') =>
      startCapture({ iface, netns, direction, file: join(lab.runDir, `${what.replace(/ /g, '-')}.pcap`), snapLength: 96, filter: 'tcp port 80' })
        .then((c) => captures.push({ what, capture: c }));
    await capture('client', lab.client.nsIf, lab.client.netns, 'inout');
    await capture(`sent by ${lab.primary.hostIf}`, lab.primary.hostIf);
    await capture(`sent by ${lab.backup.hostIf}`, lab.backup.hostIf);
  }, 60_000);

  afterAll(async () => {
    for (const c of captures) await c.capture.stop().catch(() => undefined);
  });
  stopLabAfterAll(PREFIX, () => l);

  /** The last frames of one client port in each capture, as tcpdump prints them. */
  async function traces(port: number, lines = 30): Promise<string> {
    const out: string[] = [];
    for (const c of captures) {
      const text = await runAsync('tcpdump', ['-r', c.capture.file, '-nn', '-tt', `tcp port ${port}`], 30_000).catch((e: Error) => e.message);
      const all = text.trimEnd().split('\n');
      out.push(`${c.what} (${all.length} frames of port ${port}, the last ${Math.min(lines, all.length)}):`, ...all.slice(-lines));
    }
    return out.join('\n');
  }
  afterAll(() => links?.close());

  async function download(name: string, rate = '8m'): Promise<Buffer> {
    const lab = l!.lab;
    const out = join(lab.runDir, name);
    rmSync(out, { force: true });
    await runInAsync(lab.client.netns, 'wget', paced(out, `http://${lab.serviceIpv4}/${OBJECT}`, rate, 30), 40_000);
    return readFileSync(out);
  }

  async function protectedAgain(): Promise<void> {
    const p = l!.bridge.pipeline;
    if (!(await waitFor(() => p.state === 'COMPARING' && p.replicas.standby !== null, 20_000))) {
      throw new Error(`not protected again within 20 s (state ${p.state}, roles ${p.replicas.describe()})`);
    }
  }

  test(`the client receives exactly the bytes of a run with no failover, at ${MOMENTS} random moments`, async () => {
    const seed = Number(process.env.SHADOWVM_SEED ?? Math.floor(Math.random() * 2 ** 31));
    console.log(`failover oracle seed ${seed} (replay with SHADOWVM_SEED=${seed})`);
    const reference = await download('reference');
    expect(sha256(reference)).toBe(sha256(fixedSeedBytes(OBJECT_BYTES, 99)));
    const lab = l!;
    const p = lab.bridge.pipeline;
    // A download that stalls after a failover: say what the bridge saw, so that one occurrence is enough to go on.
    const explain = async (): Promise<string> => {
      const flows = await lab.bridge.listFlows(20).catch((x: Error) => x.message);
      // The download's own flow: the newest that carried more than a small answer (a silent death's nudge comes after it).
      const big = typeof flows === 'string' ? undefined : flows.filter((f) => f.matchedBytes + f.releasedBytes > 10_000).at(-1);
      const port = Number(/10\.77\.0\.1:(\d+)/.exec(big?.key ?? '')?.[1] ?? 0);
      return `held output ${JSON.stringify(lab.bridge.snapshot().heldOutput)}\nflows ${JSON.stringify(flows).slice(0, 4000)}\nlast log lines:\n${recent.join('\n')}\n` +
        (port ? await traces(port) : 'no client port to trace');
    };
    const run = await oracleMoments(lab, { moments: MOMENTS, seed, download, reference, explain });
    const roles = run.survivors;
    console.log(`oracle: ${MOMENTS} failovers (${run.midDownload} in the middle of the download), ${describeDetections(run.detectionsMs)}; survivors ${roles.slice(0, 10).join(' ')} …`);
    // Deaths in the middle of downloads, not between them (wget paces them: see paced()).
    expect(run.midDownload).toBeGreaterThanOrEqual(Math.ceil(MOMENTS * 0.75));
    expect(p.failover.failovers).toBeGreaterThanOrEqual(MOMENTS);
    // Every failover promoted the other port: A→B→A→B.
    for (let i = 1; i < roles.length; i++) expect(roles[i]).not.toBe(roles[i - 1]);
  });

  test('a primary that dies while the link to the client loses frames: the survivor fills the holes, and every download is intact', async () => {
    const lab = l!;
    const p = lab.bridge.pipeline;
    const random = seededRandom(Number(process.env.SHADOWVM_SEED ?? 7));
    const resentBefore = p.stageCounters().compare.carried_resent_unacked;
    const expected = sha256(fixedSeedBytes(FAST_OBJECT_BYTES, 98));
    let lost = 0;
    let midDownload = 0;
    for (let i = 0; i < 6; i++) {
      const before = p.failover.failovers;
      const out = join(lab.lab.runDir, `outage-${i}`);
      rmSync(out, { force: true });
      // At full speed (no pacing): many bytes released and not yet acknowledged at any moment.
      const got = runInAsync(lab.lab.client.netns, 'curl', ['-sS', '--fail', '--max-time', '30', '-o', out, `http://${lab.lab.serviceIpv4}/${FAST_OBJECT}`], 40_000).then(() => readFileSync(out));
      got.catch(() => {}); // awaited below
      await delay(100 + Math.floor(random() * 150));
      if (clientBytesReceived(lab.lab).some((b) => b > 0 && b < FAST_OBJECT_BYTES)) midDownload++;
      // Everything the bridge sends to the client for 60 ms is lost: output it released, then the survivor's backlog.
      // Abrupt and silent deaths in turn.
      lost = lab.clientLinkOutage(60);
      const mode: DeathMode = i % 2 === 0 ? 'abrupt' : 'silent';
      await lab.kill(lab.activeNode(), mode);
      if (!(await waitFor(() => p.failover.failovers > before, 3000, 2))) {
        // A silent death is seen only while the backup has something to say: nudge it (as the oracle does).
        await runInAsync(lab.lab.client.netns, 'curl', ['-sS', '--max-time', '5', '-o', '/dev/null', `http://${lab.lab.serviceIpv4}/${LAB_FILES.hello}`], 10_000).catch(() => '');
      }
      expect(await waitFor(() => p.failover.failovers > before, 5000, 2)).toBe(true);
      const bytes = await got;
      expect(sha256(bytes)).toBe(expected);
      await protectedAgain();
    }
    lost = lab.clientLinkOutage(0);
    const resent = p.stageCounters().compare.carried_resent_unacked - resentBefore;
    console.log(`client link outages during failover: ${midDownload} of 6 deaths in the middle of a download; ${lost} frames lost on the way to the client; the survivors resent ${resent} released but unacknowledged`);
    expect(midDownload).toBeGreaterThanOrEqual(4);
    expect(lost).toBeGreaterThan(0);
    expect(resent).toBeGreaterThan(0);
  });

  test('a link flap of the primary shorter than the carrier hold (5 ms asked) does not fail over', async () => {
    const lab = l!;
    const p = lab.bridge.pipeline;
    const hold = lab.bridge.pipeline.config.failover.carrierHoldMs;
    // The flap as the kernel reports it (netlink), on the bridge's side of the veth.
    const events: { carrier: boolean; monoUs: number }[] = [];
    const offs = [lab.lab.primary, lab.lab.backup].map((n) => links!.on(n.hostIf, (ev) => events.push({ carrier: ev.carrier, monoUs: ev.monoUs })));
    const seen: string[] = [];
    let shortFlaps = 0;
    try {
      // On a loaded machine `ip` may take longer than asked between down and up: each retry asks for less.
      const gapsMs = [5, 4, 3, 2, 1, 0, 0, 0];
      for (let attempt = 0; attempt < gapsMs.length && shortFlaps === 0; attempt++) {
        events.length = 0;
        const node = lab.activeNode();
        const before = p.failover.failovers;
        // One long-lived `ip -batch`: each command runs as soon as its line arrives (a fresh `ip` takes 5-10 ms to start).
        const ip = spawn('ip', ['-n', node.netns, '-batch', '-'], { stdio: ['pipe', 'ignore', 'inherit'] });
        await delay(200);
        ip.stdin.write(`link set ${node.nsIf} down\n`);
        if (gapsMs[attempt] > 0) await delay(gapsMs[attempt]);
        ip.stdin.write(`link set ${node.nsIf} up\n`);
        ip.stdin.end();
        await new Promise((r) => ip.once('exit', r));
        await delay(300);
        const down = events.find((e) => !e.carrier);
        const up = events.find((e) => e.carrier && down && e.monoUs > down.monoUs);
        const ms = down && up ? (up.monoUs - down.monoUs) / 1000 : NaN;
        const failedOver = p.failover.failovers > before;
        seen.push(`${ms.toFixed(2)} ms${failedOver ? ' (failed over)' : ''}`);
        // Shorter than the hold by a margin: this flap must not fail over.
        if (ms < hold - 1) {
          expect(failedOver).toBe(false);
          shortFlaps++;
        }
        if (failedOver) {
          // A flap longer than the hold is a death, rightly; try again on the new primary.
          await protectedAgain();
          continue;
        }
        // The link coming back flushed the namespace's neighbours: put them back as the lab had them.
        const { restoreReplicaNetwork } = await import('../../lib/lab/faults');
        await restoreReplicaNetwork(lab.lab, node);
      }
    } finally {
      for (const off of offs) off();
      console.log(`link flaps (carrier down → up, as netlink reported them): ${seen.join(', ')}; hold ${hold} ms`);
    }
    expect(shortFlaps).toBe(1);
    expect(p.replicas.standby).not.toBeNull();
    const body = await download('after-flap', '100m');
    expect(body.length).toBe(OBJECT_BYTES);
  });

  test('the backup\'s death degrades to unchecked primary output, then a new backup is built', async () => {
    const lab = l!;
    const p = lab.bridge.pipeline;
    const lost = p.failover.backupsLost;
    const got = download('backup-death');
    await delay(100);
    await lab.kill(lab.standbyNode()!, 'abrupt');
    expect(await waitFor(() => p.failover.backupsLost > lost, 3000, 2)).toBe(true);
    expect(lab.bridge.snapshot().state).not.toBe('FAILED_OVER');
    const bytes = await got;
    expect(sha256(bytes)).toBe(sha256(fixedSeedBytes(OBJECT_BYTES, 99)));
    expect(log.events.some((e) => e.event === 'backup-lost')).toBe(true);
    await protectedAgain();
  });

  test('a primary that dies during a checkpoint: the failover waits for the agent\'s answer to it, then promotes the backup, and the download is intact', async () => {
    const lab = l!;
    const p = lab.bridge.pipeline;
    const before = p.failover.failovers;
    const deferredBefore = p.failoverStage.deferred;
    const got = download('during-checkpoint');
    got.catch(() => {}); // awaited below; never an unhandled rejection if an assertion fails first
    await delay(150);
    expect(p.request('manual', undefined, (await import('../../lib/clock')).monotonicUs())).toBe(true);
    expect(p.state).toBe('CHECKPOINTING');
    const epoch = p.replicator.pending!.epoch;
    await delay(50);
    await lab.kill(lab.activeNode(), 'abrupt');
    expect(await waitFor(() => p.failover.failovers > before, 3000, 2)).toBe(true);
    // The carrier's verdict came while the lab agent (200 ms per checkpoint) was still busy: it waited for
    // the answer, applied it, and only then promoted.
    expect(p.failoverStage.deferred).toBe(deferredBefore + 1);
    const rec = p.replicator.history.find((r) => r.epoch === epoch)!;
    expect(rec.outcome).toBe('done');
    const order = log.events.map((e) => (e.event === 'checkpoint-done' ? `${e.event} ${String(e.fields.epoch)}` : e.event));
    const waited = order.lastIndexOf('failover-deferred');
    expect(waited).toBeGreaterThanOrEqual(0);
    expect(order.indexOf(`checkpoint-done ${epoch}`, waited)).toBeGreaterThan(waited);
    expect(order.indexOf('failover', waited)).toBeGreaterThan(order.indexOf(`checkpoint-done ${epoch}`, waited));
    const bytes = await got;
    expect(sha256(bytes)).toBe(sha256(fixedSeedBytes(OBJECT_BYTES, 99)));
    await protectedAgain();
    expect(existsSync(lab.lab.runDir)).toBe(true);
  });
});
