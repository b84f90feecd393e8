/**
 * A headers-only tcpdump capture inside a lab namespace, for timing what a
 * client received (the failover bench). tcpdump is a separate process, as
 * every load tool of the bench is: nothing here blocks the event loop of
 * the in-process bridge.
 *
 * In:  a namespace, an interface, a pcap filter, a file.
 * Out: once tcpdump says "listening on", a handle whose `stop()` sends
 *      SIGINT and resolves with tcpdump's own counts (captured, dropped by
 *      the kernel) once it has flushed and exited.
 *
 * Choices: `-s 96` keeps Ethernet + IPv4 + TCP with options and drops the
 * payload (a 20 MB/s download stays ~1.5 MB/s of capture); timestamps are
 * the kernel's, on the wall clock, in nanoseconds; `--immediate-mode` makes
 * libpcap use a TPACKET_V2 ring (with V3, frames of a block not yet retired
 * at SIGINT are lost); `-B 32768` (32 MiB) so a busy host does not drop;
 * `-Q in`: what the client received. `ip netns exec` execs tcpdump, so the
 * child is tcpdump itself; `teardownLab` kills it with everything else in
 * the namespace if the bench is interrupted.
 */
import { spawn } from 'node:child_process';

export interface HeaderCaptureOptions {
  netns: string;
  iface: string;
  file: string;
  /** pcap filter expression, e.g. `tcp and src port 80`. */
  filter: string;
  snaplen?: number;
  /** tcpdump -Q (default `in`: what the namespace received). */
  direction?: 'in' | 'out' | 'inout';
}

export interface HeaderCaptureSummary {
  file: string;
  captured: number;
  droppedByKernel: number;
  exitCode: number | null;
  stderr: string;
}

export interface HeaderCapture {
  readonly file: string;
  readonly pid: number | undefined;
  stop(): Promise<HeaderCaptureSummary>;
}

export function startHeaderCapture(o: HeaderCaptureOptions, readyTimeoutMs = 10_000): Promise<HeaderCapture> {
  const argv = [
    'netns', 'exec', o.netns,
    'tcpdump', '-i', o.iface, '-Q', o.direction ?? 'in', '-n', '--immediate-mode', '-B', '32768', '-s', String(o.snaplen ?? 96),
    '--time-stamp-precision=nano', '-Z', 'root', '-w', o.file, o.filter,
  ];
  const child = spawn('ip', argv, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
  child.stderr!.setEncoding('utf8');
  return new Promise<HeaderCapture>((resolve, reject) => {
    let listening = false;
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`tcpdump on ${o.iface} in ${o.netns} did not start listening within ${readyTimeoutMs} ms: ${stderr.trim()}`));
    }, readyTimeoutMs);
    child.stderr!.on('data', (chunk: string) => {
      stderr += chunk;
      if (listening || !/listening on/.test(stderr)) return;
      listening = true;
      clearTimeout(timer);
      resolve({
        file: o.file,
        pid: child.pid,
        stop: async () => {
          if (child.exitCode === null && child.signalCode === null) child.kill('SIGINT');
          const killer = setTimeout(() => child.kill('SIGKILL'), 5000);
          const code = await exited;
          clearTimeout(killer);
          const count = (what: string) => Number(new RegExp(`(\\d+) packets? ${what}`).exec(stderr)?.[1] ?? NaN);
          return { file: o.file, captured: count('captured'), droppedByKernel: count('dropped by kernel'), exitCode: code, stderr: stderr.trim() };
        },
      });
    });
    void exited.then((code) => {
      clearTimeout(timer);
      if (!listening) reject(new Error(`tcpdump on ${o.iface} in ${o.netns} exited (${code}) before listening: ${stderr.trim()}`));
    });
  });
}
