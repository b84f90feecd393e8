// STUB: being implemented by the lead. Interface is fixed.
/**
 * Translates client frames for the backup: the client acknowledges the
 * primary's sequence space; the backup needs its own (ack, SACK blocks, TSecr).
 *
 * In:  VM output frames (to learn each replica's ISN and TSval base),
 *      client frames.
 * Out: translated copies for the backup (client frames of a flow whose
 *      backup ISN is not known yet are held, bounded, and come out of
 *      `observeVmFrame` once it is).
 */
export class BackupIngressTranslator {
  /** Learn from a frame a VM sent. Returns held client frames that can now go to the backup. */
  observeVmFrame(_role: 'primary' | 'backup', _frame: Buffer): Buffer[] { return []; }
  /** A client frame: returns the copies to send to the backup now (possibly none: held). */
  translateForBackup(frame: Buffer): Buffer[] { return [Buffer.from(frame)]; }
}
