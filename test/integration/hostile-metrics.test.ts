/**
 * Issue 7, "random ethertypes from a VM" (root, live netns lab): the bridge's
 * /metrics, after real downloads, thousands of frames with random ethertypes
 * from the VM side and malformed frames on all three ports, is text that
 * `promtool check metrics` accepts without a complaint, and its number of
 * series stays bounded however many ethertypes a VM invents.
 */
import { existsSync } from 'node:fs';
import { BridgedLab, startBridgedLab } from '../../lib/lab/bridged';
import { LAB_FILES } from '../../lib/lab/content';
import { runInAsync } from '../../lib/lab/exec';
import { MAX_POLICY_CLASSES } from '../../lib/pipeline/frame-counts';
import { INJECTOR, fetchText, injectIn, promtoolCheck } from '../support/metrics-helpers';
import { delay, recordingLog, requireRoot, stopLabAfterAll } from '../support/lab-helpers';

const PREFIX = 'hs';
const METRICS_PORT = 29400 + (process.pid % 500);
jest.setTimeout(90_000);

/** Sample lines (not comments) of an exposition text, by metric family. */
function seriesByFamily(text: string): Map<string, number> {
  const families = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const name = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line)![0];
    families.set(name, (families.get(name) ?? 0) + 1);
  }
  return families;
}

const total = (m: Map<string, number>): number => [...m.values()].reduce((a, b) => a + b, 0);

describe('/metrics under hostile frames (live lab)', () => {
  let l: BridgedLab | undefined;
  const recorded = recordingLog();
  const bridged = (): BridgedLab => {
    if (!l) throw new Error('the bridged lab did not start (see beforeAll)');
    return l;
  };
  /** A scrape that reflects everything sent so far (the server renders at most once a second). */
  async function scrape(): Promise<string> {
    await delay(1100);
    const res = await fetchText(`http://127.0.0.1:${METRICS_PORT}/metrics`);
    expect(res.status).toBe(200);
    return res.body;
  }

  beforeAll(async () => {
    requireRoot('hostile-metrics.test.ts');
    if (!existsSync(INJECTOR)) throw new Error(`${INJECTOR} is missing: build first (npx tsc -p tsconfig.json)`);
    l = await startBridgedLab({ prefix: PREFIX, log: recorded.log, metrics: { host: '127.0.0.1', port: METRICS_PORT } });
  }, 40_000);

  stopLabAfterAll(PREFIX, () => l);

  let afterFirstBatch = new Map<string, number>();

  test('after downloads, 5,000 random ethertypes and malformed frames on every port, promtool accepts the text with no complaint', async () => {
    const { lab } = bridged();
    for (let i = 0; i < 3; i++) {
      await runInAsync(lab.client.netns, 'curl', ['-sS', '--fail', '-o', '/dev/null', `http://${lab.serviceIpv4}/${LAB_FILES.blob}`], 20_000);
      await runInAsync(lab.client.netns, 'curl', ['-sS', '--fail', '-g', '-o', '/dev/null', `http://[${lab.serviceIpv6}]/${LAB_FILES.hello}`], 20_000);
    }
    const before = seriesByFamily(await scrape());

    const ethertypes = await injectIn(lab.primary.netns, { kind: 'ethertypes', count: 5000, seed: 7, perMs: 20 });
    expect(ethertypes.sent).toBe(5000);
    for (const [i, node] of [lab.client, lab.primary, lab.backup].entries()) {
      expect((await injectIn(node.netns, { kind: 'malformed', count: 600, seed: 11 + i, perMs: 20 })).sent).toBe(600);
    }
    const text = await scrape();
    afterFirstBatch = seriesByFamily(text);

    // The frames arrived and were counted: by class (bounded) and by malformed reason and side.
    const snap = bridged().bridge.snapshot();
    const ethertypeActions = Object.entries(snap.policyActions).filter(([k]) => k.startsWith('ethertype-'));
    expect(ethertypeActions.reduce((a, [, n]) => a + n, 0)).toBeGreaterThanOrEqual(4900);
    expect(ethertypeActions.length).toBeLessThanOrEqual(MAX_POLICY_CLASSES + 1);
    for (const side of ['client', 'primary', 'backup'] as const) {
      expect(Object.values(snap.malformed).reduce((a, bySide) => a + bySide[side], 0)).toBeGreaterThan(0);
    }

    // 5,000 ethertypes added at most the bounded classes plus "other", and the malformed reasons by side.
    const policySeries = afterFirstBatch.get('shadowvm_policy_actions_total') ?? 0;
    expect(policySeries - (before.get('shadowvm_policy_actions_total') ?? 0)).toBeLessThanOrEqual(MAX_POLICY_CLASSES + 1);
    expect(total(afterFirstBatch) - total(before)).toBeLessThan(MAX_POLICY_CLASSES + 1 + 3 * 16);

    const check = await promtoolCheck(text);
    expect({ code: check.code, output: check.output.trim() }).toEqual({ code: 0, output: '' });
  });

  test('5,000 more random ethertypes from the other VM add no series at all', async () => {
    const { lab } = bridged();
    expect(afterFirstBatch.size).toBeGreaterThan(0);
    const sent = await injectIn(lab.backup.netns, { kind: 'ethertypes', count: 5000, seed: 8, perMs: 20 });
    expect(sent.sent).toBe(5000);
    const text = await scrape();
    const after = seriesByFamily(text);
    expect(total(after)).toBe(total(afterFirstBatch));
    expect(after).toEqual(afterFirstBatch);
    expect((await promtoolCheck(text)).code).toBe(0);
  });

  test('the bridge stayed protected: no checkpoint failed and the downloads needed none for these frames', () => {
    const snap = bridged().bridge.snapshot();
    expect(snap.state).toBe('COMPARING');
    expect(snap.checkpoints.failed).toBe(0);
    expect(recorded.events.filter((e) => e.level === 'error')).toEqual([]);
  });
});
