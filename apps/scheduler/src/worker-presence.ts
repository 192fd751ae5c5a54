import type { Redis } from 'ioredis';
import { DEFAULT_POOL, listWorkers, type BuildState } from '@vmlb/fleet';
import { withTimeout } from './with-timeout.js';

/** What an unfinished build of a pool with no live worker says (the API's `warning`). */
export function noWorkerWarning(pool: string): string {
  return `no worker of pool ${pool} is live: the build waits until one registers`;
}

/** How long one look at the registrations serves (a list of 200 builds asks once). */
const FRESH_MS = 1000;
/** Past this, a slow Redis gives no warning rather than a slow answer. */
const ASK_WITHIN_MS = 500;

/**
 * Which pools have a live worker that takes jobs (registered, heartbeat on, not stopping), for
 * the warning an unfinished build carries in the API's answers while its pool has none: in
 * `POST /v1/builds` (vmlb submit prints it), `GET /v1/builds` and `GET /v1/builds/:id` (the
 * dashboard's list and build page show it until a worker registers). Worked out per answer and
 * never stored: it is about now, not about the build. Redis down or slow: no warning.
 */
export class WorkerPresence {
  private last: { at: number; pools: Promise<Set<string> | null> } | undefined;

  constructor(private readonly redis: Redis) {}

  private livePools(): Promise<Set<string> | null> {
    if (this.last && Date.now() - this.last.at < FRESH_MS) return this.last.pools;
    const ask = async (): Promise<Set<string> | null> => {
      if (this.redis.status !== 'ready') return null;
      try {
        const workers = await withTimeout(listWorkers(this.redis), ASK_WITHIN_MS);
        return new Set(workers.filter((w) => w.state === 'running').map((w) => w.pool ?? DEFAULT_POOL));
      } catch {
        return null;
      }
    };
    this.last = { at: Date.now(), pools: ask() };
    return this.last.pools;
  }

  /** Each item as it is, with `warning` for an unfinished build of a pool no live worker serves. */
  async annotate<T extends { state: BuildState; pool?: string | undefined }>(items: T[]): Promise<Array<T & { warning?: string }>> {
    if (!items.some((r) => r.state === 'queued' || r.state === 'building')) return items;
    const live = await this.livePools();
    if (!live) return items;
    return items.map((r) => {
      const pool = r.pool ?? DEFAULT_POOL;
      return (r.state === 'queued' || r.state === 'building') && !live.has(pool) ? { ...r, warning: noWorkerWarning(pool) } : r;
    });
  }

  async one<T extends { state: BuildState; pool?: string | undefined }>(r: T): Promise<T & { warning?: string }> {
    return (await this.annotate([r]))[0]!;
  }
}
