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
import { createTap, QemuLab, startQemuLab } from '../../lib/lab/qemu/pair';
import { readQemuAgentConfig, stateFileOf } from '../../lib/agents/qemu-attach';
import { QemuProcess } from '../../lib/qemu/process';
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
    child.on('exit', (code, signal) => { agentLog += `[agent process exited: code ${code}, signal ${signal}]\n`; });
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
    // On failure, say what the new agent said: the cause is in its log, not in the bridge's state.
    await until('protected again', () => lab.bridge.pipeline.state === 'COMPARING', 60_000).catch((e: Error) => {
      throw new Error(`${e.message} (bridge ${lab.bridge.pipeline.state}); the new agent's log:\n${agentLog.slice(-6000)}`);
    });
    expect(await primary.qmp.execute('query-status')).toMatchObject({ running: true });
    // Nobody but the new agent could have resumed it.
    expect(agentLog).toMatch(/qemu-agent-resumed-primary/);
    const body = await runInAsync(lab.client.netns, 'curl', ['-sS', '--fail', '-m', '60', `http://${lab.serviceIpv4}/hello.txt`], 90_000);
    expect(body.length).toBeGreaterThan(0);
  });

  test('killed with its copy on the wire: the new agent cancels that migration, resumes the primary, kills the standby left behind, and protects again', async () => {
    // The state a dead agent leaves when it dies after `migrate` and before the end: built here on purpose,
    // with a migration slowed to last minutes, into a standby named as the dead agent named its own.
    agent?.kill('SIGKILL');
    const dead = agent?.pid as number;
    await new Promise((r) => agent?.once('exit', r));
    const config = readQemuAgentConfig(lab.descriptionFile);
    const name = `${PREFIX}-a${dead}-99`;
    createTap(`${PREFIX}a99`);
    const orphan = await QemuProcess.launch({ ...config.vmTemplate, name, tap: `${PREFIX}a99`, incoming: true });
    const primary = lab.vms.primary;
    const uri = `unix:${config.vmTemplate.runDir}/${name}.migrate`;
    await orphan.qmp.execute('migrate-incoming', { uri });
    await primary.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 32 * 1024 });
    await primary.qmp.execute('stop');
    await primary.qmp.execute('migrate', { uri });
    expect((await primary.qmp.execute<{ status: string }>('query-migrate')).status).toMatch(/^(setup|active)$/);
    await until('the bridge to see no agent', () => lab.bridge.pipeline.state === 'DEGRADED', 20_000);

    agentLog = '';
    startAgent(lab.descriptionFile);
    await until('protected again', () => lab.bridge.pipeline.state === 'COMPARING', 60_000).catch((e: Error) => {
      throw new Error(`${e.message} (bridge ${lab.bridge.pipeline.state}); the new agent's log:\n${agentLog.slice(-6000)}`);
    });
    expect(agentLog).toMatch(/qemu-agent-cancelled-migration/);
    expect(agentLog).toMatch(/qemu-agent-resumed-primary/);
    // The standby left behind: killed by name, or (when the cancel already ended it) its tap removed.
    expect(agentLog).toMatch(new RegExp(`"vm":"${name}"|"tap":"${PREFIX}a99"`));
    expect(await primary.qmp.execute('query-status')).toMatchObject({ running: true });
    // A resumed primary under a migration still running would have been stopped again by it (postmigrate).
    await new Promise((r) => setTimeout(r, 500));
    expect(await primary.qmp.execute('query-status')).toMatchObject({ running: true });
    await orphan.exited;
    expect(fs.existsSync(`/sys/class/net/${PREFIX}a99`)).toBe(false);
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
