/**
 * `shadowvm lab up|down` as a user runs them (root): the built CLI as a child
 * process. A `lab up` killed with SIGKILL leaves its namespaces, veths and
 * servers behind, and `lab down` removes them all; a `lab up` stopped with
 * SIGINT tears down by itself.
 */
import { join } from 'node:path';
import { runAsync } from '../../lib/lab/exec';
import { findLabLeftovers, labNames, processRunning, teardownLab } from '../../lib/lab/netns';
import { CliProcess, killProcessesAndLabAfterAll, NO_LEFTOVERS, requireBuiltCli, requireRoot, runShadowvm, spawnShadowvm } from '../support/lab-helpers';

const PREFIX = 'svmi5';
const UP_TIMEOUT_MS = 30_000;
jest.setTimeout(45_000);

/** Processes whose command line names this lab (the servers' configs live in its run directory). */
async function processesNamingLab(): Promise<number[]> {
  const out = await runAsync('pgrep', ['-f', labNames(PREFIX).runDir]).catch(() => ''); // exit 1: none
  return out.split(/\s+/).filter(Boolean).map(Number);
}

describe('shadowvm lab up / down', () => {
  const started: CliProcess[] = [];

  async function labUp(): Promise<CliProcess> {
    const up = spawnShadowvm(['lab', 'up', '--prefix', PREFIX, '--log-level', 'error']);
    started.push(up);
    await up.waitFor(new RegExp(`lab ${PREFIX} is up`), UP_TIMEOUT_MS);
    return up;
  }

  beforeAll(() => {
    requireRoot('lab-teardown.test.ts');
    requireBuiltCli();
    teardownLab(PREFIX);
  });

  killProcessesAndLabAfterAll(PREFIX, started, 20_000);

  test('a lab up killed with SIGKILL leaves its lab behind, and lab down removes all of it', async () => {
    const up = await labUp();
    const running = findLabLeftovers(PREFIX);
    expect(running.namespaces.sort()).toEqual(Object.values(labNames(PREFIX).namespaces).sort());
    expect(running.links.sort()).toEqual(Object.values(labNames(PREFIX).hostIfs).sort());
    // nginx (master and worker), vsftpd and dnsmasq in each replica.
    expect(running.processes.length).toBeGreaterThanOrEqual(8);
    const named = await processesNamingLab();
    expect(named.length).toBeGreaterThanOrEqual(6); // the servers' command lines name their configs
    const servers = [...new Set([...running.processes, ...named])];

    up.child.kill('SIGKILL');
    expect(await up.exited).toBe('SIGKILL');
    const left = findLabLeftovers(PREFIX);
    expect(left.namespaces).toHaveLength(3);
    expect(left.links).toHaveLength(3);
    expect(left.processes.length).toBeGreaterThan(0);
    expect(left.runDirExists).toBe(true);

    const down = await runShadowvm(['lab', 'down', '--prefix', PREFIX]);
    expect(down.code).toBe(0);
    expect(down.output).toContain(`lab ${PREFIX}: removed 3 namespaces and 3 host interfaces`);
    expect(down.output).not.toContain('failures');
    expect(findLabLeftovers(PREFIX)).toEqual(NO_LEFTOVERS);
    expect(servers.filter(processRunning)).toEqual([]);
    expect(await processesNamingLab()).toEqual([]);
  });

  test('a lab up stopped with SIGINT reports its bridge, then tears the lab down by itself', async () => {
    const up = await labUp();
    const servers = findLabLeftovers(PREFIX).processes;
    expect(servers.length).toBeGreaterThanOrEqual(8);
    const status = await runShadowvm(['status', '--control', join(labNames(PREFIX).runDir, 'control.sock'), '--json']);
    expect(status.code).toBe(0);
    expect(JSON.parse(status.output)).toMatchObject({ name: PREFIX, state: 'COMPARING', agent: { connected: true } });

    up.child.kill('SIGINT');
    expect(await up.exited).toBe(0);
    expect(up.output()).toContain('lab torn down');
    expect(findLabLeftovers(PREFIX)).toEqual(NO_LEFTOVERS);
    expect(servers.filter(processRunning)).toEqual([]);
    expect(await processesNamingLab()).toEqual([]);
  });
});
