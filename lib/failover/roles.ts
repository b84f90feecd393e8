/**
 * Replica roles as data. The bridge has two replica slots (one per VM port);
 * what each slot *is* — primary, backup, promoted survivor, dead — is a role
 * that changes at failover and at re-protection. Nothing else in the code
 * says "slot 0 is the primary": stages ask the ReplicaSet.
 *
 * In:  role changes (promote, markDead, makeBackup).
 * Out: which slot's output reaches the client (`active`), which slot is
 *      compared against it (`standby`), and the comparison side of a slot
 *      (compare/'s PRIMARY for the replica whose output is released, BACKUP
 *      for the one compared against it).
 *
 *   start:        slot a primary, slot b backup
 *   failover:     a dead,         b promoted     (b's output is translated)
 *   re-protect:   a backup,       b promoted     (new flows compared again)
 *   failover:     a promoted,     b dead
 */
import { BACKUP, PRIMARY } from '../compare/tcp-stream';

export type ReplicaRole = 'primary' | 'backup' | 'promoted' | 'dead';
export type SlotId = 0 | 1;
export const SLOT_IDS: readonly SlotId[] = [0, 1];

export interface ReplicaSlot {
  readonly id: SlotId;
  /** The slot's port or capture name, for logs and status. */
  name: string;
  role: ReplicaRole;
  /** Bumped each time the slot takes a new role (a new replica in it). */
  epoch: number;
}

export class ReplicaRoleError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ReplicaRoleError';
  }
}

export class ReplicaSet {
  readonly slots: [ReplicaSlot, ReplicaSlot];
  /** Bumped at every failover and re-protection: flows born under an older generation keep their own mode. */
  generation = 0;
  failovers = 0;

  constructor(names: [string, string] = ['a', 'b']) {
    this.slots = [
      { id: 0, name: names[0], role: 'primary', epoch: 0 },
      { id: 1, name: names[1], role: 'backup', epoch: 0 },
    ];
  }

  /** The slot whose output goes to the client: the primary, or the promoted survivor. */
  get active(): ReplicaSlot {
    const s = this.slots.find((x) => x.role === 'primary' || x.role === 'promoted');
    if (!s) throw new ReplicaRoleError('no active replica');
    return s;
  }

  /** The slot compared against the active one, if there is one. */
  get standby(): ReplicaSlot | null {
    return this.slots.find((x) => x.role === 'backup') ?? null;
  }

  /** 0 for the active slot, 1 for the standby, -1 for a dead slot. */
  sideOf(id: SlotId): 0 | 1 | -1 {
    const role = this.slots[id].role;
    if (role === 'primary' || role === 'promoted') return PRIMARY;
    if (role === 'backup') return BACKUP;
    return -1;
  }

  /** The standby takes over; the old active slot is dead. Returns the survivor. */
  promote(): ReplicaSlot {
    const survivor = this.standby;
    if (!survivor) throw new ReplicaRoleError('no backup to promote');
    const old = this.active;
    old.role = 'dead';
    old.epoch++;
    survivor.role = 'promoted';
    this.generation++;
    this.failovers++;
    return survivor;
  }

  /** The standby died: the active replica runs alone. */
  loseStandby(): ReplicaSlot | null {
    const s = this.standby;
    if (!s) return null;
    s.role = 'dead';
    s.epoch++;
    this.generation++;
    return s;
  }

  /** A dead slot holds a fresh replica again and becomes the backup. */
  makeBackup(id: SlotId): ReplicaSlot {
    const s = this.slots[id];
    if (s.role !== 'dead') throw new ReplicaRoleError(`slot ${s.name} is ${s.role}, not dead: it cannot become the backup`);
    const active = this.active;
    // The survivor's carried flows stay translated, but for new flows it is a primary again.
    active.role = 'primary';
    s.role = 'backup';
    s.epoch++;
    this.generation++;
    return s;
  }

  /** The dead slot, if any (the one re-protection rebuilds). */
  get dead(): ReplicaSlot | null {
    return this.slots.find((x) => x.role === 'dead') ?? null;
  }

  describe(): string {
    return this.slots.map((s) => `${s.name}=${s.role}`).join(' ');
  }
}
