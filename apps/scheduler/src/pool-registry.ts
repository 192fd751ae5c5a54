import { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import type { S3Config } from '@vmlb/layer-engine';
import { DEFAULT_POOL, PoolStores, flattenQueueOf, layerQueueOf } from '@vmlb/fleet';
import type { Teams } from './teams.js';

export interface PoolQueues {
  layers: Queue;
  flatten: Queue;
}

/**
 * The scheduler's side of each pool (see libs/fleet/src/pools.ts): its view of the shared store
 * (its namespace, then the pools it trusts for reading, as the teams file says now) and its two
 * queues. Made on first use and kept; a reloaded teams file that changes a pool's `reads`
 * gets a new view.
 */
export class PoolRegistry {
  private readonly views = new Map<string, { reads: string; view: PoolStores }>();
  private readonly queueMap = new Map<string, PoolQueues>();

  constructor(
    private readonly shared: S3Config,
    private readonly teams: Teams,
    private readonly redis: Redis,
  ) {}

  /** The pool's view of the shared store. */
  view(pool: string = DEFAULT_POOL): PoolStores {
    const reads = this.teams.pool(pool).reads;
    const cached = this.views.get(pool);
    if (cached && cached.reads === reads.join(',')) return cached.view;
    cached?.view.close();
    const view = new PoolStores(pool, this.shared, reads);
    this.views.set(pool, { reads: reads.join(','), view });
    return view;
  }

  queues(pool: string = DEFAULT_POOL): PoolQueues {
    let q = this.queueMap.get(pool);
    if (!q) {
      q = { layers: new Queue(layerQueueOf(pool), { connection: this.redis }), flatten: new Queue(flattenQueueOf(pool), { connection: this.redis }) };
      // A queue passes on its connection's errors (each reconnect attempt while Redis is down or
      // failing over); without a listener BullMQ console.errors them. The scheduler logs the
      // outage once, from the connection itself.
      for (const queue of [q.layers, q.flatten]) queue.on('error', () => undefined);
      this.queueMap.set(pool, q);
    }
    return q;
  }

  /** Every pool of the teams file (and any with queues made since), with its queues. */
  all(): Array<{ pool: string; queues: PoolQueues }> {
    const names = new Set([...this.teams.pools.map((p) => p.name), ...this.queueMap.keys()]);
    return [...names].sort().map((pool) => ({ pool, queues: this.queues(pool) }));
  }

  async close(): Promise<void> {
    for (const q of this.queueMap.values()) {
      await q.layers.close();
      await q.flatten.close();
    }
    for (const v of this.views.values()) v.view.close();
  }
}
