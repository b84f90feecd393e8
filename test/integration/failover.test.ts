/**
 * Failover in the netns lab (root): the active replica dies in the middle
 * of real transfers, the other one is promoted, and the clients see no
 * error, no lost and no duplicated byte. Then the dead namespace is rebuilt
 * as the new backup, and it happens again the other way round.
 *
 * Deaths: abrupt (the replica's link goes down: carrier loss, seen through
 * netlink) and silent (its processes stopped and its output to the client
 * blackholed: no carrier change; the silence detector and its probe see it).
 */
import { join } from 'node:path';
import { BridgedLab, startBridgedLab, waitFor } from '../../lib/lab/bridged';
import { serveOnBoth } from '../../lib/lab/servers';
import { fixedSeedBytes, LAB_FILES } from '../../lib/lab/content';
import { runInAsync } from '../../lib/lab/exec';
import { DeathMode } from '../../lib/lab/faults';
import { LinkWatcher } from '../../lib/io/link-watch';
import { delay, IN_FLIGHT_RECEIVE_BUFFER, paced, requireBuiltCli, requireRoot, runShadowvm, sha256, stopLabAfterAll } from '../support/lab-helpers';
import { existsSync, readFileSync, statSync } from 'node:fs';

const PREFIX = 'svmfo';
jest.setTimeout(120_000);

const BIG = 'big.bin';
const BIG_BYTES = 100 << 20;
const FTP_FILE = 'ftp.bin';
const FTP_BYTES = 8 << 20;

interface WrkResult { requests: number; socketErrors: number; non2xx: number }
function parseWrk(out: string): WrkResult {
  const requests = /^\s*(\d+) requests in /m.exec(out);
  if (!requests) throw new Error(`wrk printed no summary:\n${out}`);
  const errors = /^\s*Socket errors: (.*)$/m.exec(out);
  let socketErrors = 0;
  if (errors) for (const part of errors[1].split(',')) socketErrors += Number(part.trim().split(/\s+/)[1]);
  const non2xx = /^\s*Non-2xx or 3xx responses: (\d+)/m.exec(out);
  return { requests: Number(requests[1]), socketErrors, non2xx: non2xx ? Number(non2xx[1]) : 0 };
}

describe('failover in the netns lab', () => {
  let l: BridgedLab | undefined;
  let links: LinkWatcher | undefined;
  let big: Buffer;

  beforeAll(async () => {
    requireRoot('failover.test.ts');
    links = LinkWatcher.open();
    l = await startBridgedLab({ prefix: PREFIX, clientReceiveBufferMax: IN_FLIGHT_RECEIVE_BUFFER, links, ftpPassivePorts: { min: 30000, max: 30000 } });
    big = fixedSeedBytes(BIG_BYTES, 77);
    const ftp = fixedSeedBytes(FTP_BYTES, 78);
    serveOnBoth(l.servers, BIG, big);
    serveOnBoth(l.servers, FTP_FILE, ftp);
  }, 60_000);

  stopLabAfterAll(PREFIX, () => l);
  afterAll(() => links?.close());

  /** Kills the active replica and waits until the bridge is protected again (new backup compared). */
  async function killActiveAndRecover(mode: DeathMode): Promise<{ dead: string; survivor: string }> {
    const lab = l!;
    const before = lab.bridge.pipeline.failover.failovers;
    const dead = lab.activeNode();
    const survivor = lab.standbyNode()!;
    await lab.kill(dead, mode);
    if (!(await waitFor(() => lab.bridge.pipeline.failover.failovers > before, 5000, 2))) {
      throw new Error(`no failover within 5 s after a ${mode} death of ${dead.netns} (state ${lab.bridge.pipeline.state})`);
    }
    return { dead: dead.netns, survivor: survivor.netns };
  }

  async function reprotected(): Promise<void> {
    const lab = l!;
    if (!(await waitFor(() => lab.bridge.pipeline.state === 'COMPARING' && lab.bridge.pipeline.replicas.standby !== null, 20_000))) {
      throw new Error(`not protected again within 20 s (state ${lab.bridge.pipeline.state}, roles ${lab.bridge.pipeline.replicas.describe()})`);
    }
  }

  for (const mode of ['abrupt', 'silent'] as const) {
    describe(`${mode} death of the primary`, () => {
      test('a wrk run across it ends with no socket error and no non-2xx response', async () => {
        const lab = l!.lab;
        const url = `http://${lab.serviceIpv4}/${LAB_FILES.hello}`;
        const wrk = runInAsync(lab.client.netns, 'wrk', ['-t2', '-c8', '-d4s', '--timeout', '3s', url], 30_000);
        await delay(1500);
        const { dead, survivor } = await killActiveAndRecover(mode);
        const result = parseWrk(await wrk);
        const rec = l!.bridge.pipeline.failoverHistory.at(-1)!;
        console.log(`${mode}: wrk ${result.requests} requests across the death of ${dead} (${rec.cause}: ${rec.detail}); ${survivor} promoted after ${((rec.promotedUs - rec.detectedUs) / 1000).toFixed(1)} ms, ${rec.flowsCarried} flows carried, ${rec.backlogFrames} backlog frames`);
        expect(result.requests).toBeGreaterThan(0);
        expect(result.socketErrors).toBe(0);
        expect(result.non2xx).toBe(0);
        expect(rec.cause).toBe(mode === 'abrupt' ? 'carrier' : 'silence');
        await reprotected();
      });

      test('a 100 MiB HTTP download across it arrives intact', async () => {
        const lab = l!.lab;
        const out = join(lab.runDir, `big-${mode}`);
        const wget = runInAsync(lab.client.netns, 'wget', paced(out, `http://${lab.serviceIpv4}/${BIG}`, '40m', 60), 70_000);
        await delay(1000);
        const atDeath = existsSync(out) ? statSync(out).size : 0;
        await killActiveAndRecover(mode);
        await wget;
        console.log(`${mode}: 100 MiB download, ${atDeath} bytes received when the primary died`);
        expect(atDeath).toBeLessThan(BIG_BYTES);
        const got = readFileSync(out);
        expect(got.length).toBe(BIG_BYTES);
        expect(sha256(got)).toBe(sha256(big));
        await reprotected();
      });

      test('an lftp transfer across it completes, on the same FTP session', async () => {
        const lab = l!.lab;
        const out = join(lab.runDir, `ftp-${mode}`);
        const lftp = runInAsync(lab.client.netns, 'lftp', ['-e',
          `set ftp:passive-mode on; set ftp:prefer-epsv no; set net:max-retries 1; set net:timeout 20; set net:limit-rate 2M; get ${FTP_FILE} -o ${out}; quit`,
          `ftp://${lab.serviceIpv4}`], 60_000);
        await delay(800);
        const atDeath = existsSync(out) ? statSync(out).size : 0;
        await killActiveAndRecover(mode);
        await lftp;
        console.log(`${mode}: lftp get, ${atDeath} of ${FTP_BYTES} bytes received when the primary died`);
        expect(atDeath).toBeLessThan(FTP_BYTES);
        expect(sha256(readFileSync(out))).toBe(sha256(fixedSeedBytes(FTP_BYTES, 78)));
        await reprotected();
      });
    });
  }

  describe('asked for', () => {
    test('`shadowvm failover` promotes the backup on request (a planned switchover) while a download runs', async () => {
      requireBuiltCli();
      const lab = l!;
      const p = lab.bridge.pipeline;
      const before = p.failover.failovers;
      const survivor = lab.standbyNode()!;
      const out = join(lab.lab.runDir, 'big-manual');
      const wget = runInAsync(lab.lab.client.netns, 'wget', paced(out, `http://${lab.lab.serviceIpv4}/${BIG}`, '40m', 60), 70_000);
      await delay(800);
      const cli = await runShadowvm(['failover', '--control', lab.controlSocket]);
      expect(cli.code).toBe(0);
      expect(cli.output).toContain(`promoted ${survivor.hostIf}`);
      expect(p.failover.failovers).toBe(before + 1);
      expect(p.failoverHistory.at(-1)!.cause).toBe('manual');
      await wget;
      expect(sha256(readFileSync(out))).toBe(sha256(big));
      // The old primary was alive: re-protection rebuilds it as the backup all the same.
      await reprotected();
    });
  });
});
