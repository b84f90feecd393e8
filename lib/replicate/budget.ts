/**
 * CheckpointBudget: how many checkpoints the flows of one client source may
 * cause per window. A checkpoint stops the pair for every client, and any
 * client can make the replicas disagree about its own flows (garbage
 * segments, timing games); without a budget it could force checkpoints at
 * will. Beyond the budget a flow is not checkpointed: it goes on unprotected
 * (its output released unchecked, counted and logged), and the pair stays
 * protected for everyone else.
 *
 * In:  `allow(source, nowUs)` for each flow-caused checkpoint request.
 * Out: yes or no; counters (allowed, denied, sources tracked).
 */
export interface CheckpointBudgetConfig {
  /** Checkpoints one source may cause per window; 0: no budget. */
  perSource: number;
  windowMs: number;
}

export const MAX_BUDGET_SOURCES = 4096;

export class CheckpointBudget {
  allowed = 0;
  denied = 0;
  private readonly windows = new Map<string, { startUs: number; used: number }>();

  constructor(private readonly config: CheckpointBudgetConfig) {}

  allow(source: string, nowUs: number): boolean {
    if (this.config.perSource <= 0) return true;
    let w = this.windows.get(source);
    if (!w || nowUs - w.startUs >= this.config.windowMs * 1000) {
      if (!w && this.windows.size >= MAX_BUDGET_SOURCES) {
        // Bounded: the oldest source (Map keeps insertion order) makes room.
        this.windows.delete(this.windows.keys().next().value as string);
      }
      w = { startUs: nowUs, used: 0 };
      this.windows.delete(source);
      this.windows.set(source, w);
    }
    if (w.used >= this.config.perSource) {
      this.denied++;
      return false;
    }
    w.used++;
    this.allowed++;
    return true;
  }

  get sources(): number {
    return this.windows.size;
  }
}

/** The client-side address in a flow's name ("tcp 10.0.0.1:40000 > …", "icmp [fd77::1] > …", "ip proto 47 10.0.0.1 > …"). */
export function flowSource(name: string): string {
  const parts = name.split(' ');
  const token = (name.startsWith('ip proto ') ? parts[3] : parts[1]) ?? name;
  if (token.startsWith('[')) return token.slice(0, token.indexOf(']') + 1);
  const colon = token.indexOf(':');
  return colon >= 0 ? token.slice(0, colon) : token;
}
