/**
 * The last log events of a lab's bridge and agent, for the QEMU suites: a
 * test that fails prints them (what the bridge and the agent did just
 * before), so a failure seen once in CI can be read afterwards.
 * SHADOWVM_TEST_TRACE=FILE also appends every event to FILE.
 */
import { appendFileSync } from 'node:fs';
import type { LogFn } from '../../lib/control/logger';

const KEEP = 400;
const SKIP = /^(released|qemu-vm-console)$/;

export class EventRing {
  private readonly lines: string[] = [];
  private readonly file = process.env.SHADOWVM_TEST_TRACE;

  /** Wraps a lab's log function: every event is kept (the newest KEEP), then passed on. */
  wrap(inner: LogFn): LogFn {
    return (level, event, fields) => {
      if (!SKIP.test(event)) {
        const line = `${performance.now().toFixed(1)} ${level} ${event} ${JSON.stringify(fields ?? {}).slice(0, 400)}`;
        this.lines.push(line);
        if (this.lines.length > KEEP) this.lines.splice(0, this.lines.length - KEEP);
        if (this.file) appendFileSync(this.file, `${line}\n`);
      }
      inner(level, event, fields);
    };
  }

  /** A test body that, when it throws, prints the events kept first (and then throws the same error). */
  traced(body: () => Promise<void>): () => Promise<void> {
    return async () => {
      const from = this.lines.length >= KEEP ? 0 : this.lines.length;
      try {
        await body();
      } catch (e) {
        const recent = this.lines.slice(Math.max(0, from - 20));
        console.error(`the lab's last ${recent.length} events before this failure:\n${recent.join('\n')}`);
        throw e;
      }
    };
  }
}
