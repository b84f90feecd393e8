/**
 * Signals to a running bridge, which a local administrator (or a confused
 * service manager) may send at any time:
 *
 *   SIGTERM, SIGINT → stop. If the stop has not finished `deadlineMs` later,
 *                     stop waiting (one `stop-deadline` line), so that the
 *                     process exits anyway; a second one stops waiting at
 *                     once (`signal-again`).
 *   SIGHUP          → logged and ignored: there is no configuration to
 *                     reload, and logs go to stderr (nothing to reopen).
 *   SIGUSR2         → logged and ignored.
 *   SIGUSR1         → logged and ignored. It must never open Node's
 *                     inspector: `bin/shadowvm` installs the first listener
 *                     before anything else; this one only logs.
 *
 * In:  a `stop` function (the bridge's) and a log.
 * Out: `outcome`, which settles once the process may exit: `stopped`, or
 *      `failed` / `deadline` / `forced` (exit non-zero).
 */
import { LogFn } from './logger';

export type StopOutcome = 'stopped' | 'failed' | 'deadline' | 'forced';

/** `process`, or a stand-in in tests. */
export interface SignalSource {
  on(signal: NodeJS.Signals, listener: () => void): unknown;
  off(signal: NodeJS.Signals, listener: () => void): unknown;
}

/** How long a stop may take before the process exits without waiting for it. */
export const STOP_DEADLINE_MS = 5000;

export const STOP_SIGNALS: readonly NodeJS.Signals[] = ['SIGTERM', 'SIGINT'];

/** Signals that would kill the process by default and are only logged. */
export const IGNORED_SIGNALS: Readonly<Partial<Record<NodeJS.Signals, string>>> = {
  SIGHUP: 'no configuration to reload and logs go to stderr; ignored',
  SIGUSR2: 'ignored',
  SIGUSR1: 'ignored; the inspector stays closed',
};

export interface BridgeSignalsOptions {
  stop: () => Promise<void>;
  log: LogFn;
  deadlineMs?: number;
  signals?: SignalSource;
}

export class BridgeSignals {
  /** Settles once the process may exit. */
  readonly outcome: Promise<StopOutcome>;
  private settle!: (o: StopOutcome) => void;
  private stopping = false;
  private settled = false;
  private deadline: NodeJS.Timeout | null = null;
  private readonly listeners = new Map<NodeJS.Signals, () => void>();
  private readonly source: SignalSource;

  constructor(private readonly options: BridgeSignalsOptions) {
    this.source = options.signals ?? process;
    this.outcome = new Promise((resolve) => { this.settle = resolve; });
    for (const signal of STOP_SIGNALS) this.listen(signal, () => this.onStop(signal));
    for (const [signal, note] of Object.entries(IGNORED_SIGNALS) as [NodeJS.Signals, string][]) {
      this.listen(signal, () => options.log('warn', 'signal-ignored', { signal, note }));
    }
  }

  /**
   * Removes the stop listeners (a later SIGTERM then has its default
   * effect). The others stay: removing the last SIGUSR1 or SIGHUP listener
   * would restore a default action that kills the process.
   */
  dispose(): void {
    if (this.deadline) clearTimeout(this.deadline);
    for (const signal of STOP_SIGNALS) {
      const fn = this.listeners.get(signal);
      if (fn) this.source.off(signal, fn);
      this.listeners.delete(signal);
    }
  }

  private listen(signal: NodeJS.Signals, fn: () => void): void {
    this.listeners.set(signal, fn);
    this.source.on(signal, fn);
  }

  private finish(outcome: StopOutcome): void {
    if (this.settled) return;
    this.settled = true;
    if (this.deadline) clearTimeout(this.deadline);
    this.deadline = null;
    this.settle(outcome);
  }

  private onStop(signal: NodeJS.Signals): void {
    const { log } = this.options;
    if (this.settled) return;
    if (this.stopping) {
      log('warn', 'signal-again', { signal, note: 'exiting without waiting for the stop to finish' });
      this.finish('forced');
      return;
    }
    this.stopping = true;
    log('info', 'signal', { signal });
    const deadlineMs = this.options.deadlineMs ?? STOP_DEADLINE_MS;
    this.deadline = setTimeout(() => {
      log('error', 'stop-deadline', { deadlineMs, note: 'the bridge did not stop in time; exiting anyway' });
      this.finish('deadline');
    }, deadlineMs);
    let stopping: Promise<void>;
    try {
      stopping = this.options.stop();
    } catch (e) {
      stopping = Promise.reject(e);
    }
    stopping.then(
      () => this.finish('stopped'),
      (e) => {
        log('error', 'stop-failed', { error: e });
        this.finish('failed');
      },
    );
  }
}
