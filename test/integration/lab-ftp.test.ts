/**
 * FTP in passive mode through the live bridge in the netns lab (root): lftp
 * in the client namespace, vsftpd in both replicas. Each vsftpd picks its
 * own passive data port, so the replicas' 227 replies differ: the bridge
 * must report that mismatch, checkpoint, and still deliver the primary's
 * answer (and the file) to the client.
 */
import { join } from 'node:path';
import { BridgedLab, startBridgedLab, waitFor } from '../../lib/lab/bridged';
import { LAB_FILES } from '../../lib/lab/content';
import { runInAsync } from '../../lib/lab/exec';
import { stopLabAfterAll, flowReports, recordingLog, requireRoot, serverPort, sha256File } from '../support/lab-helpers';

const PREFIX = 'svmi3';
jest.setTimeout(40_000);

describe('FTP passive mode through the bridge', () => {
  let l: BridgedLab | undefined;
  const recorded = recordingLog();

  const bridged = (): BridgedLab => {
    if (!l) throw new Error('the bridged lab did not start (see beforeAll)');
    return l;
  };

  beforeAll(async () => {
    requireRoot('lab-ftp.test.ts');
    l = await startBridgedLab({ prefix: PREFIX, log: recorded.log });
  }, 30_000);

  stopLabAfterAll(PREFIX, () => l);

  test('an lftp passive-mode session fetches files byte-identical to the served ones', async () => {
    const { lab, servers } = bridged();
    const files = [LAB_FILES.lorem, LAB_FILES.blob];
    const targets = files.map((f) => join(lab.runDir, `ftp-${f.replace(/\W/g, '-')}`));
    const gets = files.map((f, i) => `get ${f} -o ${targets[i]}`).join('; ');
    await runInAsync(lab.client.netns, 'lftp', [
      '-e', `set ftp:passive-mode on; set ftp:prefer-epsv no; set net:max-retries 1; set net:timeout 10; ${gets}; quit`,
      `ftp://${lab.serviceIpv4}`,
    ], 30_000);
    expect(targets.map(sha256File)).toEqual(files.map((f) => sha256File(join(servers.primary.contentRoot, f))));
  });

  test('reports the differing 227 reply as a mismatch on port 21 and checkpoints for it', async () => {
    const { bridge } = bridged();
    const control = flowReports(bridge).filter((r) => r.protocol === 'tcp' && serverPort(r) === 21);
    expect(control).toHaveLength(1);
    const pasv = control[0].mismatchList.filter((m) => m.primary.includes('227'));
    expect(pasv.length).toBeGreaterThanOrEqual(1);
    // The two replicas name different data ports, so the backup's excerpt says something else.
    expect(pasv[0].backup).not.toBe(pasv[0].primary);
    expect(bridge.snapshot().checkpoints.requested.mismatch).toBeGreaterThanOrEqual(1);
    const history = bridge.pipeline.replicator.history;
    const done = () => history.filter((c) => c.reason === 'mismatch' && c.flow === control[0].key && c.outcome === 'done');
    await waitFor(() => done().length > 0, 5000);
    expect(done().length).toBeGreaterThanOrEqual(1);
  });

  test('returns to COMPARING after the checkpoints', async () => {
    const { bridge } = bridged();
    expect(await waitFor(() => bridge.pipeline.state === 'COMPARING', 5000)).toBe(true);
    const snap = bridge.snapshot();
    expect({ state: snap.state, failed: snap.checkpoints.failed, pending: snap.checkpoints.pending })
      .toEqual({ state: 'COMPARING', failed: 0, pending: false });
    expect(snap.checkpoints.done).toBeGreaterThanOrEqual(2); // the first one (agent connected) and at least one for the mismatch
  });
});
