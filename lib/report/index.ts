/**
 * report/: a picture of one run. A bridge's JSON log (or a replay's) in,
 * one self-contained HTML file with an SVG timeline out.
 */
import { readFileSync, writeFileSync } from 'node:fs';
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

/** Reads a JSON log file and writes its HTML report; returns the report's path. */
export function writeReportFile(logPath: string, htmlPath: string, title: string, layout: LayoutOptions = {}): string {
  writeFileSync(htmlPath, reportFromLog(readFileSync(logPath, 'utf8'), title, layout));
  return htmlPath;
}

/** `writeReportFile` for a narration: one line saying where the report is, or why there is none. */
export function reportLine(logPath: string, htmlPath: string, title: string): string {
  try {
    return `report of this run (timeline of releases, mismatches, checkpoints, failovers): ${writeReportFile(logPath, htmlPath, title)}`;
  } catch (e) {
    return `no report of this run: ${(e as Error).message}`;
  }
}
