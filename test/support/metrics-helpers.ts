/** Shared by the live tests that scrape /metrics and inject frames: fetch, promtool, the injector process. */
import { spawn } from 'node:child_process';
import { get } from 'node:http';
import { join } from 'node:path';
import { runInAsync } from '../../lib/lab/exec';
import type { InjectResult, InjectSpec } from './frame-injector';
import { REPO_ROOT } from './lab-helpers';

/** The compiled frame injector (build first: npx tsc -p tsconfig.json). */
export const INJECTOR = join(REPO_ROOT, 'dist', 'test', 'support', 'frame-injector.js');

/** Runs the frame injector as its own process inside `netns`, on its eth0. */
export async function injectIn(netns: string, spec: Omit<InjectSpec, 'iface'>): Promise<InjectResult> {
  const out = await runInAsync(netns, process.execPath, [INJECTOR, JSON.stringify({ iface: 'eth0', ...spec })], 60_000);
  return JSON.parse(out.trim().split('\n').pop()!) as InjectResult;
}

/** An HTTP GET's status and body. */
export function fetchText(url: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    get(url, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => { body += c; });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    }).on('error', reject);
  });
}

/** `promtool check metrics` with the text on stdin: its exit code and everything it printed. */
export function promtoolCheck(text: string): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('promtool', ['check', 'metrics'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (c) => { output += c; });
    child.stderr.on('data', (c) => { output += c; });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, output }));
    child.stdin.end(text);
  });
}
