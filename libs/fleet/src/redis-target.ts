/**
 * Where the fleet's Redis is: one server (REDIS_URL), or a Sentinel-managed primary with replicas
 * (REDIS_SENTINELS), parsed from the environment into one `RedisTarget`. Pure: config.ts reports
 * the problems with the rest of the configuration, redis.ts makes the connections.
 *
 *   REDIS_URL                 redis[s]://[USER:PASSWORD@]HOST:PORT[/DB]   @default redis://127.0.0.1:6379
 *   REDIS_SENTINELS           HOST:PORT,HOST:PORT,…: the sentinels to ask for the primary; when set,
 *                             REDIS_URL's host and port are not used, only its user, password and
 *                             database number, if it has them (so a part's own credentials stay in
 *                             one place when a deployment moves to sentinels)
 *   REDIS_SENTINEL_NAME       the master group name the sentinels monitor         @default vmlb
 *   REDIS_USERNAME            the data nodes' ACL user (not both this and a user in REDIS_URL)
 *   REDIS_PASSWORD            the data nodes' password (not both this and a password in REDIS_URL)
 *   REDIS_SENTINEL_USERNAME   the sentinels' own ACL user, if they have ACL users
 *   REDIS_SENTINEL_PASSWORD   the sentinels' own password (their `requirepass`), if any
 */
import { z } from 'zod';

export interface SentinelAddress {
  host: string;
  port: number;
}

export type RedisTarget =
  | {
      kind: 'url';
      url: string;
      /** REDIS_USERNAME / REDIS_PASSWORD, when the URL carries none. */
      username?: string;
      password?: string;
    }
  | {
      kind: 'sentinel';
      sentinels: SentinelAddress[];
      /** The master group name (`sentinel monitor NAME …`). */
      name: string;
      username?: string;
      password?: string;
      /** The database number (REDIS_URL's /DB). */
      db?: number;
      sentinelUsername?: string;
      sentinelPassword?: string;
    };

export const DEFAULT_REDIS_URL = 'redis://127.0.0.1:6379';
export const DEFAULT_SENTINEL_NAME = 'vmlb';

/** Sentinel's own rule for a master name: letters, digits and . _ - */
const MASTER_NAME = /^[A-Za-z0-9._-]{1,64}$/;

/** `host:port`, `[v6]:port`, or null. */
function sentinelAddress(entry: string): SentinelAddress | null {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([^\s:[\]/@]+)):(\d{1,5})$/.exec(entry);
  const port = m ? Number(m[3]) : NaN;
  return m && port >= 1 && port <= 65535 ? { host: m[1] ?? m[2]!, port } : null;
}

const optional = z
  .string()
  .optional()
  .transform((v) => (v === '' ? undefined : v));

/**
 * The Redis variables' part of the fleet's zod schema (config.ts merges it): each variable on
 * its own, every bad sentinel entry reported under REDIS_SENTINELS. `redisTargetOf` then checks
 * how they go together.
 */
export const redisEnvSchema = {
  REDIS_URL: optional,
  REDIS_SENTINELS: optional.transform((v, ctx): SentinelAddress[] | undefined => {
    if (v === undefined) return undefined;
    const entries = v.split(',').map((s) => s.trim()).filter(Boolean);
    if (entries.length === 0) ctx.addIssue({ code: 'custom', message: 'REDIS_SENTINELS: names no sentinel (HOST:PORT,HOST:PORT,…)' });
    const found: SentinelAddress[] = [];
    for (const entry of entries) {
      const a = sentinelAddress(entry);
      if (a) found.push(a);
      else ctx.addIssue({ code: 'custom', message: `REDIS_SENTINELS: "${entry}" is not HOST:PORT (e.g. sentinel-1:26379; an IPv6 address in brackets)` });
    }
    return found;
  }),
  REDIS_SENTINEL_NAME: optional.refine((n) => n === undefined || MASTER_NAME.test(n), { message: 'REDIS_SENTINEL_NAME must be a master group name (letters, digits, . _ -, up to 64)' }),
  REDIS_USERNAME: optional,
  REDIS_PASSWORD: optional,
  REDIS_SENTINEL_USERNAME: optional,
  REDIS_SENTINEL_PASSWORD: optional,
};

type RedisEnv = { [K in keyof typeof redisEnvSchema]: z.output<(typeof redisEnvSchema)[K]> };

/**
 * The target the (parsed) Redis variables describe, checking how they go together; `problems`
 * gets one line per wrong variable, each starting with its name.
 */
export function redisTargetOf(e: RedisEnv, problems: string[]): RedisTarget {
  const { REDIS_USERNAME: username, REDIS_PASSWORD: password } = e;
  const sentinels = e.REDIS_SENTINELS;
  if (sentinels === undefined) {
    for (const n of ['REDIS_SENTINEL_NAME', 'REDIS_SENTINEL_USERNAME', 'REDIS_SENTINEL_PASSWORD'] as const) {
      if (e[n] !== undefined) problems.push(`${n}: set, but REDIS_SENTINELS is not (without sentinels, REDIS_URL names the one Redis)`);
    }
  }
  const url = e.REDIS_URL ?? (sentinels ? undefined : DEFAULT_REDIS_URL);
  let parsed: URL | undefined;
  if (url !== undefined) {
    try {
      parsed = new URL(url);
    } catch {
      /* reported below */
    }
    if (!parsed || !/^rediss?:$/.test(parsed.protocol) || !parsed.hostname) {
      problems.push('REDIS_URL must be a redis:// or rediss:// URL');
      parsed = undefined;
    }
  }
  if (password !== undefined && parsed?.password) problems.push('REDIS_PASSWORD: REDIS_URL has a password already (give it in one place)');
  if (username !== undefined && parsed?.username) problems.push('REDIS_USERNAME: REDIS_URL names a user already (give it in one place)');
  if (sentinels === undefined) return { kind: 'url', url: url!, username, password };

  // With sentinels: the URL's credentials and database, never its address.
  const db = parsed && parsed.pathname.length > 1 ? Number(parsed.pathname.slice(1)) : undefined;
  if (db !== undefined && !(Number.isInteger(db) && db >= 0)) problems.push(`REDIS_URL: "${parsed!.pathname}" is not a database number`);
  return {
    kind: 'sentinel',
    sentinels,
    name: e.REDIS_SENTINEL_NAME ?? DEFAULT_SENTINEL_NAME,
    username: username ?? (parsed?.username ? decodeURIComponent(parsed.username) : undefined),
    password: password ?? (parsed?.password ? decodeURIComponent(parsed.password) : undefined),
    ...(db !== undefined ? { db } : {}),
    sentinelUsername: e.REDIS_SENTINEL_USERNAME,
    sentinelPassword: e.REDIS_SENTINEL_PASSWORD,
  };
}

/** The target for a log line or an error message: passwords masked. */
export function describeRedisTarget(t: RedisTarget): string {
  if (t.kind === 'url') {
    const masked = t.url.replace(/\/\/([^@/]*)@/, (_all, cred: string) => `//${cred.includes(':') ? `${cred.slice(0, cred.indexOf(':'))}:***` : '***'}@`);
    return t.password !== undefined ? `${masked} (password from REDIS_PASSWORD)` : masked;
  }
  const list = t.sentinels.map((s) => (s.host.includes(':') ? `[${s.host}]:${s.port}` : `${s.host}:${s.port}`)).join(',');
  const auth = [t.password !== undefined ? 'data nodes: password' : '', t.sentinelPassword !== undefined ? 'sentinels: password' : ''].filter(Boolean);
  return `sentinels ${list}, master ${t.name}${t.username ? `, user ${t.username}` : ''}${auth.length ? ` (${auth.join(', ')})` : ''}`;
}

/** The host names of a target (the URL's host, or every sentinel's), e.g. for a deny list. */
export function redisHosts(t: RedisTarget): string[] {
  if (t.kind === 'sentinel') return t.sentinels.map((s) => s.host);
  try {
    return [new URL(t.url).hostname];
  } catch {
    return [];
  }
}
