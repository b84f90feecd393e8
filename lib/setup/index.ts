/**
 * lib/setup: host plumbing for `shadowvm setup` / `shadowvm teardown`.
 *
 * In:  a pair name and where its clients are (an existing interface, or an
 *      existing Linux bridge joined through a veth pair).
 * Out: two taps for the VMs (svm-<name>-p, svm-<name>-b) and an uplink,
 *      silent (no addresses, no IPv6, no ARP), up, with offloads fit for the
 *      chosen packet I/O; every change a Step computed from the host's
 *      current state, so setup is idempotent and teardown removes only what
 *      carries the `shadowvm:<name>` alias.
 */
export { SetupConfigError, SetupPermissionError, SetupStepError } from './errors';
export type { SetupConfigProblem } from './errors';
export { PAIR_NAME_MAX, bridgePortMac, pairNames, validatePairName } from './names';
export type { PairNames } from './names';
export {
  hasNetAdmin, parseEthtoolFeatures, parseGetent, parseIpAddrs, parseIpLinks, readHostSnapshot,
} from './host-state';
export type { CommandRunner, HostSnapshot, LinkState, AddressState, OffloadFeature, OffloadState, TapInfo, TapOwner } from './host-state';
export { computeSetupPlan, computeTeardownPlan } from './plan';
export type { IoMode, PairInterfaces, SetupOptions, SetupPlan, Step, TeardownPlan } from './plan';
export {
  TeardownIncompleteError, applySetup, applyTeardown, classifyFailure, executeSetupSteps, formatCommand,
  planSetup, planTeardown, setupStatus, shellQuote,
} from './apply';
export type { ApplyOptions, InterfaceRole, InterfaceStatus, SetupLog, SetupResult, SetupStatus, TeardownResult } from './apply';
