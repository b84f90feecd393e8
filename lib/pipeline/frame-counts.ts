/**
 * Frame counters shared by the ingress and egress stages: malformed input by
 * reason and origin, and policy actions by class. Both are bounded: a reason
 * or class set is small and known; ethertypes beyond `MAX_POLICY_CLASSES`
 * distinct ones fold into one "ethertype-other" class, so a VM that sends
 * random ethertypes cannot grow the metrics without bound.
 */
import { MalformedReason } from '../packet/constants';

export type Origin = 'client' | 'primary' | 'backup';
export type Counts = Record<Origin, number>;
export const zeroCounts = (): Counts => ({ client: 0, primary: 0, backup: 0 });
export const MAX_POLICY_CLASSES = 32;

export class FrameCounts {
  readonly malformedByReason: Record<string, Counts> = {};
  /** Policy actions taken, by "class/action", e.g. "arp/forward-primary". */
  readonly policyActions: Record<string, number> = {};
  private classes = 0;

  constructor(private readonly log: (level: 'info' | 'warn', event: string, fields: Record<string, unknown>) => void) {}

  malformed(reason: MalformedReason, origin: Origin): void {
    const c = (this.malformedByReason[reason] ??= zeroCounts());
    if (c[origin]++ === 0) this.log('warn', 'malformed-frame', { reason, from: origin, note: 'first of its kind; further ones are counted' });
  }

  policy(cls: string, action: string): void {
    let k = `${cls}/${action}`;
    if (this.policyActions[k] === undefined) {
      if (this.classes >= MAX_POLICY_CLASSES && cls.startsWith('ethertype-')) {
        k = `ethertype-other/${action}`;
      } else {
        this.classes++;
      }
    }
    this.policyActions[k] = (this.policyActions[k] ?? 0) + 1;
  }
}
