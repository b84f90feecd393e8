export const EtherType = {
  IPv4: 0x0800,
  ARP: 0x0806,
  VLAN: 0x8100,
  QinQ: 0x88a8,
  IPv6: 0x86dd,
} as const;

export const IpProto = {
  HopByHop: 0,
  ICMP: 1,
  TCP: 6,
  UDP: 17,
  Routing: 43,
  Fragment: 44,
  ESP: 50,
  AH: 51,
  ICMPv6: 58,
  NoNext: 59,
  DestOptions: 60,
  Mobility: 135,
  HIP: 139,
  Shim6: 140,
} as const;

export const TcpFlag = {
  FIN: 0x01,
  SYN: 0x02,
  RST: 0x04,
  PSH: 0x08,
  ACK: 0x10,
  URG: 0x20,
  ECE: 0x40,
  CWR: 0x80,
} as const;

/** Why a frame could not be decoded. Counted per reason; never thrown. */
export const MALFORMED_REASONS = [
  'truncated-ethernet',
  'truncated-vlan',
  'vlan-stack-too-deep',
  'truncated-arp',
  'truncated-ipv4',
  'bad-ipv4-version',
  'bad-ipv4-header-length',
  'bad-ipv4-total-length',
  'truncated-ipv6',
  'bad-ipv6-version',
  'truncated-ipv6-extension',
  'ipv6-header-chain-too-long',
  'truncated-tcp',
  'bad-tcp-data-offset',
  'bad-tcp-option',
  'truncated-udp',
  'bad-udp-length',
  'truncated-icmp',
] as const;

export type MalformedReason = (typeof MALFORMED_REASONS)[number];
