import { Option } from 'commander';
import { readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { VmlbError } from '@vmlb/layer-engine';

/**
 * Which scheduler the fleet commands talk to, and with which token: --server/--token, else
 * VMLB_SERVER / VMLB_TOKEN, else ~/.config/vmlb/config.json ({ "server": "…", "token": "…" }).
 */

export interface Endpoint {
  server: string;
  token: string;
}

export interface ConnOpts {
  server?: string;
  token?: string;
}

export function configFile(env: NodeJS.ProcessEnv = process.env): string {
  const base = env.XDG_CONFIG_HOME || path.join(os.homedir(), '.config');
  return path.join(base, 'vmlb', 'config.json');
}

export async function endpointFrom(o: ConnOpts): Promise<Endpoint> {
  let file: { server?: unknown; token?: unknown } = {};
  const where = configFile();
  if (!o.server || !o.token) {
    try {
      file = JSON.parse(await readFile(where, 'utf8')) as typeof file;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw new VmlbError('FLEET_USAGE', `cannot read ${where}: ${(e as Error).message}`);
    }
  }
  // An empty variable counts as unset, so the config file still applies.
  const server = o.server || (typeof file.server === 'string' ? file.server : undefined);
  const token = o.token || (typeof file.token === 'string' ? file.token : undefined);
  const missing = [!server && '--server (or VMLB_SERVER)', !token && '--token (or VMLB_TOKEN)'].filter(Boolean);
  if (missing.length > 0) {
    throw new VmlbError('FLEET_USAGE', `which scheduler? give ${missing.join(' and ')}, or put { "server": "…", "token": "…" } in ${where} (\`npm run fleet\` prints both for a local fleet)`);
  }
  let url: URL;
  try {
    url = new URL(server!);
  } catch {
    throw new VmlbError('FLEET_USAGE', `--server ${server}: not a URL (e.g. http://127.0.0.1:8080)`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new VmlbError('FLEET_USAGE', `--server ${server}: must be an http:// or https:// URL`);
  return { server: url.href.replace(/\/+$/, ''), token: token! };
}
export const serverOption = () => new Option('--server <url>', 'the scheduler, e.g. http://127.0.0.1:8080').env('VMLB_SERVER');
export const tokenOption = () => new Option('--token <token>', 'your team\'s token (prefer the variable: a flag shows in ps)').env('VMLB_TOKEN');
