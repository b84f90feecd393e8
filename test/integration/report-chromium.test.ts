/**
 * Issue 10, "a picture of each run": the HTML report, loaded in a real
 * headless Chromium (Debian's chromium, DevTools protocol over a pipe), has
 * one mark per mismatch and per checkpoint the run had and one band per
 * failover; a click on a mismatch shows both sides' bytes; the page renders
 * to a non-empty PNG.
 *
 * Two runs: replays of recorded fixtures through `shadowvm report` (the
 * built CLI), and the netns lab demo (root), which writes its own report.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runLabDemo } from '../../lib/lab/demo';
import { fixtureFiles } from '../support/fixtures';
import { Chromium, pngSize, requireChromium } from '../support/chromium';
import { requireBuiltCli, requireRoot, SHADOWVM_BIN, stopLabAfterAll } from '../support/lab-helpers';

jest.setTimeout(120_000);

interface Marks { mismatches: number; checkpoints: number; checkpointsDone: number; failoverBands: number; degradedBands: number; releases: number }

const COUNT_MARKS = `({
  mismatches: document.querySelectorAll('svg#timeline .mark.mismatch').length,
  checkpoints: document.querySelectorAll('svg#timeline .mark.checkpoint').length,
  checkpointsDone: document.querySelectorAll('svg#timeline .mark.checkpoint.outcome-done').length,
  failoverBands: document.querySelectorAll('svg#timeline .band.failover').length,
  degradedBands: document.querySelectorAll('svg#timeline .band.degraded').length,
  releases: document.querySelectorAll('svg#timeline .mark.release').length,
})`;

/** What a JSON-quoted excerpt says, as the details panel shows it (control bytes escaped). */
function shown(excerpt: string): string {
  if (!excerpt.startsWith('"')) return excerpt; // a unit name (SYN, FIN, RST…)
  const s = JSON.parse(excerpt) as string;
  return [...s].map((c) => (c === '\n' ? '\\n' : c === '\r' ? '\\r' : c.charCodeAt(0) < 32 || c.charCodeAt(0) > 126 ? `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}` : c)).join('');
}

let dir = '';
let browser: Chromium | null = null;

beforeAll(async () => {
  requireChromium('report-chromium.test.ts');
  dir = mkdtempSync(join(tmpdir(), 'shadowvm-report-test-'));
  browser = await Chromium.launch();
}, 30_000);

afterAll(async () => {
  await browser?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('shadowvm report of a replay, in headless Chromium', () => {
  beforeAll(() => requireBuiltCli());

  type Mismatch = { primary: string; backup: string; timeUs: number };

  function replay(fixture: string): { mismatches: Mismatch[]; checkpoints: number; failovers: number; html: string } {
    const f = fixtureFiles(fixture);
    const json = spawnSync(SHADOWVM_BIN, ['replay', '--client', f.client, '--primary', f.primary, '--backup', f.backup, '--json'], { encoding: 'utf8' });
    expect(json.status).toBe(0);
    const r = JSON.parse(json.stdout) as { flows: { mismatchList: Mismatch[] }[]; checkpoints: { kind: string }[]; failovers: unknown[] };
    const html = join(dir, `${fixture}.html`);
    const out = spawnSync(SHADOWVM_BIN, ['report', '--client', f.client, '--primary', f.primary, '--backup', f.backup, '--out', html], { encoding: 'utf8' });
    expect({ status: out.status, stderr: out.stderr }).toEqual({ status: 0, stderr: '' });
    expect(out.stdout.trim()).toBe(`report written to ${html}`);
    return {
      // In time order, as the report numbers them.
      mismatches: r.flows.flatMap((fl) => fl.mismatchList).sort((a, b) => a.timeUs - b.timeUs),
      checkpoints: r.checkpoints.filter((c) => c.kind === 'checkpoint').length,
      failovers: r.failovers.length,
      html,
    };
  }

  it('marks every mismatch and checkpoint of the FTP passive-mode replay, and shows both sides of a clicked mismatch', async () => {
    const r = replay('ftp-pasv');
    expect(r.mismatches.length).toBeGreaterThanOrEqual(2);
    const page = await browser!.open(`file://${r.html}`);
    expect(await page.evaluate<Marks>(COUNT_MARKS)).toMatchObject({ mismatches: r.mismatches.length, checkpoints: r.checkpoints, checkpointsDone: r.checkpoints, failoverBands: 0 });
    expect(await page.evaluate<string>('document.getElementById("details").textContent')).toContain('Click a mismatch');
    // The first one with bytes on both sides (not a SYN option difference).
    const k = r.mismatches.findIndex((m) => m.primary.startsWith('"')) + 1;
    expect(k).toBeGreaterThan(0);
    await page.click(`svg#timeline .mark.mismatch[data-mismatch="${k}"]`);
    const details = await page.evaluate<{ shown: string | null; text: string; selected: number }>(`({
      shown: document.getElementById('details').getAttribute('data-shown'),
      text: document.getElementById('details').textContent,
      selected: document.querySelectorAll('.mismatch.selected').length,
    })`);
    expect(details.shown).toBe(String(k));
    expect(details.selected).toBe(1);
    expect(details.text).toContain(shown(r.mismatches[k - 1].primary));
    expect(details.text).toContain(shown(r.mismatches[k - 1].backup));
    expect(details.text).toContain('primary said');
  });

  it('draws the failover of the HTTP failover replay as one band, and what the promoted backup sent as unchecked releases', async () => {
    const r = replay('http-failover');
    expect(r.failovers).toBe(1);
    const page = await browser!.open(`file://${r.html}`);
    const marks = await page.evaluate<Marks>(COUNT_MARKS);
    expect(marks).toMatchObject({ failoverBands: 1, mismatches: 0 });
    expect(await page.evaluate<number>('document.querySelectorAll("svg#timeline .mark.release.unchecked").length')).toBeGreaterThan(0);
    const png = await page.screenshot();
    const file = join(dir, 'http-failover.png');
    writeFileSync(file, png);
    expect(pngSize(readFileSync(file)).width).toBe(1400);
    expect(statSync(file).size).toBeGreaterThan(10_000);
  });
});

describe('the report make demo writes, in headless Chromium (root, netns lab)', () => {
  const PREFIX = 'rpc';
  let result: { mismatches: number; checkpoints: number; failovers: number } | null = null;
  const printed: string[] = [];
  const reportPath = () => join(dir, 'demo-report.html');

  beforeAll(async () => {
    requireRoot('report-chromium.test.ts');
    result = await runLabDemo({ prefix: PREFIX, print: (l) => printed.push(l), reportPath: reportPath() });
  }, 100_000);

  // The demo tears its lab down itself; this checks nothing is left.
  stopLabAfterAll(PREFIX, () => undefined);

  it('says where the report is', () => {
    expect(printed[printed.length - 1]).toBe(`report of this run (timeline of releases, mismatches, checkpoints, failovers): ${reportPath()}`);
  });

  it('has one mark per mismatch and per checkpoint of the run, one failover band, and releases', async () => {
    const lines = readFileSync(join(dir, 'demo-report.log'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { event: string; epoch?: number });
    const logged = (event: string) => lines.filter((l) => l.event === event).length;
    const page = await browser!.open(`file://${reportPath()}`);
    const marks = await page.evaluate<Marks>(COUNT_MARKS);
    // The bridge's own counters, the log's lines and the picture agree.
    // The FTP 227 reply and the file changed on the primary: two at least. If not, say what the demo said.
    if (result!.mismatches < 2) throw new Error(`the demo had ${result!.mismatches} mismatch(es), not 2 or more; it printed:\n${printed.join('\n')}`);
    expect(result!.failovers).toBe(1);
    expect(marks.mismatches).toBe(result!.mismatches);
    expect(marks.mismatches).toBe(logged('mismatch'));
    expect(marks.checkpointsDone).toBe(result!.checkpoints);
    expect(marks.checkpointsDone).toBe(logged('checkpoint-done'));
    expect(marks.checkpoints).toBe(marks.checkpointsDone);
    expect(marks.failoverBands).toBe(1);
    expect(marks.releases).toBeGreaterThan(0);
    expect(marks.degradedBands).toBeGreaterThanOrEqual(1); // DEGRADED until the agent's first checkpoint

    await page.click('svg#timeline .mark.mismatch');
    expect(await page.evaluate<string | null>('document.getElementById("details").getAttribute("data-shown")')).toBe('1');

    const png = await page.screenshot();
    const file = join(dir, 'demo-report.png');
    writeFileSync(file, png);
    const size = pngSize(readFileSync(file));
    expect(size.width).toBe(1400);
    expect(size.height).toBeGreaterThanOrEqual(600);
    expect(statSync(file).size).toBeGreaterThan(10_000);
  });
});
