/**
 * qemu/: talking to QEMU. In: a QMP socket path, launch options. Out: a QMP
 * client (commands with timeouts, events), a QEMU process in its own process
 * group, and the KVM/TCG verdict of a probe. Touches the host (processes,
 * sockets); nothing in the data path imports it.
 */
export { QmpClient, QmpClosedError, QmpCommandError, QmpTimeoutError } from './qmp';
export type { QmpConnectOptions, QmpCounters, QmpEvent, QmpGreeting } from './qmp';
export { QEMU_BINARY, QemuLaunchError, QemuProcess, findQemuProcesses, qemuArgs } from './process';
export type { Accel, QemuExit, QemuKernel, QemuLaunchOptions } from './process';
export { chooseAccel } from './accel';
export type { AccelChoice, AccelProbeOptions } from './accel';
