/**
 * The lab bench's table: one row per metric, one column per mode, each
 * shadowvm column followed by its ratio to the kernel bridge, then the
 * issue's target and whether each shadowvm mode meets it.
 *
 * In:  per-mode figures (NaN when a measurement failed or does not apply).
 * Out: fixed-width text lines.
 */

export interface Row {
  metric: string;
  /** Value per mode name; NaN: failed or not applicable. */
  values: Record<string, number>;
  digits: number;
  /** Show shadow/kernel ratios in this row. */
  ratio: boolean;
  target?: { text: string; met: (value: number, kernel: number) => boolean };
}

export function fmt(v: number, digits: number): string {
  return Number.isFinite(v) ? v.toFixed(digits) : '—';
}

export function ratioOf(v: number, kernel: number): number {
  return Number.isFinite(v) && Number.isFinite(kernel) && kernel !== 0 ? v / kernel : NaN;
}

export function formatTable(rows: readonly Row[], kernel: string, shadows: readonly string[], labels: Record<string, string>): string[] {
  const header = ['metric', labels[kernel] ?? kernel];
  for (const s of shadows) header.push(labels[s] ?? s, '× kernel');
  header.push('target');
  for (const s of shadows) header.push(`${labels[s] ?? s}?`);
  const body = rows.map((r) => {
    const k = r.values[kernel] ?? NaN;
    const cells = [r.metric, fmt(k, r.digits)];
    for (const s of shadows) {
      const v = r.values[s] ?? NaN;
      cells.push(fmt(v, r.digits), r.ratio ? (Number.isFinite(ratioOf(v, k)) ? `${ratioOf(v, k).toFixed(2)}×` : '—') : '');
    }
    cells.push(r.target?.text ?? '');
    for (const s of shadows) {
      const v = r.values[s] ?? NaN;
      cells.push(!r.target ? '' : !Number.isFinite(v) || (r.ratio && !Number.isFinite(k)) ? 'n/a' : r.target.met(v, k) ? 'met' : 'NOT met');
    }
    return cells;
  });
  const all = [header, ...body];
  const widths = header.map((_, i) => Math.max(...all.map((c) => c[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ').trimEnd();
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...body.map(line)];
}
