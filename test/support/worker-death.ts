/**
 * A preload that makes one data-plane thread of a real `shadowvm run` die,
 * with no hook in the product: the test starts run with
 * NODE_OPTIONS="--require <this file, built: dist/test/support/worker-death.js>",
 * and Node loads such a preload in every thread, worker threads included.
 *
 * In the data-plane thread named by SHADOWVM_TEST_DIE_WORKER (its shard
 * index; 0 when run has one worker, whose workerData has no shard), it
 * watches for the file SHADOWVM_TEST_DIE_FILE; once the file appears, it
 * throws from a timer. That is what a bug in the data plane does: an
 * exception nothing catches ends the thread (exit code 1), its ports and
 * agent connection with it. Every other thread, and every process started
 * without the file variable, is left alone.
 */
import { existsSync } from 'node:fs';
import { isMainThread, workerData } from 'node:worker_threads';

/** How often the thread looks for the file. */
const WATCH_MS = 20;

/** The message of the exception, for the test to find in the log. */
export const WORKER_DEATH_MESSAGE = 'worker-death.ts: this data-plane thread dies as the test asked';

function shardIndexOf(data: unknown): number | null {
  // Only run's data-plane threads carry ports in their workerData (dataplane/protocol.ts DataPlaneInit).
  const init = data as { ports?: unknown; shard?: { index?: number } } | null;
  if (!init || typeof init !== 'object' || !init.ports) return null;
  return init.shard?.index ?? 0;
}

const file = process.env.SHADOWVM_TEST_DIE_FILE;
if (!isMainThread && file && shardIndexOf(workerData) === Number(process.env.SHADOWVM_TEST_DIE_WORKER ?? '0')) {
  const watch = setInterval(() => {
    if (!existsSync(file)) return;
    clearInterval(watch);
    throw new Error(WORKER_DEATH_MESSAGE);
  }, WATCH_MS);
  // The thread's own handles (its ports, its parent port) keep it alive; this watch must not.
  watch.unref();
}
