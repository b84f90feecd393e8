/**
 * Just enough PromQL and exposition-format reading to check a dashboard
 * against a real scrape: the metric names and label matchers an expression
 * uses, and the series a scrape has. Not a PromQL parser: it knows strings,
 * `{…}` selectors, `[…]` ranges, grouping clauses and function calls.
 */

/** Words that are PromQL syntax, not metric names. */
const KEYWORDS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'bool', 'and', 'or', 'unless', 'offset', 'inf', 'nan']);

export interface LabelMatcher {
  label: string;
  op: '=' | '!=' | '=~' | '!~';
  value: string;
}

export interface Selector {
  metric: string;
  matchers: LabelMatcher[];
}

const MATCHER_RE = /([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"/g;

function parseMatchers(body: string): LabelMatcher[] {
  return [...body.matchAll(MATCHER_RE)].map((m) => ({ label: m[1], op: m[2] as LabelMatcher['op'], value: m[3].replace(/\\(.)/g, '$1') }));
}

/**
 * The vector selectors of an expression: each metric name with the label
 * matchers written right after it. Grafana's `$__rate_interval` and `$var`
 * stay as they are (inside `[…]` or label values, where they do no harm).
 */
export function selectorsOf(expr: string): Selector[] {
  const out: Selector[] = [];
  let i = 0;
  const n = expr.length;
  while (i < n) {
    const c = expr[i];
    if (c === '"' || c === "'") {
      i++;
      while (i < n && expr[i] !== c) i += expr[i] === '\\' ? 2 : 1;
      i++;
      continue;
    }
    if (c === '[') {
      i = expr.indexOf(']', i) + 1 || n;
      continue;
    }
    if (c === '{') {
      // A selector with no metric name before it: {__name__=~"…"}
      const end = closingBrace(expr, i);
      out.push({ metric: '', matchers: parseMatchers(expr.slice(i + 1, end)) });
      i = end + 1;
      continue;
    }
    const word = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(expr.slice(i));
    if (!word || (i > 0 && /[0-9.$]/.test(expr[i - 1]))) {
      i++;
      continue;
    }
    const name = word[0];
    i += name.length;
    let j = i;
    while (j < n && /\s/.test(expr[j])) j++;
    if (KEYWORDS.has(name.toLowerCase())) {
      // by (…) / without (…) / on (…): label names, not metrics.
      if (expr[j] === '(' && ['by', 'without', 'on', 'ignoring', 'group_left', 'group_right'].includes(name)) i = expr.indexOf(')', j) + 1;
      continue;
    }
    if (expr[j] === '(' || /^(?:by|without)\s*\(/.test(expr.slice(j))) continue; // a function or aggregation
    if (expr[j] === '{') {
      const end = closingBrace(expr, j);
      out.push({ metric: name, matchers: parseMatchers(expr.slice(j + 1, end)) });
      i = end + 1;
      continue;
    }
    out.push({ metric: name, matchers: [] });
  }
  return out;
}

function closingBrace(expr: string, open: number): number {
  let i = open + 1;
  while (i < expr.length && expr[i] !== '}') {
    if (expr[i] === '"') {
      i++;
      while (i < expr.length && expr[i] !== '"') i += expr[i] === '\\' ? 2 : 1;
    }
    i++;
  }
  if (i >= expr.length) throw new Error(`unclosed { in ${JSON.stringify(expr)}`);
  return i;
}

export interface Series {
  name: string;
  labels: Record<string, string>;
}

/** Every sample line of an exposition text as a series (name and labels). */
export function seriesOf(text: string): Series[] {
  const out: Series[] = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s/.exec(line);
    if (!m) throw new Error(`not a sample line: ${JSON.stringify(line)}`);
    const labels: Record<string, string> = {};
    for (const x of parseMatchers(m[2] ?? '')) labels[x.label] = x.value;
    out.push({ name: m[1], labels });
  }
  return out;
}

/** Whether a series satisfies a matcher; `value` is taken literally after Grafana variables are substituted. */
export function matches(series: Series, m: LabelMatcher): boolean {
  const v = series.labels[m.label] ?? '';
  switch (m.op) {
    case '=': return v === m.value;
    case '!=': return v !== m.value;
    case '=~': return new RegExp(`^(?:${m.value})$`).test(v);
    case '!~': return !new RegExp(`^(?:${m.value})$`).test(v);
  }
}
