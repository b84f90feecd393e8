/**
 * Finds and loads one of the repository's N-API addons (binding.gyp builds
 * them into build/Release/), once. Modules that use them run from lib/io
 * (ts-jest) or dist/lib/io; the repository root is the first folder up that
 * holds binding.gyp.
 *
 * In:  the addon's file name, and how to say it is missing.
 * Out: the loaded addon, or the caller's error (listing where it looked and
 *      why the last attempt failed).
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';

function candidatePaths(file: string): string[] {
  const rel = join('build', 'Release', file);
  const found: string[] = [];
  for (let dir = __dirname, i = 0; i < 5; i++, dir = dirname(dir)) {
    if (existsSync(join(dir, 'binding.gyp')) || existsSync(join(dir, rel))) found.push(join(dir, rel));
  }
  return found.length ? found : [join(__dirname, '..', '..', rel)];
}

const loaded = new Map<string, unknown>();

export function loadNativeAddon<T>(file: string, notBuilt: (searched: readonly string[], cause: unknown) => Error): T {
  const hit = loaded.get(file);
  if (hit) return hit as T;
  const paths = candidatePaths(file);
  let cause: unknown = new Error('no such file');
  for (const path of paths) {
    if (!existsSync(path)) continue;
    try {
      const addon = require(path) as T;
      loaded.set(file, addon);
      return addon;
    } catch (err) {
      cause = err;
    }
  }
  throw notBuilt(paths, cause);
}
