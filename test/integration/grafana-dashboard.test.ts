/**
 * Issue 10, Grafana: every PromQL expression of the shipped dashboard
 * (deploy/grafana/shadowvm-dashboard.json) names only metrics that a live
 * bridge's /metrics exports, with label matchers that select at least one of
 * its series; and that scrape passes `promtool check metrics` (root, live
 * netns lab: a download, malformed frames, then a failover, so the families
 * that only exist once something happened exist). The per-worker families
 * exist only with more than one data-plane worker: a second scrape, of
 * `shadowvm run --workers 2` on a lab of its own, adds them, and passes
 * promtool too.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { BridgedLab, startBridgedLab, waitFor } from '../../lib/lab/bridged';
import { LAB_FILES } from '../../lib/lab/content';
import { runInAsync } from '../../lib/lab/exec';
import { REPO_ROOT, delay, requireBuiltCli, requireRoot, RunWithLabAgent, startRunWithLabAgent, stopLabAfterAll } from '../support/lab-helpers';
import { buildLab, teardownLab, waitUntilQuiet } from '../../lib/lab/netns';
import { startLabServers } from '../../lib/lab/servers';
import { INJECTOR, fetchText, injectIn, promtoolCheck } from '../support/metrics-helpers';
import { matches, selectorsOf, seriesOf, Series } from '../support/promql';

const PREFIX = 'rpd';
const WORKERS_PREFIX = 'rpw';
const METRICS_PORT = 29950 + (process.pid % 40);
const DASHBOARD = join(REPO_ROOT, 'deploy', 'grafana', 'shadowvm-dashboard.json');
/** Labels Prometheus adds at scrape time: not in the exposition text. */
const TARGET_LABELS = new Set(['instance', 'job']);
jest.setTimeout(90_000);

interface Target { refId: string; expr: string; datasource?: { uid?: string } }
interface Panel { id: number; type: string; title: string; gridPos?: { x: number; y: number; w: number; h: number }; targets?: Target[]; panels?: Panel[] }
interface Dashboard {
  uid: string;
  panels: Panel[];
  templating: { list: { name: string; type: string; query?: string | { query: string } }[] };
  annotations: { list: { expr?: string }[] };
}

const dashboard = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as Dashboard;
const allPanels = (ps: Panel[]): Panel[] => ps.flatMap((p) => [p, ...allPanels(p.panels ?? [])]);
const panels = allPanels(dashboard.panels);

/** Every PromQL expression in the dashboard, with where it is: panel targets, annotations, template variables. */
function expressions(): { where: string; expr: string }[] {
  const out: { where: string; expr: string }[] = [];
  for (const p of panels) for (const t of p.targets ?? []) out.push({ where: `panel "${p.title}" ${t.refId}`, expr: t.expr });
  for (const a of dashboard.annotations.list) if (a.expr) out.push({ where: 'annotation', expr: a.expr });
  for (const v of dashboard.templating.list) {
    if (v.type !== 'query') continue;
    const q = typeof v.query === 'string' ? v.query : v.query?.query ?? '';
    const m = /^label_values\((.*),\s*[a-zA-Z_]+\)$/.exec(q);
    if (!m) throw new Error(`variable ${v.name}: cannot read its query ${JSON.stringify(q)}`);
    out.push({ where: `variable ${v.name}`, expr: m[1] });
  }
  return out;
}

describe('the Grafana dashboard', () => {
  it('has unique panel ids, a place on the grid for every panel, and a query on every non-row panel', () => {
    expect(new Set(panels.map((p) => p.id)).size).toBe(panels.length);
    for (const p of panels) {
      expect(p.gridPos).toBeDefined();
      if (p.type === 'row') continue;
      expect((p.targets ?? []).length).toBeGreaterThan(0);
      for (const t of p.targets!) expect(t.datasource?.uid).toBe('${datasource}');
    }
  });

  it('shows what an operator asks first: state, releases, matches, mismatches, checkpoints by reason and duration, held bytes, failovers, roles, drops, stray segments', () => {
    const used = new Set(expressions().flatMap((e) => selectorsOf(e.expr).map((s) => s.metric)));
    for (const m of [
      'shadowvm_replication_state', 'shadowvm_released_bytes_total', 'shadowvm_matched_bytes_total', 'shadowvm_mismatches_total',
      'shadowvm_checkpoints_requested_total', 'shadowvm_checkpoint_duration_seconds_bucket', 'shadowvm_held_output_bytes',
      'shadowvm_failovers_total', 'shadowvm_replica_role', 'shadowvm_port_rx_drops_total', 'shadowvm_stage_events_total',
    ]) expect([...used]).toContain(m);
  });
});

describe('the Grafana dashboard against a live bridge\'s /metrics', () => {
  let l: BridgedLab | undefined;
  let scrape = '';
  let workersScrape = '';
  let series: Series[] = [];

  beforeAll(async () => {
    requireRoot('grafana-dashboard.test.ts');
    if (!existsSync(INJECTOR)) throw new Error(`${INJECTOR} is missing: build first (npx tsc -p tsconfig.json)`);
    l = await startBridgedLab({ prefix: PREFIX, metrics: { host: '127.0.0.1', port: METRICS_PORT } });
    const { lab, bridge } = l;
    await runInAsync(lab.client.netns, 'curl', ['-sS', '--fail', '-o', '/dev/null', `http://${lab.serviceIpv4}/${LAB_FILES.blob}`], 20_000);
    // Families with a sample per reason exist once something happened: malformed frames.
    expect((await injectIn(lab.client.netns, { kind: 'malformed', count: 50, seed: 3 })).sent).toBe(50);
    await l.kill(l.activeNode(), 'abrupt');
    if (!(await waitFor(() => bridge.pipeline.failover.failovers > 0, 5000))) throw new Error(`no failover (state ${bridge.pipeline.state})`);
    // The server renders at most once a second: this scrape sees the failover.
    await delay(1100);
    const res = await fetchText(`http://127.0.0.1:${METRICS_PORT}/metrics`);
    expect(res.status).toBe(200);
    scrape = res.body;
    workersScrape = await scrapeWorkers();
    series = [...seriesOf(scrape), ...seriesOf(workersScrape)];
  }, 90_000);

  /** /metrics of `run --workers 2` on a lab of its own, after a download. */
  async function scrapeWorkers(): Promise<string> {
    requireBuiltCli();
    const lab = buildLab({ prefix: WORKERS_PREFIX });
    let run: RunWithLabAgent | undefined;
    try {
      await startLabServers(lab);
      await waitUntilQuiet(lab);
      run = await startRunWithLabAgent(lab, WORKERS_PREFIX, ['--workers', '2', '--metrics', `127.0.0.1:${METRICS_PORT + 40}`, '--log-level', 'info']);
      await runInAsync(lab.client.netns, 'curl', ['-sS', '--fail', '-o', '/dev/null', `http://${lab.serviceIpv4}/${LAB_FILES.blob}`], 20_000);
      await delay(1100);
      const res = await fetchText(`http://127.0.0.1:${METRICS_PORT + 40}/metrics`);
      expect(res.status).toBe(200);
      return res.body;
    } finally {
      await run?.stop();
      teardownLab(lab);
    }
  }

  stopLabAfterAll(PREFIX, () => l);

  it('gets a scrape that promtool check metrics accepts without a complaint', async () => {
    const r = await promtoolCheck(scrape);
    expect({ code: r.code, output: r.output.trim() }).toEqual({ code: 0, output: '' });
  });

  it('gets the same from a bridge of two data-plane workers, with its per-worker series', async () => {
    const r = await promtoolCheck(workersScrape);
    expect({ code: r.code, output: r.output.trim() }).toEqual({ code: 0, output: '' });
    const flows = seriesOf(workersScrape).filter((x) => x.name === 'shadowvm_worker_flows');
    expect(flows.map((x) => x.labels.worker).sort()).toEqual(['0', '1']);
  });

  it('names only metrics the bridge exports, each selector matching at least one series', () => {
    const exported = new Set(series.map((s) => s.name));
    const problems: string[] = [];
    const exprs = expressions();
    expect(exprs.length).toBeGreaterThan(20);
    for (const { where, expr } of exprs) {
      const selectors = selectorsOf(expr);
      if (selectors.length === 0) problems.push(`${where}: no metric in ${expr}`);
      for (const sel of selectors) {
        if (!exported.has(sel.metric)) {
          problems.push(`${where}: ${sel.metric || '(no name)'} is not exported`);
          continue;
        }
        const own = sel.matchers.filter((m) => !TARGET_LABELS.has(m.label));
        if (!series.some((s) => s.name === sel.metric && own.every((m) => matches(s, m)))) {
          problems.push(`${where}: no series of ${sel.metric} matches ${JSON.stringify(own)}`);
        }
      }
    }
    expect(problems).toEqual([]);
  });

  it('has the stray client segment counters the panel selects, one per reason', () => {
    const stray = series.filter((s) => s.name === 'shadowvm_stage_events_total' && s.labels.stage === 'ingress' && s.labels.counter.startsWith('stray_'));
    expect(stray.length).toBeGreaterThanOrEqual(3);
  });
});
