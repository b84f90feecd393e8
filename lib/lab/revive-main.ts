/**
 * `node revive-main.js PREFIX ROLE`: re-protection of the netns lab done in
 * its own process (see `reviveReplicaElsewhere`): kills what is left in the
 * replica's namespace, restores its network and restarts its servers with the
 * configs and content the lab wrote at start. The servers run detached: they
 * outlive this process, and the lab's teardown finds them by namespace.
 * Exit 0 once they listen; 1 with one line on stderr otherwise.
 */
import { describeLab } from './netns';
import { reviveReplica } from './faults';
import { replicaRuntime } from './servers';

async function main(argv: string[]): Promise<number> {
  const [prefix, role] = argv;
  if (!prefix || (role !== 'primary' && role !== 'backup')) {
    process.stderr.write('usage: revive-main PREFIX primary|backup\n');
    return 2;
  }
  const lab = describeLab(prefix);
  await reviveReplica(lab, replicaRuntime(lab, role === 'primary' ? lab.primary : lab.backup));
  return 0;
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: Error) => {
      process.stderr.write(`revive ${process.argv.slice(2).join(' ')}: ${err.message}\n`);
      process.exit(1);
    },
  );
}
