import { z } from 'zod';
import { POOL_NAME } from './pools.js';
import { VmlbError, parseDuration, parseSize, s3ConfigFrom, type S3Config } from '@vmlb/layer-engine';
import { redisEnvSchema, redisTargetOf, type RedisTarget } from './redis-target.js';

/**
 * The fleet's configuration: the environment → one zod schema → one typed FleetConfig.
 * Every problem is reported at once, each naming its variable (VmlbError `FLEET_CONFIG`).
 * Each app reads only the parts it needs (`needs`), so a worker does not ask for the
 * scheduler's port and the other way round.
 *
 *   REDIS_URL               one Redis: redis[s]://[USER:PASSWORD@]HOST:PORT[/DB]
 *                           @default redis://127.0.0.1:6379
 *   REDIS_SENTINELS         or a Sentinel-managed primary with replicas: HOST:PORT,HOST:PORT,…
 *                           (the sentinels; when set, REDIS_URL's host and port are not used,
 *                           only its user, password and /DB if it has them)
 *   REDIS_SENTINEL_NAME     the master group name the sentinels monitor   @default vmlb
 *   REDIS_USERNAME          the data nodes' ACL user (not as well as one in REDIS_URL)
 *   REDIS_PASSWORD          the data nodes' password (not as well as one in REDIS_URL)
 *   REDIS_SENTINEL_USERNAME the sentinels' own ACL user, if they have one
 *   REDIS_SENTINEL_PASSWORD the sentinels' own password (their requirepass), if any
 *                           (redis-target.ts; connections: redis.ts)
 *   VMLB_SHARED             s3://BUCKET/PREFIX: the shared store (with S3_ENDPOINT, S3_ACCESS_KEY,
 *                           S3_SECRET_KEY, S3_REGION; see layer-engine's s3-config.ts)
 *   VMLB_STORE              a worker's local store (the engine's cache)   @default ~/.cache/vmlb
 *   VMLB_STORE_CAP          its size cap                                   @default 20G
 *   VMLB_SCHEDULER_HOST     @default 127.0.0.1
 *   VMLB_SCHEDULER_PORT     @default 8080
 *   VMLB_TEAMS_FILE         JSON [{ team, tokenSha256, admin? }]
 *   VMLB_DATABASE_URL       postgres://USER:PASSWORD@HOST:PORT/DATABASE: the build history
 *                           (the scheduler's; PostgreSQL, apps/scheduler/src/build-history.ts)
 *   VMLB_WORKER_SLOTS       @default free block devices (nbd) or 4 (fuse)
 *   VMLB_WORKER_ID          @default <hostname>-<pid>
 *   VMLB_WORKER_POOL        the pool whose jobs a worker takes (pools.ts)  @default default
 *   VMLB_TEAM_MAX_RUNNING   running layer jobs per team                     @default 4
 *   VMLB_MAX_UPLOAD         largest accepted project upload                @default 64M
 *   VMLB_UPLOAD_TIMEOUT     a request (an upload) must arrive whole within this   @default 10m
 *   VMLB_UPLOAD_IDLE        an upload that sends nothing for this long is dropped  @default 30s
 *   VMLB_BACKEND            auto | fuse | nbd                               @default auto
 */
export interface FleetConfig {
  /** Where Redis is: one server, or the sentinels of a primary with replicas (redis-target.ts). */
  redis: RedisTarget;
  shared: S3Config;
  store?: string;
  storeCapBytes: number;
  schedulerHost: string;
  schedulerPort: number;
  teamsFile?: string;
  /** The build history's PostgreSQL (VMLB_DATABASE_URL); the scheduler needs it. */
  databaseUrl?: string;
  workerSlots?: number;
  workerId?: string;
  workerPool: string;
  teamMaxRunning: number;
  maxUploadBytes: number;
  /** Milliseconds a request may take to arrive whole (408 past it). */
  uploadTimeoutMs: number;
  /** Milliseconds an upload may send nothing (408 past it). */
  uploadIdleMs: number;
  backend: 'auto' | 'fuse' | 'nbd';
}

/** A variable parsed by `parse` (a size, a duration), its error reported under its name. */
const parsed = (name: string, dflt: string, parse: (v: string) => number) =>
  z
    .string()
    .default(dflt)
    .transform((v, ctx) => {
      try {
        return parse(v);
      } catch (e) {
        ctx.addIssue({ code: 'custom', message: `${name}: ${(e as Error).message}` });
        return z.NEVER;
      }
    });
const size = (name: string, dflt: string) => parsed(name, dflt, parseSize);
const duration = (name: string, dflt: string) => parsed(name, dflt, parseDuration);

const positiveInt = (name: string) =>
  z
    .string()
    .regex(/^\d+$/, `${name} must be a whole number`)
    .transform(Number)
    .refine((n) => n > 0, `${name} must be at least 1`);

const schema = z.object({
  VMLB_STORE: z.string().optional(),
  VMLB_STORE_CAP: size('VMLB_STORE_CAP', '20G'),
  VMLB_SCHEDULER_HOST: z.string().default('127.0.0.1'),
  VMLB_SCHEDULER_PORT: z.string().default('8080').pipe(positiveInt('VMLB_SCHEDULER_PORT')),
  VMLB_TEAMS_FILE: z.string().optional(),
  VMLB_DATABASE_URL: z
    .string()
    .optional()
    .refine((u) => u === undefined || /^postgres(ql)?:\/\/[^/]+\/[^/?]+/.test(u), 'VMLB_DATABASE_URL must be a postgres://USER:PASSWORD@HOST:PORT/DATABASE URL'),
  VMLB_WORKER_SLOTS: positiveInt('VMLB_WORKER_SLOTS').optional(),
  VMLB_WORKER_ID: z.string().optional(),
  VMLB_WORKER_POOL: z.string().default('default').refine((p) => POOL_NAME.test(p), 'VMLB_WORKER_POOL must be a pool name: letters, digits, . _ - (up to 63)'),
  VMLB_TEAM_MAX_RUNNING: z.string().default('4').pipe(positiveInt('VMLB_TEAM_MAX_RUNNING')),
  VMLB_MAX_UPLOAD: size('VMLB_MAX_UPLOAD', '64M'),
  VMLB_UPLOAD_TIMEOUT: duration('VMLB_UPLOAD_TIMEOUT', '10m'),
  VMLB_UPLOAD_IDLE: duration('VMLB_UPLOAD_IDLE', '30s'),
  VMLB_BACKEND: z.enum(['auto', 'fuse', 'nbd']).default('auto'),
});

/** The Redis variables, parsed on their own so that how they go together is checked even when another variable is wrong. */
const redisSchema = z.object(redisEnvSchema);

export function fleetConfigFrom(env: NodeJS.ProcessEnv = process.env, needs: { teams?: boolean; database?: boolean } = {}): FleetConfig {
  const problems: string[] = [];
  const parsed = schema.safeParse(env);
  const parsedRedis = redisSchema.safeParse(env);
  for (const result of [parsedRedis, parsed]) {
    if (result.success) continue;
    for (const issue of result.error.issues) {
      const name = String(issue.path[0] ?? '');
      problems.push(issue.message.startsWith(name) ? issue.message : `${name}: ${issue.message}`);
    }
  }
  const redis = parsedRedis.success ? redisTargetOf(parsedRedis.data, problems) : undefined;
  let shared: S3Config | undefined;
  try {
    shared = s3ConfigFrom(env.VMLB_SHARED, env, { urlName: 'VMLB_SHARED' });
  } catch (e) {
    problems.push((e as Error).message);
  }
  if (needs.teams && !env.VMLB_TEAMS_FILE) problems.push('VMLB_TEAMS_FILE: not set (a JSON file of teams and token hashes)');
  if (needs.database && !env.VMLB_DATABASE_URL) problems.push('VMLB_DATABASE_URL: not set (the PostgreSQL database of the build history: postgres://USER:PASSWORD@HOST:PORT/DATABASE)');
  if (problems.length > 0 || !parsed.success || !shared || !redis) {
    throw new VmlbError('FLEET_CONFIG', `the fleet configuration has ${problems.length} problem${problems.length === 1 ? '' : 's'}:\n  ${problems.join('\n  ')}`);
  }
  const e = parsed.data;
  return {
    redis,
    shared,
    store: e.VMLB_STORE,
    storeCapBytes: e.VMLB_STORE_CAP,
    schedulerHost: e.VMLB_SCHEDULER_HOST,
    schedulerPort: e.VMLB_SCHEDULER_PORT,
    teamsFile: e.VMLB_TEAMS_FILE,
    databaseUrl: e.VMLB_DATABASE_URL,
    workerSlots: e.VMLB_WORKER_SLOTS,
    workerId: e.VMLB_WORKER_ID,
    workerPool: e.VMLB_WORKER_POOL,
    teamMaxRunning: e.VMLB_TEAM_MAX_RUNNING,
    maxUploadBytes: e.VMLB_MAX_UPLOAD,
    uploadTimeoutMs: e.VMLB_UPLOAD_TIMEOUT,
    uploadIdleMs: e.VMLB_UPLOAD_IDLE,
    backend: e.VMLB_BACKEND,
  };
}
