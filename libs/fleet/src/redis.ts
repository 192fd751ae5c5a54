import { Redis } from 'ioredis';

/**
 * A Redis connection as BullMQ wants it (`maxRetriesPerRequest: null`: commands wait for a
 * reconnect instead of failing, so a Redis restart pauses the fleet rather than failing jobs).
 */
export function redisConnection(url: string, name: string): Redis {
  return new Redis(url, { maxRetriesPerRequest: null, connectionName: name, enableReadyCheck: true });
}
