import { LabCommandError } from '../../../lib/lab/exec';
import {
  SetupPermissionError, SetupStepError, Step, classifyFailure, executeSetupSteps, formatCommand, shellQuote,
} from '../../../lib/setup';

/** Records what ran; fails the command whose line matches `failOn` with that stderr. */
function fakeRunner(failOn: Record<string, string> = {}): { ran: string[]; runner: (cmd: string, args: readonly string[]) => string } {
  const ran: string[] = [];
  return {
    ran,
    runner: (cmd, args) => {
      const line = formatCommand([cmd, ...args]);
      ran.push(line);
      if (line in failOn) throw new LabCommandError([cmd, ...args], 2, failOn[line]);
      return '';
    },
  };
}

const steps: Step[] = [
  { why: 'create a', argv: ['ip', 'tuntap', 'add', 'dev', 'a', 'mode', 'tap'], undo: ['ip', 'link', 'del', 'dev', 'a'] },
  { why: 'a: arp off', argv: ['ip', 'link', 'set', 'dev', 'a', 'arp', 'off'] },
  { why: 'u: promisc', argv: ['ip', 'link', 'set', 'dev', 'u', 'promisc', 'on'], undo: ['ip', 'link', 'set', 'dev', 'u', 'promisc', 'off'] },
  { why: 'b: master', argv: ['ip', 'link', 'set', 'dev', 'b', 'master', 'br9'] },
  { why: 'a: up', argv: ['ip', 'link', 'set', 'dev', 'a', 'up'] },
];

describe('running setup steps', () => {
  test('runs every step in order and logs each reason', () => {
    const { ran, runner } = fakeRunner();
    const log: string[] = [];
    executeSetupSteps(steps, (line) => log.push(line), runner);
    expect(ran).toEqual(steps.map((s) => formatCommand(s.argv)));
    expect(log).toEqual(steps.map((s) => s.why));
  });

  test('undoes the steps already done in reverse order when one fails, then throws', () => {
    const { ran, runner } = fakeRunner({ 'ip link set dev b master br9': 'Cannot find device "br9"\n' });
    const log: string[] = [];
    let error: unknown;
    try {
      executeSetupSteps(steps, (line) => log.push(line), runner);
    } catch (err) {
      error = err;
    }
    expect(ran).toEqual([
      'ip tuntap add dev a mode tap',
      'ip link set dev a arp off',
      'ip link set dev u promisc on',
      'ip link set dev b master br9',
      'ip link set dev u promisc off',
      'ip link del dev a',
    ]);
    expect(error).toBeInstanceOf(SetupStepError);
    expect((error as Error).message).toBe('ip link set dev b master br9 failed: Cannot find device "br9"; undid 2 earlier step(s)');
    expect(log.slice(-3)).toEqual([
      'ip link set dev b master br9 failed; undoing 2 step(s)',
      'undo: ip link set dev u promisc off',
      'undo: ip link del dev a',
    ]);
  });

  test('keeps undoing after an undo fails and reports it', () => {
    const { ran, runner } = fakeRunner({
      'ip link set dev a up': 'boom',
      'ip link set dev u promisc off': 'Cannot find device "u"',
    });
    expect(() => executeSetupSteps(steps, () => undefined, runner)).toThrow(
      'ip link set dev a up failed: boom; undid 1 earlier step(s), but could not undo: ip link set dev u promisc off: Cannot find device "u"',
    );
    expect(ran[ran.length - 1]).toBe('ip link del dev a');
  });

  test('turns EPERM from ip into "needs root or CAP_NET_ADMIN" and does nothing else', () => {
    const { ran, runner } = fakeRunner({ 'ip tuntap add dev a mode tap': 'open: Permission denied\n' });
    let error: unknown;
    try {
      executeSetupSteps(steps, () => undefined, runner);
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(SetupPermissionError);
    expect((error as Error).message).toBe('shadowvm setup/teardown needs root or CAP_NET_ADMIN (ip tuntap add dev a mode tap: open: Permission denied)');
    expect(ran).toEqual(['ip tuntap add dev a mode tap']);
  });
});

describe('failure classification', () => {
  test.each([
    ['RTNETLINK answers: Operation not permitted', SetupPermissionError],
    ['sysctl: permission denied on key "net.ipv6.conf.a.disable_ipv6"', SetupPermissionError],
    ['Cannot set device feature settings: Operation not permitted', SetupPermissionError],
    ['RTNETLINK answers: File exists', SetupStepError],
  ])('%s', (stderr, type) => {
    expect(classifyFailure(['ip', 'x'], new LabCommandError(['ip', 'x'], 2, stderr))).toBeInstanceOf(type);
  });
});

describe('dry-run formatting', () => {
  test('quotes only what a shell would split or expand', () => {
    expect(shellQuote('net.ipv6.conf.svm-web1-p.disable_ipv6=1')).toBe('net.ipv6.conf.svm-web1-p.disable_ipv6=1');
    expect(shellQuote('shadowvm:web1')).toBe('shadowvm:web1');
    expect(shellQuote('a b')).toBe("'a b'");
    expect(shellQuote("it's")).toBe("'it'\\''s'");
    expect(shellQuote('')).toBe("''");
  });
});
