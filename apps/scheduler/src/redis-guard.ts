import type { Redis } from 'ioredis';
import type { RedisTarget } from '@vmlb/fleet';
import { redisUnavailable } from './http-error.js';

/**
 * With sentinels, how long a request waits for a connection that is being made again (a failover
 * moves the primary: the sentinels name the new one within seconds) before its 503.
 */
const SENTINEL_RECONNECT_GRACE_MS = 5000;

/** How long a request that needs Redis waits for it: only sentinels make an outage this short. */
export function redisGraceMs(target: RedisTarget): number {
  return target.kind === 'sentinel' ? SENTINEL_RECONNECT_GRACE_MS : 0;
}

/**
 * Throws the 503 of redisUnavailable unless the connection is ready — at once, or after waiting
 * up to graceMs for a connection that is connecting or reconnecting to become ready.
 */
export async function requireRedis(redis: Redis, graceMs = 0): Promise<void> {
  if (redis.status === 'ready') return;
  if (graceMs > 0 && (redis.status === 'connecting' || redis.status === 'reconnecting' || redis.status === 'connect')) {
    const ready = await new Promise<boolean>((resolve) => {
      const done = (ok: boolean) => {
        clearTimeout(timer);
        redis.off('ready', onReady);
        resolve(ok);
      };
      const onReady = () => done(true);
      const timer = setTimeout(() => done(false), graceMs);
      redis.on('ready', onReady);
    });
    if (ready) return;
  }
  throw redisUnavailable(`connection ${redis.status}`);
}
