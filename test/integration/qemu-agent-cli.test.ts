/**
 * `shadowvm agent qemu --config lab.json` as its own process (root, QEMU
 * lab): it attaches to the running VMs, makes real copies, and when it is
 * killed in the middle of a copy and started again, it finds the primary
 * left paused, resumes it, and the bridge is protected again.
 */
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { monotonicUs } from '../../lib/clock';
import { runInAsync } from '../../lib/lab/exec';
import { teardownLab } from '../../lib/lab/netns';
import { until } from '../support/until';
import { QemuLab, startQemuLab } from '../../lib/lab/qemu/pair';
import { stateFileOf } from '../../lib/agents/qemu-attach';
import { SHADOWVM_BIN, requireBuiltCli } from '../support/lab-helpers';

const PREFIX = 'qz';
jest.setTimeout(240_000);

describe('shadowvm agent qemu, a process of its own', () => {
  let lab: QemuLab;
  let agent: ChildProcess | null = null;
  let agentLog = '';

  function startAgent(configFile: string): ChildProcess {
    const child = spawn(SHADOWVM_BIN, ['agent', 'qemu', '--config', configFile], { stdio: ['ignore', 'ignore', 'pipe'] });
    child.stderr?.on('data', (d: Buffer) => { agentLog += d.toString(); });
    agent = child;
    return child;
  }

  beforeAll(async () => {
    if (process.getuid?.() !== 0) throw new Error('qemu-agent-cli.test.ts needs root (taps, a network namespace, QEMU): run jest as root');
    requireBuiltCli();
    lab = await startQemuLab({
      prefix: PREFIX, memMiB: 128, config: { replicator: { checkpointTimeoutMs: 3000 } as never },
      agent: (ctx) => {
        startAgent(ctx.lab.descriptionFile);
        return { stop: async () => { agent?.kill('SIGTERM'); } };
      },
    });
  }, 300_000);

  afterAll(async () => {
    agent?.kill('SIGKILL');
    await lab?.stop();
    teardownLab(PREFIX);
  }, 60_000);

  const backupPort = () => lab.bridge.snapshot().ports.find((p) => p.role === 'backup')?.name;

  test('attaches to the lab\'s VMs and makes real copies: the backup runs behind the tap it names, and a state file says so', async () => {
    await until('a real copy', () => backupPort() !== lab.taps.backup, 30_000);
    expect(lab.bridge.pipeline.state).toBe('COMPARING');
    const state = JSON.parse(fs.readFileSync(stateFileOf(lab.descriptionFile), 'utf8')) as { vms: { backup: { tap: string } } };
    expect(state.vms.backup.tap).toBe(backupPort());
    expect(agentLog).toMatch(/qemu-agent-checkpoint/);
  });

  test('killed in the middle of a copy and started again: the primary it left paused serves again and the pair is protected', async () => {
    // The lab holds the primary's first QMP socket (the agent has the second): watch STOP through the lab's.
    const primary = lab.vms.primary;
    const stopped = primary.qmp.waitForEvent('STOP', 30_000);
    expect(lab.bridge.pipeline.request('manual', undefined, monotonicUs())).toBe(true);
    await stopped;
    agent?.kill('SIGKILL');
    await until('the checkpoint to time out', () => lab.bridge.pipeline.state === 'DEGRADED', 20_000);
    agentLog = '';
    startAgent(lab.descriptionFile);
    await until('protected again', () => lab.bridge.pipeline.state === 'COMPARING', 60_000);
    expect(await primary.qmp.execute('query-status')).toMatchObject({ running: true });
    // Nobody but the new agent could have resumed it.
    expect(agentLog).toMatch(/qemu-agent-resumed-primary/);
    const body = await runInAsync(lab.client.netns, 'curl', ['-sS', '--fail', '-m', '60', `http://${lab.serviceIpv4}/hello.txt`], 90_000);
    expect(body.length).toBeGreaterThan(0);
  });

  test('teardown removes the taps the agent process made for its standbys', async () => {
    expect(fs.readdirSync('/sys/class/net').some((l) => /^qza\d+$/.test(l))).toBe(true);
    agent?.kill('SIGKILL');
    await lab.stop();
    teardownLab(PREFIX);
    expect(fs.readdirSync('/sys/class/net').filter((l) => l.startsWith(PREFIX))).toEqual([]);
  });
});
