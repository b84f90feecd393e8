/**
 * report/: a picture of one run. A bridge's JSON log (or a replay's) in,
 * one self-contained HTML file with an SVG timeline out.
 */
import { layoutTimeline, LayoutOptions } from './layout';
import { renderReportHtml } from './html';
import { parseRunLog } from './run-log';

export * from './run-log';
export * from './layout';
export { renderReportHtml, escapeHtml } from './html';
export * from './run-log-file';

/** The HTML report of a log's text. */
export function reportFromLog(text: string, title: string, layout: LayoutOptions = {}): string {
  const log = parseRunLog(text);
  return renderReportHtml(log, layoutTimeline(log, layout), title);
}
