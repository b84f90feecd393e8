/**
 * lib/lab: the netns lab (three namespaces, cloned primary and backup, real
 * Debian servers); the bridged lab (shadowvm between them) is in bridged.ts.
 * Everything here needs root and touches the host; nothing in the data path
 * imports it.
 */
export { LabCommandError } from './exec';
export {
  LAB_CLIENT_IPV4, LAB_CLIENT_IPV6, LAB_CLIENT_MAC, LAB_DEFAULT_PREFIX, LAB_VM_IPV4, LAB_VM_IPV6, LAB_VM_MAC,
  LabConfigError, buildLab, findLabLeftovers, labNames, processRunning, teardownLab, waitUntilQuiet,
} from './netns';
export type { Lab, LabLeftovers, LabNames, LabNode, LabOptions, LabProcess, LabRole, TeardownReport } from './netns';
export { LAB_BLOB_BYTES, LAB_CONTENT_MTIME, LAB_FILES, fixedSeedBytes, labContent, writeLabContent } from './content';
export type { ContentDivergence } from './content';
export { LAB_BACKUP_FTP_PASV_PORTS, LAB_DNS_NAME, LAB_DNS_TXT, LAB_FTP_PASV_PORTS, LAB_SERVICES, LabServerError, startLabServers } from './servers';
export type { LabReplicaRuntime, LabServerOptions, LabServers, LabService } from './servers';
