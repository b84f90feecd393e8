/**
 * Shared by the hostile-*.test.ts files (issue 7): a `shadowvm run` on three
 * veth pairs as root, an attacker running as a real non-root user (nobody,
 * through setpriv), the bridge's memory, and a prober that keeps asking
 * the bridge for its status to see whether its event loop stalls.
 */
import { execFileSync, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { queryControlSocket } from '../../lib/control/control-socket';
import { CliProcess, SHADOWVM_BIN, watchChild } from '../support/lab-helpers';

/** The unprivileged user attacks run as (Debian's nobody/nogroup). */
export const NOBODY = 65534;

export interface Veths {
  uplink: string;
  primary: string;
  backup: string;
  remove(): void;
}

/** Three veth pairs named svm<tag>{u,p,b} (peers with an x), up. */
export function makeVeths(tag: string): Veths {
  const names = { uplink: `svm${tag}u`, primary: `svm${tag}p`, backup: `svm${tag}b` };
  const remove = () => {
    for (const name of Object.values(names)) {
      try { execFileSync('ip', ['link', 'del', name], { stdio: 'ignore' }); } catch { /* already gone */ }
    }
  };
  remove();
  for (const name of Object.values(names)) {
    execFileSync('ip', ['link', 'add', name, 'type', 'veth', 'peer', 'name', `${name}x`], { stdio: 'ignore' });
    execFileSync('ip', ['link', 'set', name, 'up'], { stdio: 'ignore' });
    execFileSync('ip', ['link', 'set', `${name}x`, 'up'], { stdio: 'ignore' });
  }
  return { ...names, remove };
}

/** `shadowvm run` arguments for `veths` and the two socket paths. */
export function runArgs(tag: string, veths: Veths, agentSocket: string, controlSocket: string, extra: string[] = []): string[] {
  return ['run', '--name', tag, '--uplink', veths.uplink, '--primary', veths.primary, '--backup', veths.backup,
    '--agent', agentSocket, '--control', controlSocket, ...extra];
}

/**
 * `bin/shadowvm args` as a child process, like `spawnShadowvm`, optionally
 * started under another umask (through /bin/sh, which then execs node).
 */
export function spawnCli(args: readonly string[], options: { umask?: string } = {}): CliProcess {
  const argv = options.umask === undefined
    ? [process.execPath, SHADOWVM_BIN, ...args]
    : ['/bin/sh', '-c', `umask ${options.umask} && exec "$@"`, 'sh', process.execPath, SHADOWVM_BIN, ...args];
  return watchChild(spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] }), args.join(' '));
}

/** A node script run as user nobody, with no capabilities. */
export function spawnAsNobody(script: string, args: readonly string[] = []): CliProcess {
  const child = spawn('setpriv', [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', '--inh-caps=-all',
    process.execPath, '-e', script, '--', ...args], { stdio: ['ignore', 'pipe', 'pipe'], cwd: '/' });
  return watchChild(child, 'script as nobody');
}

/** A node script run as this (root) process's user. */
export function spawnScript(script: string, args: readonly string[] = []): CliProcess {
  return watchChild(spawn(process.execPath, ['-e', script, '--', ...args], { stdio: ['ignore', 'pipe', 'pipe'] }), 'script');
}

/** Resolves with the exit code, or 'still running' after `timeoutMs` (the process is then killed). */
export async function exitWithin(p: CliProcess, timeoutMs: number): Promise<number | string> {
  let timer: NodeJS.Timeout | undefined;
  const outcome = await Promise.race([p.exited, new Promise<string>((r) => { timer = setTimeout(() => r('still running'), timeoutMs); })]);
  clearTimeout(timer);
  if (outcome === 'still running') {
    p.child.kill('SIGKILL');
    await p.exited;
  }
  return outcome;
}

/** Resident set size of process `pid`, in MiB. */
export function rssMiBOf(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

/**
 * Asks the bridge for its status, one request at a time, every `everyMs`,
 * and records the slowest answer: a stalled event loop shows up there. Also
 * samples the bridge's RSS.
 */
export class StatusProber {
  maxMs = 0;
  answered = 0;
  failures: string[] = [];
  rssMaxMiB = 0;
  private stopped = false;
  private readonly done: Promise<void>;

  constructor(private readonly controlSocket: string, private readonly pid: number, private readonly everyMs = 20) {
    this.done = this.loop();
  }

  async stop(): Promise<this> {
    this.stopped = true;
    await this.done;
    return this;
  }

  private async loop(): Promise<void> {
    while (!this.stopped) {
      const t0 = performance.now();
      try {
        const reply = await queryControlSocket(this.controlSocket, { cmd: 'status' }, 10_000);
        if (reply.ok) this.answered++;
        else this.failures.push(reply.error);
      } catch (e) {
        this.failures.push((e as Error).message);
      }
      this.maxMs = Math.max(this.maxMs, performance.now() - t0);
      try {
        this.rssMaxMiB = Math.max(this.rssMaxMiB, rssMiBOf(this.pid));
      } catch {
        // Exited.
      }
      await new Promise((r) => setTimeout(r, this.everyMs));
    }
  }
}

export function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Lines of `shadowvm:` one-line errors in a CLI's output. */
export function errorLines(output: string): string[] {
  return output.trim().split('\n').filter((l) => l.startsWith('shadowvm:'));
}
