/**
 * Minimal typings for `cap` 0.2.1 (libpcap binding; no @types/cap exists).
 * Only what shadowvm uses. Facts about this version: `open()` always sets
 * promiscuous and immediate mode, snaplen 65535, and copies every packet into
 * the one Buffer given to `open()`, then emits 'packet' synchronously.
 */
declare module 'cap' {
  import { EventEmitter } from 'node:events';

  export type LinkType = 'ETHERNET' | 'NULL' | 'IEEE802_11_RADIO' | 'LINKTYPE_LINUX_SLL' | 'RAW' | string;

  export interface DeviceAddress {
    addr: string;
    netmask?: string;
    broadaddr?: string;
  }

  export interface Device {
    name: string;
    description?: string;
    addresses: DeviceAddress[];
    flags?: string;
  }

  export class Cap extends EventEmitter {
    constructor();
    /**
     * Opens `device` and starts capturing frames matching `filter` (pcap-filter
     * syntax, '' for all). `bufSize`: libpcap's kernel buffer in bytes.
     * `buffer`: receives each packet; it must hold the largest frame.
     */
    open(device: string, filter: string, bufSize: number, buffer: Buffer): LinkType;
    close(): void;
    /** pcap_sendpacket on the opened device; throws with libpcap's message on failure. */
    send(buffer: Buffer, nBytes?: number): void;
    /** Windows only. */
    setMinBytes?(nBytes: number): void;
    on(event: 'packet', listener: (nbytes: number, truncated: boolean) => void): this;
    static findDevice(ip?: string): string | undefined;
    static deviceList(): Device[];
  }

  export function findDevice(ip?: string): string | undefined;
  export function deviceList(): Device[];
  export const decoders: Record<string, unknown>;
}
