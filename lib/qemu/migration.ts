/** Steps of a QEMU migration that more than one caller needs. */
import { QmpClient, QmpCommandError } from './qmp';

/**
 * Starts a VM that has received a migration: QEMU refuses `cont` until the
 * incoming side has finished loading ("Migration is not finalized yet"), so
 * it is retried until then.
 */
export async function startLoadedVm(qmp: QmpClient, timeoutMs = 30_000): Promise<void> {
  const started = Date.now();
  for (;;) {
    try {
      await qmp.execute('cont');
      return;
    } catch (e) {
      if (!(e instanceof QmpCommandError) || !/not finalized/i.test(e.desc) || Date.now() - started > timeoutMs) throw e;
      await new Promise((r) => setTimeout(r, 2));
    }
  }
}

