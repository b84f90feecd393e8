/**
 * I/O: everything that moves frames between the data path and a medium.
 *
 * In:  frames from live interfaces, capture files or memory.
 * Out: batches of ReceivedFrame to a receiver; sent frames to the medium.
 */
export * from './port';
export * from './errors';
export * from './pcap-reader';
export * from './pcap-writer';
export * from './memory';
export * from './pcapng-writer';
