/**
 * Running system commands for the lab (`ip`, `ethtool`, `sysctl` …).
 *
 * In:  a command and its arguments, optionally a network namespace.
 * Out: the command's stdout, or a LabCommandError that names the command,
 *      its exit status and its stderr, so a failed lab build says what broke.
 */
import { execFile, execFileSync } from 'node:child_process';
import { UserFacingError } from '../errors';

export class LabCommandError extends UserFacingError {
  constructor(
    readonly command: readonly string[],
    readonly status: number | null,
    readonly stderr: string,
  ) {
    super(`lab command failed (exit ${status ?? 'signal'}): ${command.join(' ')}${stderr ? `\n${stderr.trim()}` : ''}`);
    this.name = 'LabCommandError';
  }
}

/** Runs a command, returns its stdout; throws LabCommandError on a non-zero exit. */
export function run(cmd: string, args: readonly string[], timeoutMs = 20_000): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: timeoutMs });
  } catch (err) {
    const e = err as { status?: number | null; stderr?: string | Buffer; message?: string };
    const stderr = e.stderr ? e.stderr.toString() : (e.message ?? '');
    throw new LabCommandError([cmd, ...args], e.status ?? null, stderr);
  }
}

/** Runs a command inside a network namespace (`ip netns exec`). */
export function runIn(netns: string, cmd: string, args: readonly string[], timeoutMs?: number): string {
  return run('ip', ['netns', 'exec', netns, cmd, ...args], timeoutMs);
}

/**
 * Teardown runs every step even when earlier ones fail: this collects the
 * failures instead of throwing, so one missing link does not leave a
 * namespace behind.
 */
export function runQuietly(cmd: string, args: readonly string[], failures?: string[]): boolean {
  try {
    run(cmd, args);
    return true;
  } catch (err) {
    failures?.push((err as Error).message);
    return false;
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * The same, without blocking the event loop: for clients run while a bridge
 * in this process forwards their frames (a synchronous exec would stall it).
 */
export function runAsync(cmd: string, args: readonly string[], timeoutMs = 60_000, stdin?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = execFile(cmd, args, { encoding: 'utf8', timeout: timeoutMs, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      if (err) {
        const e = err as { code?: number | string | null };
        reject(new LabCommandError([cmd, ...args], typeof e.code === 'number' ? e.code : null, stderr || err.message));
      } else {
        resolve(stdout);
      }
    });
    if (stdin !== undefined) child.stdin?.end(stdin);
  });
}

export function runInAsync(netns: string, cmd: string, args: readonly string[], timeoutMs?: number): Promise<string> {
  return runAsync('ip', ['netns', 'exec', netns, cmd, ...args], timeoutMs);
}
