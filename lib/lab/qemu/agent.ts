/**
 * The QEMU lab's sync agent: the QEMU agent (agents/qemu-agent.ts) with the
 * lab's VMs, standbys started by the lab on fresh taps, copies by
 * `cloneInto`, and retired VMs' taps removed. With `sync: 'colo'` standbys
 * carry the COLO gate and become COLO secondaries (`enterColo`, over a unix
 * socket in the lab's run directory); the lab must then run the patched QEMU
 * (`startQemuLab({ qemuBinary: findColoQemu() })`).
 */
import * as path from 'node:path';
import { runQemuAgent, QemuAgent, QemuAgentOptions } from '../../agents/qemu-agent';
import { QemuProcess } from '../../qemu/process';
import { coloGateObject, enterColo } from '../../qemu/colo';
import { runQuietly } from '../exec';
import { cloneInto, QemuLabAgentFactory } from './pair';

/** Options of the lab's agent beyond what the lab gives it. */
export type QemuLabSyncAgentOptions = Partial<Pick<QemuAgentOptions, 'warmStandby' | 'retireDelayMs' | 'heartbeatMs' | 'sync' | 'coloCheckpointTimeoutMs'>> & {
  /** Migration channels of each copy (see CloneOptions.channels). */
  channels?: number;
};

/** A factory for `startQemuLab({ agent })`: the agent that copies real state. */
export function qemuSyncAgent(options: QemuLabSyncAgentOptions = {}): QemuLabAgentFactory & { last?: QemuAgent } {
  const factory: QemuLabAgentFactory & { last?: QemuAgent } = (ctx) => {
    const { lab, log } = ctx;
    const agent = runQemuAgent({
      socketPath: ctx.agentSocket,
      name: ctx.name,
      primary: lab.vms.primary,
      backup: lab.vms.backup,
      reconnectInitialMs: 20,
      ...options,
      factory: {
        standby: () => lab.launchVm({ incoming: true, ...(options.sync === 'colo' ? { objects: [coloGateObject()] } : {}) }),
        enterColo: async (source, target) => {
          const t = target as QemuProcess;
          return enterColo(source.qmp, t.qmp, `unix:${path.join(lab.runDir, `${t.name}.colo`)}`);
        },
        copy: (source, target, leaveTargetPaused) => cloneInto(source as QemuProcess, target as QemuProcess, { log, channels: options.channels, leaveTargetPaused }),
        retire: async (vm) => {
          if (vm.tap) runQuietly('ip', ['link', 'del', vm.tap]);
        },
      },
      log,
    });
    factory.last = agent;
    return agent;
  };
  return factory;
}
