import os from 'node:os';
import { z } from 'zod';
import { LOG_MAX_DEFAULT, VmlbError, logMaxFromEnv, parseDuration, parseSize, proxyEnv } from '@vmlb/layer-engine';
import { fleetConfigFrom, redisHosts, type FleetConfig } from '@vmlb/fleet';

/**
 * A worker's own settings, on top of the fleet configuration (libs/fleet/src/config.ts), from
 * the environment in one pass: every problem of both is reported at once, naming the variable.
 *
 *   VMLB_WORKER_GRACE           how long SIGTERM waits for running jobs before handing them back
 *                               @default 5m
 *   VMLB_WORKER_LOCK_MS         BullMQ lock duration (renewed at half of it while a job runs)
 *                               @default 30000
 *   VMLB_WORKER_STALLED_MS      how often workers look for jobs whose worker died   @default 5000
 *   VMLB_WORKER_METRICS_PORT    serve Prometheus metrics on this port (0: do not)   @default 0
 *   VMLB_WORKER_METRICS_HOST    @default 0.0.0.0
 *   VMLB_SANDBOX_DENY           addresses no layer may reach besides those always refused (the
 *                               host's own, link-local, the fleet's Redis, S3 and scheduler):
 *                               host names, IP addresses or CIDR ranges, comma-separated
 *                               (e.g. the site's internal networks)   @default none
 *   VMLB_SANDBOX                must not be 0: a worker runs every layer sandboxed
 *   VMLB_LOG_MAX                the most of a layer's log kept (its tail) in the local and the
 *                               shared store, a size (64M, 1G)   @default 64M
 *   VMLB_SHARED_COMPRESSION     how layers are pushed: zstd, zstd:LEVEL or none   @default zstd
 *   http_proxy, https_proxy, no_proxy (and upper case)   passed to layer scripts as they are
 *   VMLB_AFFINITY_SMALL_CHAIN   a layer job whose missing parent chain is at most this size (in
 *                               the shared store) builds where it lands instead of waiting for a
 *                               worker that holds the chain (chain-affinity.ts); 0: always wait
 *                               @default 32M
 *
 * A SIGKILLed worker's job runs again after its lock lapses: within LOCK_MS + STALLED_MS.
 */
export interface WorkerSettings {
  /** @default <hostname>-<pid> */
  id: string;
  graceMs: number;
  lockDurationMs: number;
  stalledIntervalMs: number;
  /** Stalls a job survives before it fails (a worker killed twice under the same job). @default 3 */
  maxStalledCount: number;
  metricsPort: number;
  metricsHost: string;
  /** VMLB_SANDBOX_DENY, split. */
  sandboxDeny: string[];
  /** VMLB_AFFINITY_SMALL_CHAIN in bytes. */
  smallChainBytes: number;
  /** VMLB_LOG_MAX in bytes. */
  logMax: number;
  /** The host's proxy settings, which layer scripts get (proxyEnv). */
  passEnv: Record<string, string>;
  /** VMLB_SHARED_COMPRESSION as it is (checked when the worker's stores are made). @default zstd */
  sharedCompression?: string;
}

export const DEFAULT_WORKER_SETTINGS = {
  graceMs: 5 * 60_000,
  lockDurationMs: 30_000,
  stalledIntervalMs: 5000,
  maxStalledCount: 3,
  metricsPort: 0,
  metricsHost: '0.0.0.0',
  sandboxDeny: [] as string[],
  smallChainBytes: 32 * 1024 * 1024,
  logMax: LOG_MAX_DEFAULT,
  passEnv: {} as Record<string, string>,
} as const;

const duration = (name: string) =>
  z.string().transform((v, ctx) => {
    try {
      return parseDuration(v);
    } catch (e) {
      ctx.addIssue({ code: 'custom', message: `${name}: ${(e as Error).message}` });
      return z.NEVER;
    }
  });
const ms = (name: string, min: number) =>
  z
    .string()
    .regex(/^\d+$/, `${name} must be a whole number of milliseconds`)
    .transform(Number)
    .refine((n) => n >= min, `${name} must be at least ${min}`);

const schema = z.object({
  VMLB_WORKER_GRACE: duration('VMLB_WORKER_GRACE').optional(),
  VMLB_WORKER_LOCK_MS: ms('VMLB_WORKER_LOCK_MS', 1000).optional(),
  VMLB_WORKER_STALLED_MS: ms('VMLB_WORKER_STALLED_MS', 500).optional(),
  VMLB_WORKER_METRICS_PORT: z
    .string()
    .regex(/^\d+$/, 'VMLB_WORKER_METRICS_PORT must be a port number')
    .transform(Number)
    .refine((n) => n < 65536, 'VMLB_WORKER_METRICS_PORT must be below 65536')
    .optional(),
  VMLB_WORKER_METRICS_HOST: z.string().optional(),
  VMLB_SANDBOX_DENY: z
    .string()
    .optional()
    .transform((v) => (v ?? '').split(',').map((x) => x.trim()).filter(Boolean)),
  VMLB_LOG_MAX: z
    .string()
    .optional()
    .superRefine((v, ctx) => {
      try {
        logMaxFromEnv({ VMLB_LOG_MAX: v });
      } catch (e) {
        ctx.addIssue({ code: 'custom', message: (e as Error).message });
      }
    }),
  VMLB_AFFINITY_SMALL_CHAIN: z
    .string()
    .transform((v, ctx) => {
      try {
        return parseSize(v);
      } catch (e) {
        ctx.addIssue({ code: 'custom', message: `VMLB_AFFINITY_SMALL_CHAIN: ${(e as Error).message}` });
        return z.NEVER;
      }
    })
    .optional(),
  VMLB_SANDBOX: z
    .string()
    .optional()
    .refine((v) => v === undefined || v === '' || v === '1', {
      message: 'VMLB_SANDBOX: a worker runs every layer sandboxed (the layers are other teams\' code); VMLB_SANDBOX=0 and --no-sandbox are for local debugging with vmlb build only',
    }),
});

export function workerSettingsFrom(env: NodeJS.ProcessEnv = process.env): { fleet: FleetConfig; settings: WorkerSettings } {
  const problems: string[] = [];
  let fleet: FleetConfig | undefined;
  try {
    fleet = fleetConfigFrom(env);
  } catch (e) {
    // One problem a line, under headers like "… has 2 problems:" (the S3 part nests one).
    const msg = (e as Error).message;
    const lines = msg.split('\n').map((l) => l.trim()).filter((l) => l && !/\d+ problems?\)?:$/.test(l));
    problems.push(...(lines.length ? lines : [msg]));
  }
  const parsed = schema.safeParse(env);
  if (!parsed.success) {
    for (const issue of parsed.error.issues) {
      const name = String(issue.path[0] ?? '');
      problems.push(issue.message.startsWith(name) ? issue.message : `${name}: ${issue.message}`);
    }
  }
  if (problems.length > 0 || !fleet || !parsed.success) {
    throw new VmlbError('FLEET_CONFIG', `the worker configuration has ${problems.length} problem${problems.length === 1 ? '' : 's'}:\n  ${problems.join('\n  ')}`);
  }
  const e = parsed.data;
  return {
    fleet,
    settings: {
      id: fleet.workerId ?? `${os.hostname()}-${process.pid}`,
      graceMs: e.VMLB_WORKER_GRACE ?? DEFAULT_WORKER_SETTINGS.graceMs,
      lockDurationMs: e.VMLB_WORKER_LOCK_MS ?? DEFAULT_WORKER_SETTINGS.lockDurationMs,
      stalledIntervalMs: e.VMLB_WORKER_STALLED_MS ?? DEFAULT_WORKER_SETTINGS.stalledIntervalMs,
      maxStalledCount: DEFAULT_WORKER_SETTINGS.maxStalledCount,
      metricsPort: e.VMLB_WORKER_METRICS_PORT ?? DEFAULT_WORKER_SETTINGS.metricsPort,
      metricsHost: e.VMLB_WORKER_METRICS_HOST ?? DEFAULT_WORKER_SETTINGS.metricsHost,
      sandboxDeny: e.VMLB_SANDBOX_DENY,
      smallChainBytes: e.VMLB_AFFINITY_SMALL_CHAIN ?? DEFAULT_WORKER_SETTINGS.smallChainBytes,
      logMax: logMaxFromEnv(env),
      passEnv: proxyEnv(env),
      sharedCompression: env.VMLB_SHARED_COMPRESSION,
    },
  };
}

/**
 * What no layer on this worker may reach, besides what the sandbox always refuses (the host's
 * own addresses, link-local ones): the fleet's services — Redis, the shared store, the
 * scheduler — and VMLB_SANDBOX_DENY. Wildcard listen addresses name no host.
 */
export function fleetDenyList(config: FleetConfig, extra: readonly string[]): string[] {
  // With sentinels, each of them (the data nodes they name are found at run time: list their
  // networks in VMLB_SANDBOX_DENY).
  const hosts = [...redisHosts(config.redis), config.shared.host, config.schedulerHost];
  const named = hosts.map((h) => h.replace(/^\[|\]$/g, '')).filter((h) => h && h !== '0.0.0.0' && h !== '::');
  return [...new Set([...named, ...extra])];
}
