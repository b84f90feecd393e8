/**
 * lab/qemu: the QEMU lab. In: a prefix, a memory size, an agent factory.
 * Out: a cached guest image (guest.ts), two live VMs with the same memory
 * behind shadowvm (pair.ts), and `cloneInto`, the stop-and-copy that made
 * the second one. Needs root.
 */
export {
  DEFAULT_GUEST_CACHE, GUEST_BIG_BYTES, GUEST_BIG_FILE, GuestBuildError, buildGuest, guestCacheRoot, guestCmdline, guestContent,
} from './guest';
export type { GuestBuildOptions, GuestImage, GuestNet } from './guest';
export { GUEST_FTP_PASV_PORTS, GUEST_HOSTNAME, GUEST_PROBE_MARKER, GUEST_READY_MARKER } from './guest-files';
export {
  CloneError, QEMU_LAB_MEM_SIZES, QemuLabError, TCG_FAILOVER_PROBE_TIMEOUT_MS, TCG_FAILOVER_SILENCE_MS, TCG_MAX_UNMATCHED_AGE_MS,
  answeringAgent, cloneInto, describeQemuLab, qemuLabConfig, startQemuLab,
} from './pair';
export type {
  CloneOptions, CloneReport, QemuLab, QemuLabAgent, QemuLabAgentContext, QemuLabAgentFactory, QemuLabMem, QemuLabOptions, QemuLabVmOptions, QemuVmTemplate,
} from './pair';
export { qemuSyncAgent } from './agent';
export type { QemuLabSyncAgentOptions } from './agent';
