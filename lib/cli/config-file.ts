/**
 * The `--config` file of `shadowvm run` (and of `shadowvm@NAME.service`:
 * `/etc/shadowvm/NAME.json`).
 *
 * In:  a JSON object: any pipeline setting (lib/pipeline/config.ts), plus
 *      what `run` otherwise takes as flags and a unit cannot pass: `ports`
 *      (the uplink and the two VM interfaces) and `metrics` (HOST:PORT).
 * Out: the effective pipeline settings and the run settings; or one
 *      UsageError (unreadable, not JSON) or ConfigError (a key path and what
 *      it allows).
 */
import { readFileSync } from 'node:fs';
import {
  ConfigError, PIPELINE_SETTING_RULES, PipelineConfig, SettingRule, checkSettings, makePipelineConfig,
} from '../pipeline/config';
import { UsageError } from './errors';
import { MAX_SHARDS } from '../dataplane/shard';

export function parseHostPort(text: string): { host: string; port: number } {
  const m = /^(\[[^\]]+\]|[^:]+):(\d{1,5})$/.exec(text);
  const port = m ? Number(m[2]) : NaN;
  if (!m || !(port >= 0 && port <= 65535)) throw new UsageError(`--metrics wants HOST:PORT (e.g. 127.0.0.1:9464), got ${JSON.stringify(text)}`);
  return { host: m[1].replace(/^\[|\]$/g, ''), port };
}

/** Linux interface names: 1–15 bytes, no '/', ':' or white space (dev_valid_name in net/core/dev.c). */
function interfaceNameProblem(v: string): string | undefined {
  if (v.length === 0 || Buffer.byteLength(v) > 15) return 'it has 1 to 15 characters';
  if (v === '.' || v === '..' || /[/:\s]/.test(v)) return 'it has no "/", ":" or white space and is not "." or ".."';
  return undefined;
}

const interfaceName: SettingRule = { kind: 'string', describe: 'a Linux interface name', check: interfaceNameProblem };

export interface PortNames {
  uplink?: string;
  primary?: string;
  backup?: string;
}

/** What `run` takes from the file besides pipeline settings; its flags win over these. */
export interface RunFileSettings {
  ports: PortNames;
  metrics?: string;
  /** Data-plane workers (`run --workers`). */
  workers?: number;
}

/** Every key a config file may hold. */
export const CONFIG_FILE_RULES: Record<string, SettingRule> = {
  ports: { kind: 'section', keys: { uplink: interfaceName, primary: interfaceName, backup: interfaceName } satisfies Record<keyof PortNames, SettingRule> },
  metrics: {
    kind: 'string',
    describe: 'HOST:PORT on loopback (e.g. "127.0.0.1:9464")',
    check: (v) => {
      try {
        parseHostPort(v);
        return undefined;
      } catch {
        return 'not HOST:PORT';
      }
    },
  },
  workers: { kind: 'number', min: 1, max: MAX_SHARDS, integer: true, note: 'data-plane threads, as run --workers' },
  ...PIPELINE_SETTING_RULES,
};

export interface ConfigFile {
  pipeline: Partial<PipelineConfig>;
  run: RunFileSettings;
}

/** Checks a parsed config file: unknown keys and bad values are ConfigErrors. */
export function parseConfigObject(parsed: unknown): ConfigFile {
  checkSettings(parsed, CONFIG_FILE_RULES);
  const { ports, metrics, workers, ...pipeline } = parsed as { ports?: PortNames; metrics?: string; workers?: number } & Partial<PipelineConfig>;
  // Cross-setting checks (retry bounds…) happen here too, so that `config check` catches them.
  makePipelineConfig(pipeline);
  return { pipeline, run: { ports: { ...ports }, ...(metrics !== undefined ? { metrics } : {}), ...(workers !== undefined ? { workers } : {}) } };
}

export function readConfigFile(path: string): ConfigFile {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new UsageError(`cannot read config file ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    throw new UsageError(`config file ${path} is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new UsageError(`config file ${path} is not valid: it must hold one JSON object, not ${Array.isArray(parsed) ? 'an array' : JSON.stringify(parsed)}`);
  }
  try {
    return parseConfigObject(parsed);
  } catch (e) {
    if (e instanceof ConfigError) throw new ConfigError(e.setting, e.detail, path);
    throw e;
  }
}
