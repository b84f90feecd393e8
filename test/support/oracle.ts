/**
 * The failover oracle's loop, shared by its test files: at each of
 * `moments` random moments a download starts, the active replica dies
 * (abrupt or silent, at random) 20-320 ms in, and the download must equal
 * the reference; then the pair must be protected again. Deaths alternate
 * A→B→A→B. Returns the detection-to-promotion times and the survivors.
 */
import type { BridgedLab } from '../../lib/lab/bridged';
import { LAB_FILES } from '../../lib/lab/content';
import { runInAsync } from '../../lib/lab/exec';
import { DeathMode } from '../../lib/lab/faults';
import type { Lab, LabNode } from '../../lib/lab/netns';
import { clientBytesReceived, delay } from './lab-helpers';
import { seededRandom } from './random';

export interface OracleRun {
  /** Detection → promotion of each failover, ms, in the order they happened. */
  detectionsMs: number[];
  survivors: string[];
  /** The failover records of promotions later than 100 ms after detection. */
  slow: string[];
  /**
   * The moments at which the download was on the wire as the replica died: the client's connection had received
   * part of the answer, not all of it (ss, just before the death). A test asserts most were, or it tests
   * failovers between downloads.
   */
  midDownload: number;
}

/** What the oracle needs of a protected lab: an in-process bridge (bridgedTarget) or `shadowvm run` seen through its control socket. */
export interface OracleTarget {
  readonly lab: Lab;
  failovers(): Promise<number>;
  /** The last failover: its detection → promotion time and the survivor's port. */
  lastFailover(): Promise<{ detectionMs: number; survivor: string; record: string } | null>;
  /** COMPARING with a backup again. */
  protectedAgain(): Promise<boolean>;
  activeNode(): Promise<LabNode>;
  kill(node: LabNode, mode: DeathMode): Promise<void>;
  /** State and roles, for a failure's message. */
  describe(): Promise<string>;
}

/** An in-process bridged lab as the oracle's target. */
export function bridgedTarget(lab: BridgedLab): OracleTarget {
  const p = lab.bridge.pipeline;
  return {
    lab: lab.lab,
    failovers: async () => p.failover.failovers,
    lastFailover: async () => {
      const rec = p.failoverHistory.at(-1);
      return rec ? { detectionMs: (rec.promotedUs - rec.detectedUs) / 1000, survivor: rec.survivor, record: JSON.stringify(rec) } : null;
    },
    protectedAgain: async () => p.state === 'COMPARING' && p.replicas.standby !== null,
    activeNode: async () => lab.activeNode(),
    kill: (node, mode) => lab.kill(node, mode),
    describe: async () => `state ${p.state}, roles ${p.replicas.describe()}, last failover ${JSON.stringify(p.failoverHistory.at(-1))}\nfailover counters ${JSON.stringify(p.failover)}`,
  };
}

/** waitFor for an asynchronous test. */
async function waitForAsync(test: () => Promise<boolean>, timeoutMs: number, everyMs: number): Promise<boolean> {
  const until = Date.now() + timeoutMs;
  while (!(await test())) {
    if (Date.now() > until) return false;
    await delay(everyMs);
  }
  return true;
}

export async function oracleMoments(
  target: BridgedLab | OracleTarget,
  o: {
    moments: number;
    seed: number;
    download: (name: string) => Promise<Buffer>;
    reference: Buffer;
    /** More to say when a download fails (the bridge's flows, captures…). */
    explain?: (moment: number) => Promise<string>;
    /** How often the target is asked (default 2 ms; a control socket wants more). */
    pollMs?: number;
  },
): Promise<OracleRun> {
  const t = 'bridge' in target ? bridgedTarget(target) : target;
  const poll = o.pollMs ?? 2;
  const random = seededRandom(o.seed);
  const run: OracleRun = { detectionsMs: [], survivors: [], slow: [], midDownload: 0 };
  for (let i = 0; i < o.moments; i++) {
    const mode: DeathMode = random() < 0.5 ? 'abrupt' : 'silent';
    const atMs = Math.floor(20 + random() * 300);
    const before = await t.failovers();
    const dead = await t.activeNode();
    const what = `moment ${i} (seed ${o.seed}, ${mode} death of ${dead.netns} after ${atMs} ms)`;
    const failedOver = async () => (await t.failovers()) > before;
    const got = o.download(`run-${i}`);
    await delay(atMs);
    if (clientBytesReceived(t.lab).some((b) => b > 0 && b < o.reference.length)) run.midDownload++;
    await t.kill(dead, mode);
    // A silent death is seen only while the backup has something to say; a download that already ended gives it nothing.
    if (!(await waitForAsync(failedOver, 3000, poll))) {
      await runInAsync(t.lab.client.netns, 'curl', ['-sS', '--max-time', '5', '-o', '/dev/null', `http://${t.lab.serviceIpv4}/${LAB_FILES.hello}`], 10_000).catch(() => '');
    }
    if (!(await waitForAsync(failedOver, 5000, poll))) throw new Error(`${what}: no failover`);
    let bytes: Buffer;
    try {
      bytes = await got;
    } catch (e) {
      throw new Error(`${what}: the download failed: ${(e as Error).message}\n${await t.describe()}\n${o.explain ? await o.explain(i) : ''}`);
    }
    const rec = (await t.lastFailover())!;
    run.detectionsMs.push(rec.detectionMs);
    run.survivors.push(rec.survivor);
    if (rec.detectionMs > 100) run.slow.push(`moment ${i} (${mode}): ${rec.record}`);
    if (!bytes.equals(o.reference)) {
      throw new Error(`${what}: ${bytes.length} bytes received, ` +
        `${bytes.length === o.reference.length ? 'same length, different content' : `expected ${o.reference.length}`}`);
    }
    if (!(await waitForAsync(() => t.protectedAgain(), 20_000, Math.max(poll, 10)))) {
      throw new Error(`${what}: not protected again within 20 s (${await t.describe()})`);
    }
  }
  return run;
}

/** "p50 X ms, max Y ms" of detection → promotion. */
export function describeDetections(ms: readonly number[]): string {
  const s = [...ms].sort((a, b) => a - b);
  return `detection→promotion p50 ${s[s.length >> 1].toFixed(1)} ms, max ${s[s.length - 1].toFixed(1)} ms`;
}
