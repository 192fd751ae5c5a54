/**
 * The services a fleet test file runs on: its sandbox, a private redis-server and S3 test
 * server, and a prefix of its own in the bucket (created); and, for a test that plays the
 * scheduler's part itself, the clients it holds (a Redis connection, the shared store, the two
 * queues).
 */
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { randomBytes } from 'node:crypto';
import { FLATTEN_QUEUE, LAYER_QUEUE } from '../../libs/fleet/src/names.js';
import { SharedStore } from '../../libs/layer-engine/src/store/shared-store.js';
import { s3ConfigFrom } from '../../libs/layer-engine/src/store/s3-config.js';
import { ensureBucket, fleetEnv } from './fleet-api.js';
import { startRedis, type RedisServer } from './redis-server.js';
import { startS3Server, type S3Server } from './s3-server.js';
import { sandbox, type Sandbox } from './vmlb.js';

export interface FleetServices {
  sb: Sandbox;
  redis: RedisServer;
  s3: S3Server;
  /** `s3://vmlb-test/NAME-RANDOM`: this file's own prefix. */
  sharedUrl: string;
  /** The fleet environment (REDIS_URL, VMLB_SHARED, the S3 variables) and `env`'s extras. */
  env: Record<string, string>;
  /** Stops Redis and the S3 server, then removes the sandbox. */
  close(): Promise<void>;
}

export async function startFleetServices(name: string, o: { appendOnly?: boolean; env?: Record<string, string> } = {}): Promise<FleetServices> {
  const sb = await sandbox(name);
  const [redis, s3] = await Promise.all([startRedis({ appendOnly: o.appendOnly ?? false }), startS3Server()]);
  const sharedUrl = `s3://vmlb-test/${name}-${randomBytes(4).toString('hex')}`;
  const env = fleetEnv(redis.url, s3.env, sharedUrl, o.env);
  await ensureBucket(env);
  return {
    sb,
    redis,
    s3,
    sharedUrl,
    env,
    async close() {
      await Promise.all([redis.close(), s3.close()]);
      await sb.cleanup();
    },
  };
}

export interface FleetClients {
  redis: Redis;
  shared: SharedStore;
  layerQueue: Queue;
  flattenQueue: Queue;
  close(): Promise<void>;
}

/** A test may restart Redis: the clients then reconnect by themselves, their errors meanwhile expected. */
export function fleetClients(s: FleetServices): FleetClients {
  const redis = new Redis(s.redis.url, { maxRetriesPerRequest: null });
  redis.on('error', () => {});
  const shared = new SharedStore(s3ConfigFrom(s.sharedUrl, s.s3.env));
  const layerQueue = new Queue(LAYER_QUEUE, { connection: redis });
  const flattenQueue = new Queue(FLATTEN_QUEUE, { connection: redis });
  layerQueue.on('error', () => {});
  flattenQueue.on('error', () => {});
  return {
    redis,
    shared,
    layerQueue,
    flattenQueue,
    async close() {
      await layerQueue.close().catch(() => {});
      await flattenQueue.close().catch(() => {});
      redis.disconnect();
      shared.close();
    },
  };
}
