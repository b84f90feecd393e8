/**
 * Views over a frame's bytes: getters and setters at fixed offsets through a
 * DataView. Constructing or re-pointing a view reads nothing. The decoder
 * (frame.ts) checks bounds once; views trust the offsets it gives them.
 */

export class EthernetView {
  constructor(public dv: DataView, public offset = 0) {}
  get etherType(): number { return this.dv.getUint16(this.offset + 12); }
}

export class ArpView {
  constructor(public dv: DataView, public offset = 0) {}
  get operation(): number { return this.dv.getUint16(this.offset + 6); }
  /** Sender protocol address (IPv4 ARP), as a uint32. */
  get senderIp(): number { return this.dv.getUint32(this.offset + 14); }
  get targetIp(): number { return this.dv.getUint32(this.offset + 24); }
}

export class Ipv4View {
  constructor(public dv: DataView, public offset = 0) {}
  get headerLength(): number { return (this.dv.getUint8(this.offset) & 0x0f) * 4; }
  get totalLength(): number { return this.dv.getUint16(this.offset + 2); }
  get id(): number { return this.dv.getUint16(this.offset + 4); }
  get ttl(): number { return this.dv.getUint8(this.offset + 8); }
  get protocol(): number { return this.dv.getUint8(this.offset + 9); }
  get checksum(): number { return this.dv.getUint16(this.offset + 10); }
  set checksum(v: number) { this.dv.setUint16(this.offset + 10, v); }
  get src(): number { return this.dv.getUint32(this.offset + 12); }
  get dst(): number { return this.dv.getUint32(this.offset + 16); }
  get moreFragments(): boolean { return (this.dv.getUint8(this.offset + 6) & 0x20) !== 0; }
  /** Fragment offset in bytes. */
  get fragmentOffset(): number { return (this.dv.getUint16(this.offset + 6) & 0x1fff) * 8; }
}

export class Ipv6View {
  constructor(public dv: DataView, public offset = 0) {}
  get payloadLength(): number { return this.dv.getUint16(this.offset + 4); }
  get nextHeader(): number { return this.dv.getUint8(this.offset + 6); }
  get hopLimit(): number { return this.dv.getUint8(this.offset + 7); }
  /** Offset of the source address (16 bytes); the destination follows it. */
  get srcOffset(): number { return this.offset + 8; }
  get dstOffset(): number { return this.offset + 24; }
}

export class TcpView {
  constructor(public dv: DataView, public offset = 0) {}
  get srcPort(): number { return this.dv.getUint16(this.offset); }
  get dstPort(): number { return this.dv.getUint16(this.offset + 2); }
  get seq(): number { return this.dv.getUint32(this.offset + 4); }
  set seq(v: number) { this.dv.setUint32(this.offset + 4, v >>> 0); }
  get ack(): number { return this.dv.getUint32(this.offset + 8); }
  set ack(v: number) { this.dv.setUint32(this.offset + 8, v >>> 0); }
  get dataOffset(): number { return (this.dv.getUint8(this.offset + 12) >> 4) * 4; }
  get flags(): number { return this.dv.getUint8(this.offset + 13); }
  get window(): number { return this.dv.getUint16(this.offset + 14); }
  get checksum(): number { return this.dv.getUint16(this.offset + 16); }
  set checksum(v: number) { this.dv.setUint16(this.offset + 16, v); }
  get urgentPointer(): number { return this.dv.getUint16(this.offset + 18); }
}

export class UdpView {
  constructor(public dv: DataView, public offset = 0) {}
  get srcPort(): number { return this.dv.getUint16(this.offset); }
  get dstPort(): number { return this.dv.getUint16(this.offset + 2); }
  get length(): number { return this.dv.getUint16(this.offset + 4); }
  get checksum(): number { return this.dv.getUint16(this.offset + 6); }
  set checksum(v: number) { this.dv.setUint16(this.offset + 6, v); }
}

export class IcmpView {
  constructor(public dv: DataView, public offset = 0) {}
  get type(): number { return this.dv.getUint8(this.offset); }
  get code(): number { return this.dv.getUint8(this.offset + 1); }
  get checksum(): number { return this.dv.getUint16(this.offset + 2); }
  set checksum(v: number) { this.dv.setUint16(this.offset + 2, v); }
  /** Identifier of an echo request/reply (ICMP types 0/8, ICMPv6 128/129). */
  get echoId(): number { return this.dv.getUint16(this.offset + 4); }
}
