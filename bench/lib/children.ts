/**
 * Child processes of the live benches (soak, flow-flood): started with
 * their output kept (bounded), run in a lab namespace, the frame injector,
 * a process's memory from /proc, and helpers that answer one JSON line per
 * line written to them.
 */
import { ChildProcess, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { runInAsync } from '../../lib/lab/exec';
import type { InjectResult, InjectSpec } from '../../test/support/frame-injector';

const INJECTOR = join(__dirname, '..', '..', 'test', 'support', 'frame-injector.js');

export interface Child { readonly child: ChildProcess; output: string; readonly exited: Promise<number | null> }

/** Spawns `argv`; its stdout and stderr are kept in `output` (the last half MiB once over 1 MiB). */
export function start(argv: string[], what: string, stdin: 'ignore' | 'pipe' = 'ignore'): Child {
  const child = spawn(argv[0], argv.slice(1), { stdio: [stdin, 'pipe', 'pipe'] });
  const c: Child = { child, output: '', exited: new Promise((r) => child.once('close', (code) => r(code))) };
  const keep = (chunk: Buffer) => {
    c.output += chunk.toString();
    if (c.output.length > 1 << 20) c.output = c.output.slice(-(1 << 19));
  };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  child.on('error', (e) => { c.output += `\n${what}: ${e.message}`; });
  return c;
}

export const inNs = (netns: string, argv: string[]): string[] => ['ip', 'netns', 'exec', netns, ...argv];

/** Runs the frame injector (built in dist/) on the namespace's eth0; its last line is the result. */
export async function injectIn(netns: string, spec: Omit<InjectSpec, 'iface'>, timeoutMs = 600_000): Promise<InjectResult> {
  const out = await runInAsync(netns, process.execPath, [INJECTOR, JSON.stringify({ iface: 'eth0', ...spec })], timeoutMs);
  return JSON.parse(out.trim().split('\n').pop()!) as InjectResult;
}

export function memoryOf(pid: number): { rssMiB: number; hwmMiB: number } {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = (field: string) => Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(status)?.[1] ?? NaN);
    return { rssMiB: kb('VmRSS') / 1024, hwmMiB: kb('VmHWM') / 1024 };
  } catch {
    return { rssMiB: NaN, hwmMiB: NaN };
  }
}

/** A child that answers each line written to its stdin with one JSON line (one question at a time). */
export class JsonLineChild<T> {
  private readonly c: Child;
  private pending: ((r: T) => void) | null = null;
  private buffered = '';

  constructor(argv: string[], what: string) {
    this.c = start(argv, what, 'pipe');
    this.c.child.stdout!.on('data', (chunk: Buffer) => {
      this.buffered += chunk.toString();
      const nl = this.buffered.indexOf('\n');
      if (nl < 0) return;
      const r = JSON.parse(this.buffered.slice(0, nl)) as T;
      this.buffered = this.buffered.slice(nl + 1);
      this.pending?.(r);
      this.pending = null;
    });
  }

  ask(line: string): Promise<T> {
    return new Promise((resolve) => {
      this.pending = resolve;
      this.c.child.stdin!.write(`${line}\n`);
    });
  }

  stop(): void { this.c.child.kill('SIGKILL'); }
}
