/**
 * Way 2 (COLO checkpoints) needs a QEMU that can do them, decided by lib/qemu/colo-probe.
 *
 * - Stock Debian QEMU 7.2 under TCG: the probe must come back in bounded time with
 *   colo=false (its primary deadlocks at the first checkpoint).
 * - The patched build from `make qemu-colo`: colo=true, every checkpoint finishes; with
 *   a guest kernel rewriting memory the secondary must stay healthy.
 *
 * When the patched build is absent the COLO tests are registered with `it.skip`, their
 * names carrying the reason, and a line says so: they never show as a pass.
 */
import { existsSync } from 'node:fs';
import { ColoGuest, buildColoGuest, coloGuestAvailable } from '../../bench/lib/colo-guest';
import { PROBE_CHECKPOINTS, findColoQemu, probeColo } from '../../lib/qemu/colo-probe';
import { failIfColoRequired } from '../support/colo-required';

const STOCK = '/usr/bin/qemu-system-x86_64';
const PATCHED = findColoQemu();
const NOT_BUILT = 'way 2 (COLO) did not run: patched QEMU not built (make qemu-colo)';
const NO_GUEST = 'COLO with a guest kernel did not run: no kernel .deb or static busybox';

if (!PATCHED) console.warn(NOT_BUILT);
failIfColoRequired(PATCHED, NOT_BUILT);

const itStock = existsSync(STOCK) ? it : it.skip;
const itPatched = PATCHED ? it : it.skip;
const itPatchedGuest = PATCHED && coloGuestAvailable() ? it : it.skip;

describe('COLO capability probe (way 2)', () => {
  let guest: ColoGuest | undefined;

  afterAll(() => guest?.remove());

  itStock(`stock QEMU (${STOCK}) under TCG: the probe answers in bounded time, no COLO for Debian 7.2`, async () => {
    const r = await probeColo({ qemu: STOCK, accel: 'tcg' });
    console.log(`stock QEMU: colo=${r.colo} (${r.reason}) in ${r.durationMs} ms`);
    expect(r.durationMs).toBeLessThan(25000);
    if (/Debian 1:7\.2\+dfsg/.test(r.version ?? '')) {
      expect(r.colo).toBe(false);
      expect(r.reason).toMatch(/checkpoint \d+ did not finish/); // usually the first; once seen at the second
    }
  }, 60000);

  itPatched(PATCHED ? `patched QEMU (${PATCHED}): ${PROBE_CHECKPOINTS} on-demand checkpoints of an idle SeaBIOS guest finish`
    : `SKIPPED: ${NOT_BUILT}`, async () => {
    const r = await probeColo({ qemu: PATCHED!, accel: 'tcg' });
    console.log(`patched QEMU, SeaBIOS guest: colo=${r.colo} (${r.reason}) checkpoints ${r.checkpointMs.join(', ')} ms`);
    expect(r.reason).toMatch(/checkpoints finished/);
    expect(r.colo).toBe(true);
    expect(r.checkpointMs).toHaveLength(PROBE_CHECKPOINTS);
    for (const ms of r.checkpointMs) expect(ms).toBeLessThan(4000);
  }, 60000);

  itPatchedGuest(PATCHED ? (coloGuestAvailable()
    ? 'patched QEMU with a guest kernel rewriting memory: 8 checkpoints, the secondary stays healthy'
    : `SKIPPED: ${NO_GUEST}`) : `SKIPPED: ${NOT_BUILT} (guest kernel case)`, async () => {
    guest = buildColoGuest({ dirtyMiB: 8 });
    const r = await probeColo({
      qemu: PATCHED!, accel: 'tcg', kernel: guest.kernel, initrd: guest.initrd, append: guest.append,
      readyPattern: guest.readyPattern, alivePattern: guest.alivePattern, failPattern: guest.failPattern,
      checkpoints: 8, checkpointTimeoutMs: 5000, budgetMs: 60000,
    });
    console.log(`patched QEMU, kernel guest: colo=${r.colo} (${r.reason}) checkpoints ${r.checkpointMs.join(', ')} ms`);
    expect(r.reason).toMatch(/checkpoints finished/);
    expect(r.colo).toBe(true);
    expect(r.checkpointMs).toHaveLength(8);
  }, 120000);
});
