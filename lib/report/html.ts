/**
 * The report as one self-contained HTML file: a summary, the SVG timeline
 * (see layout.ts), a details panel that shows both sides of a clicked
 * mismatch, and tables of checkpoints and failovers. No external assets:
 * styles, data and the few lines of script are inline.
 *
 * In:  a RunLog, its Timeline, a title.
 * Out: the HTML text.
 */
import { formatOffset, Timeline } from './layout';
import { RunLog } from './run-log';

export function escapeHtml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&#39;');
}

/** JSON that is safe inside a <script> element. */
function scriptJson(v: unknown): string {
  return JSON.stringify(v).replace(/</g, '\\u003c').replace(/>/g, '\\u003e').replace(/&/g, '\\u0026').replace(/\u2028/g, '\\u2028').replace(/\u2029/g, '\\u2029');
}

const n = (v: number) => (Math.round(v * 10) / 10).toString();

function formatBytes(b: number): string {
  if (b < 1024) return `${b} B`;
  if (b < 1 << 20) return `${(b / 1024).toFixed(1)} KiB`;
  if (b < 1 << 30) return `${(b / 1048576).toFixed(1)} MiB`;
  return `${(b / 1073741824).toFixed(2)} GiB`;
}

const STATE_COLOURS: Record<string, string> = { COMPARING: '#3a9d5d', CHECKPOINTING: '#4a78c2', DEGRADED: '#e39b2d', FAILED_OVER: '#c8453b' };

const STYLE = `
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:16px 24px;color:#1d232b;background:#fff}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:20px 0 6px}
.summary{display:flex;flex-wrap:wrap;gap:8px 20px;margin:8px 0 12px}.summary b{font-variant-numeric:tabular-nums}
.warn{background:#fff4e0;border:1px solid #e39b2d;padding:6px 10px;margin:6px 0}
.legend{display:flex;gap:14px;flex-wrap:wrap;font-size:12px;margin:4px 0}.legend i{display:inline-block;width:12px;height:12px;vertical-align:-2px;margin-right:4px}
svg{display:block;border:1px solid #d7dce2;background:#fbfcfd}
svg text{font:11px system-ui,sans-serif;fill:#39424e}
.lane-bg{fill:#f1f4f7}.axis{stroke:#c3cad3;stroke-width:1}
.release{fill:#3a9d5d}.release.unchecked{fill:#8a63c4}.checkpoint{fill:#4a78c2}.checkpoint.outcome-failed{fill:#c8453b}.checkpoint.outcome-pending{fill:#9aa6b4}
.band.degraded{fill:#e39b2d;fill-opacity:.18;stroke:#e39b2d;stroke-opacity:.6}
.band.failover{fill:#c8453b;fill-opacity:.15;stroke:#c8453b;stroke-width:1.5}
.mismatch{fill:#d0302f;stroke:#fff;stroke-width:1.5;cursor:pointer}.mismatch:hover,.mismatch.selected{stroke:#111;stroke-width:2.5}
#details{border:1px solid #d7dce2;padding:8px 12px;margin-top:10px;min-height:60px;background:#fcfcfc}
#details pre{margin:4px 0 8px;padding:6px;background:#f3f5f8;overflow-x:auto;white-space:pre-wrap;word-break:break-all}
#details .diff{background:#ffd54d;outline:1px solid #c79200}
table{border-collapse:collapse;font-size:13px}td,th{border-bottom:1px solid #e3e7ec;padding:3px 10px 3px 0;text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums}a.mm{color:#b1221f;cursor:pointer;text-decoration:underline}
`;

/** Decodes the excerpts in the page: JSON-quoted bytes become text with escapes and a hex dump; the first differing byte is marked. */
const SCRIPT = `
(function(){
  var data = JSON.parse(document.getElementById('report-data').textContent);
  var panel = document.getElementById('details');
  function el(tag, cls, text){ var e = document.createElement(tag); if (cls) e.className = cls; if (text !== undefined) e.textContent = text; return e; }
  function decode(s){ if (s.charAt(0) === '"') { try { return { bytes: JSON.parse(s) }; } catch (e) {} } return { unit: s }; }
  function shown(c){ var k = c.charCodeAt(0); if (c === '\\n') return '\\\\n'; if (c === '\\r') return '\\\\r'; if (c === '\\t') return '\\\\t'; if (k < 32 || k > 126) return '\\\\x' + (k < 16 ? '0' : '') + k.toString(16); return c; }
  function hex(s){ var out = []; for (var i = 0; i < s.length; i++) { var k = s.charCodeAt(i); out.push((k < 16 ? '0' : '') + k.toString(16)); } return out.join(' '); }
  function side(label, text, other, at){
    var box = el('div', 'side');
    box.appendChild(el('div', 'side-label', label));
    var d = decode(text);
    var pre = el('pre', 'excerpt');
    if (d.unit !== undefined) { pre.textContent = d.unit; box.appendChild(pre); return box; }
    var o = decode(other), s = d.bytes, first = at;
    if (first < 0 && o.bytes !== undefined) { first = 0; while (first < s.length && first < o.bytes.length && s.charAt(first) === o.bytes.charAt(first)) first++; }
    for (var i = 0; i < s.length; i++) { var piece = shown(s.charAt(i)); if (i === first) pre.appendChild(el('span', 'diff', piece)); else pre.appendChild(document.createTextNode(piece)); }
    if (first >= s.length) pre.appendChild(el('span', 'diff', '\\u2205'));
    box.appendChild(pre);
    box.appendChild(el('pre', 'hex', hex(s)));
    return box;
  }
  function show(id){
    var m = null; for (var i = 0; i < data.mismatches.length; i++) if (data.mismatches[i].id === id) m = data.mismatches[i];
    if (!m) return;
    var marks = document.querySelectorAll('.mismatch');
    for (var j = 0; j < marks.length; j++) marks[j].classList.toggle('selected', Number(marks[j].getAttribute('data-mismatch')) === id);
    panel.textContent = '';
    panel.setAttribute('data-shown', String(id));
    panel.appendChild(el('h2', null, 'Mismatch ' + m.id + ' (' + m.kind + ') on ' + m.flow));
    var where = m.offset === null ? '' : m.kind.indexOf('datagram') === 0 ? 'datagram byte ' + m.offset : m.offset < 0 ? 'at the handshake' : 'stream offset ' + m.offset;
    var from = m.excerptOffset !== null && m.excerptOffset !== m.offset ? '; excerpts start at offset ' + m.excerptOffset : '';
    panel.appendChild(el('div', 'where', new Date(m.atMs).toISOString() + (where ? ' \\u2014 ' + where : '') + from));
    var at = (m.offset !== null && m.excerptOffset !== null) ? m.offset - m.excerptOffset : -1;
    panel.appendChild(side('primary said', m.primary, m.backup, at));
    panel.appendChild(side('backup said', m.backup, m.primary, at));
  }
  document.addEventListener('click', function(ev){
    var t = ev.target; while (t && t.getAttribute && t.getAttribute('data-mismatch') === null) t = t.parentNode;
    if (t && t.getAttribute) show(Number(t.getAttribute('data-mismatch')));
  });
})();
`;

export function renderReportHtml(log: RunLog, t: Timeline, title: string): string {
  const h: string[] = [];
  const x = (s: string) => escapeHtml(s);
  const ms = (a: number) => formatOffset(a - t.startMs);
  const released = log.releases.reduce((s, r) => s + r.bytes, 0);
  const unchecked = log.releases.reduce((s, r) => s + r.uncheckedBytes, 0);
  const done = log.checkpoints.filter((c) => c.outcome === 'done');
  const failed = log.checkpoints.filter((c) => c.outcome === 'failed').length;
  const degradedMs = log.states.filter((s) => s.state === 'DEGRADED').reduce((s, p) => s + (p.endMs - p.startMs), 0);

  h.push('<!DOCTYPE html>', '<html lang="en"><head><meta charset="utf-8">', `<title>${x(title)}</title>`, `<style>${STYLE}</style></head><body>`);
  h.push(`<h1>${x(title)}</h1>`);
  h.push(`<div class="period">${x(new Date(log.startMs).toISOString())} to ${x(new Date(log.endMs).toISOString())} (${x(formatOffset(log.endMs - log.startMs).slice(1))}), ${log.lines} log lines</div>`);
  h.push('<div class="summary">');
  const fact = (label: string, value: string, id: string) => h.push(`<span>${x(label)} <b id="${id}">${x(value)}</b></span>`);
  fact('flows', String(log.flows.length), 'sum-flows');
  fact('released after comparison', formatBytes(released), 'sum-released');
  if (unchecked) fact('sent unchecked', formatBytes(unchecked), 'sum-unchecked');
  fact('mismatches', String(log.mismatches.length), 'sum-mismatches');
  fact('checkpoints', `${log.checkpoints.length} (${done.length} done, ${failed} failed)`, 'sum-checkpoints');
  if (done.length) fact('median checkpoint', `${n(median(done.map((c) => c.ms ?? c.endMs - c.startMs)))} ms`, 'sum-ckpt-ms');
  fact('failovers', String(log.failovers.length), 'sum-failovers');
  fact('time DEGRADED', formatOffset(degradedMs).slice(1), 'sum-degraded');
  h.push('</div>');
  const suppressed = Object.entries(log.suppressed);
  if (suppressed.length) {
    h.push(`<div class="warn">The logger suppressed lines (rate limit), so this picture misses some events: ${x(suppressed.map(([e, k]) => `${k} ${e}`).join(', '))}.</div>`);
  }
  if (log.unreadableLines) h.push(`<div class="warn">${log.unreadableLines} line(s) of the log were not shadowvm log lines and were skipped.</div>`);
  if (t.flowsInOtherLane) h.push(`<div class="warn">${t.flowsInOtherLane} flows share the last lane ("other flows").</div>`);
  if (!log.releases.length) h.push('<div class="warn">No <code>released</code> lines in the log: releases are not drawn (a bridge older than this report, or <code>releaseLogMs</code> 0).</div>');

  h.push('<div class="legend">',
    '<span><i style="background:#3a9d5d"></i>released (darker: more bytes per second)</span>',
    '<span><i style="background:#8a63c4"></i>sent unchecked (promoted replica, or no backup)</span>',
    '<span><i style="background:#d0302f;border-radius:6px"></i>mismatch (click it)</span>',
    '<span><i style="background:#4a78c2"></i>checkpoint (width: its duration)</span>',
    '<span><i style="background:#c8453b"></i>failed checkpoint</span>',
    '<span><i style="background:rgba(227,155,45,.35)"></i>DEGRADED</span>',
    '<span><i style="background:rgba(200,69,59,.3);outline:1.5px solid #c8453b"></i>failover, until a new backup is ready</span>',
    '</div>');

  h.push(`<svg id="timeline" xmlns="http://www.w3.org/2000/svg" width="${t.width}" height="${t.height}" viewBox="0 0 ${t.width} ${t.height}" role="img" aria-label="timeline">`);
  for (const tick of t.ticks) {
    h.push(`<line class="axis" x1="${n(tick.x)}" y1="14" x2="${n(tick.x)}" y2="${t.height - 4}" stroke-dasharray="2 3"/>`);
    h.push(`<text x="${n(tick.x)}" y="11" text-anchor="middle">${x(tick.label)}</text>`);
  }
  h.push(`<text x="${t.plotX - 8}" y="${n(t.stateLane.y + 13)}" text-anchor="end">replication state</text>`);
  h.push(`<text x="${t.plotX - 8}" y="${n(t.checkpointLane.y + 13)}" text-anchor="end">checkpoints</text>`);
  h.push(`<rect class="lane-bg" x="${t.plotX}" y="${t.checkpointLane.y}" width="${n(t.plotWidth)}" height="${t.checkpointLane.height}"/>`);
  for (const lane of t.lanes) {
    const label = lane.label.length > 46 ? `${lane.label.slice(0, 45)}…` : lane.label;
    h.push(`<g class="lane" data-flow="${x(lane.flow ?? '')}"><rect class="lane-bg" x="${t.plotX}" y="${lane.y}" width="${n(t.plotWidth)}" height="${lane.height}"/>`
      + `<text x="${t.plotX - 8}" y="${n(lane.y + lane.height / 2 + 4)}" text-anchor="end"><title>${x(lane.label)}</title>${x(label)}</text></g>`);
  }
  for (const s of t.states) {
    const p = log.states[s.index];
    h.push(`<rect class="state state-${x(s.state)}" x="${n(s.x)}" y="${s.y}" width="${n(s.width)}" height="${s.height}" fill="${STATE_COLOURS[s.state] ?? '#888'}">`
      + `<title>${x(`${s.state} ${ms(p.startMs)} to ${ms(p.endMs)}: ${p.why}`)}</title></rect>`);
  }
  for (const b of t.bands) {
    const what = b.kind === 'degraded'
      ? (() => { const p = log.states[b.index]; return `DEGRADED ${ms(p.startMs)} to ${ms(p.endMs)}: ${p.why}`; })()
      : (() => { const f = log.failovers[b.index]; return `failover ${ms(f.atMs)}: ${f.cause} (${f.detail}); ${f.survivor} promoted${f.reprotected ? `; new backup at ${ms(f.endMs)}` : ''}`; })();
    h.push(`<rect class="band ${b.kind}" x="${n(b.x)}" y="${b.y}" width="${n(b.width)}" height="${b.height}"><title>${x(what)}</title></rect>`);
  }
  for (const r of t.releases) {
    const rel = log.releases[r.index];
    h.push(`<rect class="mark release${r.unchecked ? ' unchecked' : ''}" x="${n(r.x)}" y="${r.y}" width="${n(r.width)}" height="${r.height}" fill-opacity="${r.opacity.toFixed(2)}">`
      + `<title>${x(`${rel.flow ?? 'other flows'}: ${formatBytes(rel.bytes)} in ${rel.frames} frames released after comparison`
        + `${rel.uncheckedBytes || rel.uncheckedFrames ? `, ${formatBytes(rel.uncheckedBytes)} in ${rel.uncheckedFrames} frames sent unchecked` : ''} in the ${n(rel.windowMs)} ms up to ${ms(rel.atMs)}`)}</title></rect>`);
  }
  for (const c of t.checkpoints) {
    const ck = log.checkpoints[c.index];
    const how = ck.outcome === 'done' ? `done in ${n(ck.ms ?? ck.endMs - ck.startMs)} ms` : ck.outcome === 'failed' ? `failed: ${ck.error}` : 'no answer in the log';
    h.push(`<rect class="mark checkpoint outcome-${ck.outcome}" data-epoch="${ck.epoch}" x="${n(c.x)}" y="${c.y}" width="${n(c.width)}" height="${c.height}">`
      + `<title>${x(`checkpoint ${ck.epoch} (${ck.reason}${ck.flow ? `, ${ck.flow}` : ''}) at ${ms(ck.startMs)}: ${how}`)}</title></rect>`);
  }
  for (const m of t.mismatches) {
    const mm = log.mismatches[m.id - 1];
    h.push(`<circle class="mark mismatch" data-mismatch="${m.id}" cx="${n(m.cx)}" cy="${n(m.cy)}" r="${m.r}"><title>${x(`mismatch ${m.id} (${mm.kind}) at ${ms(mm.atMs)}: click for both sides`)}</title></circle>`);
  }
  h.push('</svg>');
  h.push('<div id="details">Click a mismatch (red dot) to see what each side said.</div>');

  if (log.mismatches.length) {
    h.push('<h2>Mismatches</h2><table><tr><th>#</th><th>time</th><th>flow</th><th>kind</th><th>offset</th></tr>');
    for (const m of log.mismatches) {
      const at = m.offset === null ? '' : m.offset < 0 ? 'handshake' : String(m.offset);
      h.push(`<tr><td><a class="mm" data-mismatch="${m.id}">${m.id}</a></td><td>${x(ms(m.atMs))}</td><td>${x(m.flow)}</td><td>${x(m.kind)}</td><td class="num">${at}</td></tr>`);
    }
    h.push('</table>');
  }
  if (log.checkpoints.length) {
    h.push('<h2>Checkpoints</h2><table><tr><th>epoch</th><th>asked</th><th>reason</th><th>flow</th><th>outcome</th><th>ms</th></tr>');
    for (const c of log.checkpoints) {
      h.push(`<tr><td class="num">${c.epoch}</td><td>${x(ms(c.startMs))}</td><td>${x(c.reason)}</td><td>${x(c.flow ?? '')}</td><td>${x(c.outcome === 'failed' ? `failed: ${c.error}` : c.outcome)}</td><td class="num">${c.ms === null ? '' : n(c.ms)}</td></tr>`);
    }
    h.push('</table>');
  }
  if (log.failovers.length) {
    h.push('<h2>Failovers</h2><table><tr><th>time</th><th>cause</th><th>dead</th><th>survivor</th><th>detection to promotion</th><th>flows carried</th><th>new backup</th></tr>');
    for (const f of log.failovers) {
      h.push(`<tr><td>${x(ms(f.atMs))}</td><td>${x(`${f.cause}: ${f.detail}`)}</td><td>${x(f.dead)}</td><td>${x(f.survivor)}</td>`
        + `<td class="num">${f.detectionMs === null ? '' : `${n(f.detectionMs)} ms`}</td><td class="num">${f.flowsCarried ?? ''}</td><td>${x(f.reprotected ? ms(f.endMs) : 'not in the log')}</td></tr>`);
    }
    h.push('</table>');
  }
  const data = { mismatches: log.mismatches };
  h.push(`<script type="application/json" id="report-data">${scriptJson(data)}</script>`);
  h.push(`<script>${SCRIPT}</script>`);
  h.push('</body></html>');
  return `${h.join('\n')}\n`;
}

function median(v: number[]): number {
  const s = [...v].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}
