/**
 * COLO checkpoints on demand with the patched QEMU (`make qemu-colo`), TCG, unix-socket
 * migration channel, 128 MiB guest: per scenario, N checkpoints triggered by
 * `migrate-set-parameters {x-checkpoint-delay}`, trigger → primary RESUME (p50 / p99 / max)
 * and the primary's STOP → RESUME pause. Scenarios: SeaBIOS idling (no kernel), the
 * bench/lib/colo-guest kernel idle, and the same guest rewriting `--dirty-mib` MiB in a loop
 * while checking it (the secondary must stay healthy: no SVM-BAD, no oops, fresh output).
 * Also probes the stock QEMU once, for the comparison.
 *
 *   node dist/bench/colo-probe.js [--qemu PATH] [--stock PATH] [--n 25] [--dirty-mib 16]
 *
 * Results: a table on stdout and bench/results/colo-probe-<timestamp>.json. A report, not a test.
 */
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ColoProbeResult, findColoQemu, probeColo } from '../lib/qemu/colo-probe';
import { buildColoGuest, coloGuestAvailable } from './lib/colo-guest';

function arg(name: string, fallback?: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

function quantile(xs: number[], q: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil(q * s.length) - 1)];
}

function f1(v: number): string {
  return Number.isFinite(v) ? v.toFixed(1) : '—';
}

async function main(): Promise<void> {
  const qemu = arg('qemu') ?? findColoQemu();
  const stock = arg('stock', '/usr/bin/qemu-system-x86_64')!;
  const n = Number(arg('n', '25'));
  const dirtyMiB = Number(arg('dirty-mib', '16'));
  if (!qemu) {
    console.log('way 2 (COLO) did not run: patched QEMU not built (make qemu-colo)');
    process.exitCode = 1;
    return;
  }
  const runs: Array<{ scenario: string; result: ColoProbeResult }> = [];
  const log = (l: string): void => console.log(`  ${l}`);

  if (existsSync(stock)) {
    console.log(`== stock ${stock}`);
    runs.push({ scenario: 'stock, SeaBIOS', result: await probeColo({ qemu: stock, log }) });
  }
  console.log(`== patched ${qemu}`);
  runs.push({ scenario: 'SeaBIOS idle', result: await probeColo({ qemu, checkpoints: n, budgetMs: 120000, log }) });
  if (coloGuestAvailable()) {
    for (const mode of ['idle', 'busy'] as const) {
      const guest = buildColoGuest({ mode, dirtyMiB });
      try {
        const scenario = mode === 'idle' ? 'kernel idle' : `kernel busy (${dirtyMiB} MiB rewritten)`;
        console.log(`== ${scenario}`);
        const result = await probeColo({
          qemu, kernel: guest.kernel, initrd: guest.initrd, append: guest.append, readyPattern: guest.readyPattern,
          alivePattern: guest.alivePattern, failPattern: guest.failPattern,
          checkpoints: n, gapMs: 500, checkpointTimeoutMs: 5000, budgetMs: 180000, log,
        });
        runs.push({ scenario, result });
      } finally {
        guest.remove();
      }
    }
  } else {
    console.log('no guest kernel (.deb) or static busybox: kernel scenarios skipped');
  }

  console.log('\nscenario                          colo  n   trigger→RESUME p50 / p99 / max ms   pause p50 / max ms');
  for (const { scenario, result: r } of runs) {
    const c = r.checkpointMs;
    const p = r.pauseMs;
    console.log(`${scenario.padEnd(34)}${String(r.colo).padEnd(6)}${String(c.length).padEnd(4)}` +
      `${[quantile(c, 0.5), quantile(c, 0.99), (c.length ? Math.max(...c) : NaN)].map(f1).join(' / ').padEnd(36)}` +
      `${[quantile(p, 0.5), (p.length ? Math.max(...p) : NaN)].map(f1).join(' / ')}`);
    if (!r.colo) console.log(`    ${r.reason}`);
  }
  const outDir = join(__dirname, '..', '..', 'bench', 'results');
  mkdirSync(outDir, { recursive: true });
  const file = join(outDir, `colo-probe-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  writeFileSync(file, JSON.stringify({ qemu, stock, n, dirtyMiB, runs }, null, 2) + '\n');
  console.log(`\n${file}`);
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
