import { ConfigError, DEFAULT_PIPELINE_CONFIG, PipelineConfig, makePipelineConfig } from '../../../lib/pipeline/config';
import { UserFacingError } from '../../../lib/errors';

function rejection(partial: unknown): ConfigError {
  try {
    makePipelineConfig(partial as Partial<PipelineConfig>);
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    expect(e).toBeInstanceOf(UserFacingError);
    return e as ConfigError;
  }
  throw new Error(`accepted ${JSON.stringify(partial)}`);
}

describe('makePipelineConfig', () => {
  it('fills every setting not given with its default, at every depth', () => {
    const c = makePipelineConfig({ policy: { arp: 'drop' } as never, flowHighWater: { bytes: 4096 } as never });
    expect(c.policy).toEqual({ ...DEFAULT_PIPELINE_CONFIG.policy, arp: 'drop' });
    expect(c.flowHighWater).toEqual({ bytes: 4096, frames: DEFAULT_PIPELINE_CONFIG.flowHighWater.frames });
    expect(c.maxFlows).toBe(DEFAULT_PIPELINE_CONFIG.maxFlows);
    expect(makePipelineConfig()).toEqual(DEFAULT_PIPELINE_CONFIG);
  });

  it('treats a key spread in as undefined as not set', () => {
    expect(makePipelineConfig({ maxFlows: undefined, failover: { silenceMs: undefined } } as never)).toEqual(DEFAULT_PIPELINE_CONFIG);
  });

  it.each([
    [{ maxFlow: 10 }, 'maxFlow', /allowed keys: maxFlows, flowReports, maxUnmatchedAgeMs, .*captureDivergence, releaseLogMs, normalize, flowPolicy$/],
    [{ normalize: { date: true } }, 'normalize.date', /in normalize: httpDate, httpDateToleranceMs$/],
    [{ policy: { arpp: 'drop' } }, 'policy.arpp', /allowed keys in policy: arp, otherEtherTypes, malformedFromVm/],
    [{ failover: { silence: 5 } }, 'failover.silence', /allowed keys in failover: silenceMs, probeTimeoutMs, minStandbyFrames, fewFramesSilenceMs, carrierHoldMs, announce, checkpointWaitMs$/],
    [{ replicator: { timeoutMs: 5 } }, 'replicator.timeoutMs', /in replicator: checkpointTimeoutMs, maxIntervalMs, retryInitialMs, retryMaxMs, reprotectTimeoutMs$/],
    [{ checkpointBudget: { perClient: 5 } }, 'checkpointBudget.perClient', /in checkpointBudget: perSource, windowMs$/],
    [{ ingressHold: { packets: 5 } }, 'ingressHold.packets', /in ingressHold: bytes, frames$/],
    [{ compare: { window: 4 } }, 'compare.window', /in compare: datagramWindow$/],
    [{ totalHighWater: { Bytes: 5 } }, 'totalHighWater.Bytes', /in totalHighWater: bytes, frames$/],
  ])('rejects the unknown key in %j, naming its path and the allowed keys', (partial, path, allowed) => {
    const err = rejection(partial);
    expect(err.setting).toBe(path);
    expect(err.message).toMatch(new RegExp(`^invalid setting ${path.replace('.', '\\.')}: unknown key; `));
    expect(err.message).toMatch(allowed);
  });

  it.each([
    [{ maxFlows: 0 }, 'maxFlows', 'must be an integer > 0, got 0'],
    [{ maxFlows: 10.5 }, 'maxFlows', 'must be an integer > 0, got 10.5'],
    [{ maxUnmatchedAgeMs: -1 }, 'maxUnmatchedAgeMs', 'must be a number > 0, got -1'],
    [{ maxUnmatchedAgeMs: '100' }, 'maxUnmatchedAgeMs', 'must be a number > 0, got "100"'],
    [{ tcpIdleMs: null }, 'tcpIdleMs', 'must be a number > 0, got null'],
    [{ flowHighWater: { frames: -2 } }, 'flowHighWater.frames', 'must be an integer > 0, got -2'],
    [{ failover: { silenceMs: -5 } }, 'failover.silenceMs', 'must be a number >= 0 (0: off), got -5'],
    [{ failover: { announce: 'yes' } }, 'failover.announce', 'must be true or false, got "yes"'],
    [{ checkpointBudget: { perSource: 1.5 } }, 'checkpointBudget.perSource', 'must be an integer >= 0 (0: no budget), got 1.5'],
    [{ policy: { arp: 'pass' } }, 'policy.arp', 'must be one of "forward-primary", "compare", "drop", got "pass"'],
    [{ policy: { strayFromClient: 'primary' } }, 'policy.strayFromClient', 'must be one of "primary-only", "both", "drop", got "primary"'],
    [{ resync: 'clone' }, 'resync', 'must be one of "copy", "align", got "clone"'],
    [{ captureDivergence: 1 }, 'captureDivergence', 'must be true or false, got 1'],
    [{ compare: { datagramWindow: 0 } }, 'compare.datagramWindow', 'must be an integer >= 1 and <= 256 (1: strict order), got 0'],
    [{ compare: { datagramWindow: 2.5 } }, 'compare.datagramWindow', 'must be an integer >= 1 and <= 256 (1: strict order), got 2.5'],
    [{ compare: { datagramWindow: 257 } }, 'compare.datagramWindow', 'must be an integer >= 1 and <= 256 (1: strict order), got 257'],
    [{ policy: 'drop' }, 'policy', 'must be an object with keys arp, otherEtherTypes, malformedFromVm, malformedFromClient, strayFromClient, badTcpFlagsFromClient, newFlowsPerSecond, straysPerSecond, got "drop"'],
    [{ normalize: { httpDate: 'on' } }, 'normalize.httpDate', 'must be true or false, got "on"'],
    [{ normalize: { httpDateToleranceMs: -1 } }, 'normalize.httpDateToleranceMs', 'must be a number >= 0 and <= 60000, got -1'],
    [{ failover: [] }, 'failover', 'must be an object with keys silenceMs, probeTimeoutMs, minStandbyFrames, fewFramesSilenceMs, carrierHoldMs, announce, checkpointWaitMs, got []'],
    [{ replicator: { retryInitialMs: 5000, retryMaxMs: 1000 } }, 'replicator.retryMaxMs', 'must be >= replicator.retryInitialMs (5000), got 1000'],
  ])('rejects the bad value in %j, naming the key and what it allows', (partial, path, detail) => {
    const err = rejection(partial);
    expect(err.setting).toBe(path);
    expect(err.message).toBe(`invalid setting ${path}: ${detail}`);
  });

  it('accepts the edges of every range: zero where zero means off, the smallest positive value elsewhere', () => {
    const c = makePipelineConfig({
      maxFlows: 1, maxUnmatchedAgeMs: 0.5,
      failover: { silenceMs: 0, probeTimeoutMs: 0, minStandbyFrames: 0, fewFramesSilenceMs: 0, carrierHoldMs: 0, announce: true, checkpointWaitMs: 0 },
      checkpointBudget: { perSource: 0, windowMs: 0 },
      replicator: { ...DEFAULT_PIPELINE_CONFIG.replicator, maxIntervalMs: 0, retryInitialMs: 10, retryMaxMs: 10 },
    });
    expect(c.failover.announce).toBe(true);
    expect(c.checkpointBudget.perSource).toBe(0);
    expect(makePipelineConfig({ compare: { datagramWindow: 1 } }).compare.datagramWindow).toBe(1);
    expect(makePipelineConfig({ compare: { datagramWindow: 256 } }).compare.datagramWindow).toBe(256);
  });

  it('leaves HTTP Date normalization off unless asked, and keeps the default tolerance when only switched on', () => {
    expect(makePipelineConfig().normalize).toEqual({ httpDate: false, httpDateToleranceMs: 2000 });
    expect(makePipelineConfig({ normalize: { httpDate: true } } as never).normalize).toEqual({ httpDate: true, httpDateToleranceMs: 2000 });
  });
});
