import os from 'node:os';
import path from 'node:path';

/**
 * The default store: $VMLB_STORE, else $XDG_CACHE_HOME/vmlb, else ~/.cache/vmlb. The apps
 * call it with their environment (the engine reads none itself).
 */
export function defaultStoreDir(env: { VMLB_STORE?: string; XDG_CACHE_HOME?: string }): string {
  if (env.VMLB_STORE) return path.resolve(env.VMLB_STORE);
  const cache = env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache');
  return path.join(cache, 'vmlb');
}
