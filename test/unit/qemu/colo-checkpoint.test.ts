/**
 * coloCheckpoint (lib/qemu/colo.ts) when the primary dies while the
 * checkpoint's trigger is still in flight: the call rejects, and no promise
 * is left rejected without a handler (Node ends the process on one: the
 * agent's, or the bridge's when it runs the lab's agent).
 */
import { EventEmitter } from 'node:events';
import { coloCheckpoint, ColoError } from '../../../lib/qemu/colo';
import { QmpClient } from '../../../lib/qemu/qmp';

/** A QMP client whose `execute` waits until the test closes it, then rejects (as a dead QEMU's does). */
function dyingQmp(): { qmp: QmpClient; close: () => void } {
  const emitter = new EventEmitter();
  const pending: ((e: Error) => void)[] = [];
  const qmp = Object.assign(emitter, {
    closed: false,
    execute: (cmd: string) => {
      if (cmd === 'query-migrate') return Promise.resolve({ status: 'colo' });
      return new Promise((_resolve, reject) => pending.push(reject));
    },
  }) as unknown as QmpClient;
  return { qmp, close: () => { emitter.emit('close', 'gone'); for (const r of pending.splice(0)) r(new Error('QMP closed')); } };
}

describe('coloCheckpoint', () => {
  it('rejects, leaving no unhandled rejection behind, when the primary dies while the trigger is in flight', async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    try {
      const primary = dyingQmp();
      const secondary = dyingQmp();
      const call = coloCheckpoint(primary.qmp, secondary.qmp, { timeoutMs: 5000, whenPrimaryStopped: async () => {} });
      const outcome = call.then(() => 'resolved', (e: Error) => e);
      await new Promise((r) => setTimeout(r, 20));
      primary.close();
      const e = await outcome;
      expect(e).toBeInstanceOf(Error);
      // Unhandled rejections are reported after the microtask queue drains: give it a few turns.
      await new Promise((r) => setTimeout(r, 50));
      expect(unhandled.filter((r) => r instanceof ColoError)).toEqual([]);
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
  });
});
