/**
 * The failover oracle's loop, shared by its test files: at each of
 * `moments` random moments a download starts, the active replica dies
 * (abrupt or silent, at random) 20-320 ms in, and the download must equal
 * the reference; then the pair must be protected again. Deaths alternate
 * A→B→A→B. Returns the detection-to-promotion times and the survivors.
 */
import { BridgedLab, waitFor } from '../../lib/lab/bridged';
import { LAB_FILES } from '../../lib/lab/content';
import { runInAsync } from '../../lib/lab/exec';
import { DeathMode } from '../../lib/lab/faults';
import { delay } from './lab-helpers';
import { seededRandom } from './random';

export interface OracleRun {
  /** Detection → promotion of each failover, ms, in the order they happened. */
  detectionsMs: number[];
  survivors: string[];
  /** The failover records of promotions later than 100 ms after detection. */
  slow: string[];
}

export async function oracleMoments(
  lab: BridgedLab,
  o: {
    moments: number;
    seed: number;
    download: (name: string) => Promise<Buffer>;
    reference: Buffer;
    /** More to say when a download fails (the bridge's flows, captures…). */
    explain?: (moment: number) => Promise<string>;
  },
): Promise<OracleRun> {
  const random = seededRandom(o.seed);
  const p = lab.bridge.pipeline;
  const run: OracleRun = { detectionsMs: [], survivors: [], slow: [] };
  for (let i = 0; i < o.moments; i++) {
    const mode: DeathMode = random() < 0.5 ? 'abrupt' : 'silent';
    const atMs = Math.floor(20 + random() * 300);
    const before = p.failover.failovers;
    const dead = lab.activeNode();
    const what = `moment ${i} (seed ${o.seed}, ${mode} death of ${dead.netns} after ${atMs} ms)`;
    const got = o.download(`run-${i}`);
    await delay(atMs);
    await lab.kill(dead, mode);
    // A silent death is seen only while the backup has something to say; a download that already ended gives it nothing.
    if (!(await waitFor(() => p.failover.failovers > before, 3000, 2))) {
      await runInAsync(lab.lab.client.netns, 'curl', ['-sS', '--max-time', '5', '-o', '/dev/null', `http://${lab.lab.serviceIpv4}/${LAB_FILES.hello}`], 10_000).catch(() => '');
    }
    if (!(await waitFor(() => p.failover.failovers > before, 5000, 2))) throw new Error(`${what}: no failover`);
    let bytes: Buffer;
    try {
      bytes = await got;
    } catch (e) {
      throw new Error(`${what}: the download failed: ${(e as Error).message}\n` +
        `state ${p.state}, roles ${p.replicas.describe()}, last failover ${JSON.stringify(p.failoverHistory.at(-1))}\n` +
        `failover counters ${JSON.stringify(p.failover)}\n${o.explain ? await o.explain(i) : ''}`);
    }
    const rec = p.failoverHistory.at(-1)!;
    run.detectionsMs.push((rec.promotedUs - rec.detectedUs) / 1000);
    run.survivors.push(rec.survivor);
    if (rec.promotedUs - rec.detectedUs > 100_000) run.slow.push(`moment ${i} (${mode}): ${JSON.stringify(rec)}`);
    if (!bytes.equals(o.reference)) {
      throw new Error(`${what}: ${bytes.length} bytes received, ` +
        `${bytes.length === o.reference.length ? 'same length, different content' : `expected ${o.reference.length}`}`);
    }
    if (!(await waitFor(() => p.state === 'COMPARING' && p.replicas.standby !== null, 20_000))) {
      throw new Error(`${what}: not protected again within 20 s (state ${p.state}, roles ${p.replicas.describe()})`);
    }
  }
  return run;
}

/** "p50 X ms, max Y ms" of detection → promotion. */
export function describeDetections(ms: readonly number[]): string {
  const s = [...ms].sort((a, b) => a - b);
  return `detection→promotion p50 ${s[s.length >> 1].toFixed(1)} ms, max ${s[s.length - 1].toFixed(1)} ms`;
}
