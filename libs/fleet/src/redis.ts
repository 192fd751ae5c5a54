import { Redis, type RedisOptions } from 'ioredis';
import type { RedisTarget } from './redis-target.js';

/**
 * A Redis connection as BullMQ wants it (`maxRetriesPerRequest: null`: commands wait for a
 * reconnect instead of failing, so a Redis restart or failover pauses the fleet rather than
 * failing jobs). BullMQ duplicates it for its blocking connections (`duplicate()` keeps these
 * options, the sentinels' too).
 *
 * A string is a Redis URL, as before. With sentinels (REDIS_SENTINELS), ioredis asks them for the
 * primary of the master group on every (re)connect and checks that the node it reached says
 * `role:master`; after a failover:
 * - a connection to the dead primary drops, and its reconnects ask the sentinels again until
 *   they name the promoted replica (at most 0.5 s apart: a failover takes 2-3 s here, and the
 *   default backoff's steps of up to 2 s would add as much again);
 * - a connection still open to a demoted primary (it came back, or a sentinel-driven switch with
 *   the old primary alive) gets READONLY on its next write: reconnectOnError reconnects and sends
 *   the command again (2), which is safe, as a node that refuses a write has done nothing of it;
 * - a connection blocked on a demoted primary (BullMQ's BZPOPMIN) is unblocked by that node when
 *   it turns replica (UNBLOCKED), and its next pop is a write: READONLY, as above.
 * Not ioredis' `failoverDetector` (+switch-master subscriptions that drop the link at once): in
 * ioredis 6.0.0 a switch announced while the connection is already reconnecting (its primary was
 * killed) aborts that reconnect with "Connection is closed" thrown out of the event loop, which
 * ends the process (seen in bench/sentinel.ts, the second failover of three).
 */
export function redisConnection(target: RedisTarget | string, name: string): Redis {
  const common: RedisOptions = { maxRetriesPerRequest: null, connectionName: name, enableReadyCheck: true };
  if (typeof target === 'string') return new Redis(target, common);
  if (target.kind === 'url') return new Redis(target.url, { ...common, username: target.username, password: target.password });
  return new Redis({
    ...common,
    sentinels: target.sentinels,
    name: target.name,
    role: 'master',
    username: target.username,
    password: target.password,
    db: target.db,
    sentinelUsername: target.sentinelUsername,
    sentinelPassword: target.sentinelPassword,
    retryStrategy: (times) => Math.min(50 + times * 50, 500),
    reconnectOnError: (err) => (err.message.startsWith('READONLY') ? 2 : false),
  });
}
