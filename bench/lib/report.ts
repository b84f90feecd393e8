/**
 * The benches' tables: figures over interleaved rounds as a median with its
 * range, ratios, and fixed-width layout.
 *
 * In:  per-round figures (NaN when a measurement failed or does not apply).
 * Out: spreads (median, min, max, n) and fixed-width text lines.
 */

export function fmt(v: number, digits: number): string {
  return Number.isFinite(v) ? v.toFixed(digits) : '—';
}

export function ratioOf(v: number, base: number): number {
  return Number.isFinite(v) && Number.isFinite(base) && base !== 0 ? v / base : NaN;
}

/** A figure over rounds; failed rounds (non-finite values) are left out and not counted in n. */
export interface Spread { median: number; min: number; max: number; n: number }

export function spread(values: readonly number[]): Spread {
  const v = values.filter(Number.isFinite).sort((a, b) => a - b);
  if (!v.length) return { median: NaN, min: NaN, max: NaN, n: 0 };
  const mid = Math.floor(v.length / 2);
  return { median: v.length % 2 ? v[mid] : (v[mid - 1] + v[mid]) / 2, min: v[0], max: v[v.length - 1], n: v.length };
}

/** `median [min–max]`, or the median alone when there is one value (or all are equal). */
export function cell(s: Spread, digits: number): string {
  if (!s.n) return '—';
  return s.n === 1 || s.min === s.max ? fmt(s.median, digits) : `${fmt(s.median, digits)} [${fmt(s.min, digits)}–${fmt(s.max, digits)}]`;
}

export function ratioCell(s: Spread): string {
  if (!s.n) return '—';
  return s.n === 1 ? `${s.median.toFixed(2)}×` : `${s.median.toFixed(2)}× [${s.min.toFixed(2)}–${s.max.toFixed(2)}]`;
}

/** Rows of cells as aligned text: the first column left-aligned, the others right-aligned, a rule under the header. */
export function layout(rows: string[][]): string[] {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((c) => (c[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ').trimEnd();
  return [line(rows[0]), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.slice(1).map(line)];
}
