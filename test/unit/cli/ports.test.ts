/**
 * A worker's ports (`run --workers N`) take a shard of the frames: the
 * options reach every kind of port openOne and openOneLater build, and a
 * port that cannot filter (cap) refuses a shard rather than take every frame.
 * test/integration/shard-ports.test.ts opens AF_PACKET ones on a veth.
 */
import { openOne, openOneLater, openPorts, PortShardError } from '../../../lib/cli/ports';
import { UserFacingError } from '../../../lib/errors';
import { andFilters, shardFilter } from '../../../lib/dataplane/shard';
import { lengthFilter, SMALL_FRAME_MAX, splitRingOptions } from '../../../lib/io/split-ring-port';

describe('ports with a shard', () => {
  const shard = { count: 2, index: 1 };
  const refusal = /cap port eth7: cannot take worker 1's shard of 2 \(libpcap ports have no shard filter: every worker would take every frame\); use --io afpacket/;

  it('cap refuses a shard of more than one worker, before it opens anything, from openOne, openOneLater and openPorts', async () => {
    expect(() => openOne('cap', 'eth7', { shard })).toThrow(PortShardError);
    expect(() => openOne('cap', 'eth7', { shard })).toThrow(refusal);
    await expect(openOneLater('cap', 'eth7', { shard })).rejects.toThrow(refusal);
    expect(() => openPorts('cap', { uplink: 'eth7', primary: 'eth8', backup: null }, { shard })).toThrow(refusal);
    expect(new PortShardError('eth7', 'cap', shard)).toBeInstanceOf(UserFacingError);
  });

  it('split rings put the port\'s filter (the shard) before each ring\'s length test', () => {
    const filter = shardFilter(shard.count, shard.index);
    const { small, large } = splitRingOptions({ vnetHdr: true, filter });
    expect(Buffer.from(small.filter!)).toEqual(andFilters(filter, lengthFilter(SMALL_FRAME_MAX, false)));
    expect(Buffer.from(large.filter!)).toEqual(andFilters(filter, lengthFilter(SMALL_FRAME_MAX, true)));
  });
});
