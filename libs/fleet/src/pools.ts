/**
 * Pools: the fleet's trust domains. Each team belongs to one pool (the teams file; `default`
 * when it names none); a pool has its own workers (VMLB_WORKER_POOL), its own queues, its own
 * claims and its own namespace in the shared store. Layers are shared inside a pool, never
 * across, except that a pool may name pools it trusts for reading: their layers count as hits
 * for it (a platform team's bases), and it never writes to them.
 *
 * Namespaces, relative to the shared store's prefix (VMLB_SHARED):
 *
 *   layers/ images/ projects/ uses/          pool `default` — the store as it was before pools,
 *                                            so a store written then is pool default's as is
 *   pools/<pool>/layers/ …/images/ …         every other pool, the same layout inside
 *   builds/ teams/                           build records and team indexes (the scheduler's)
 *
 * Queues and Redis keys of pool `default` keep their names from before pools too (jobs queued
 * by an older scheduler run on default's workers); other pools' names carry the pool.
 */
import { SharedStore, type CallOptions, type LayerManifest, type S3Config, type SharedStoreOptions } from '@vmlb/layer-engine';

export const DEFAULT_POOL = 'default';

/** Pool names go into object names, queue names and Redis keys: plain, and no ':' (BullMQ). */
export const POOL_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

/** The prefix of a pool's namespace inside the shared store's prefix. */
export function poolPrefix(basePrefix: string, pool: string): string {
  return pool === DEFAULT_POOL ? basePrefix : `${basePrefix}pools/${pool}/`;
}

/** The shared store's configuration narrowed to one pool's namespace. */
export function poolS3Config(base: S3Config, pool: string): S3Config {
  const prefix = poolPrefix(base.prefix, pool);
  return { ...base, prefix, url: `s3://${base.bucket}${prefix ? `/${prefix.replace(/\/$/, '')}` : ''}` };
}

/** A path of a pool's namespace relative to the shared store's prefix (for the scheduler's root-wide ObjectStore). */
export function poolPath(pool: string, rel: string): string {
  return pool === DEFAULT_POOL ? rel : `pools/${pool}/${rel}`;
}

/** Where a layer was found: the pool's own namespace or one it trusts. */
export interface PoolHit {
  manifest: LayerManifest;
  /** The pool whose namespace holds it. */
  pool: string;
  store: SharedStore;
}

/**
 * One pool's view of the shared store: its own namespace (read and write) and the pools it
 * trusts (read only), looked up in that order. `getManifest` makes it usable wherever the
 * engine looks layers up (planBuild).
 */
export class PoolStores {
  readonly own: SharedStore;
  private readonly trustedStores: Array<{ pool: string; store: SharedStore }>;

  constructor(
    readonly pool: string,
    base: S3Config,
    readonly reads: readonly string[] = [],
    opts: SharedStoreOptions = {},
  ) {
    this.own = new SharedStore(poolS3Config(base, pool), opts);
    this.trustedStores = reads.filter((r) => r !== pool).map((r) => ({ pool: r, store: new SharedStore(poolS3Config(base, r), opts) }));
  }

  get trusted(): ReadonlyArray<{ pool: string; store: SharedStore }> {
    return this.trustedStores;
  }

  /** The layer in the pool's own namespace, else in the first trusted pool that has it. */
  async find(key: string, o: CallOptions = {}): Promise<PoolHit | null> {
    const mine = await this.own.getManifest(key, o);
    if (mine) return { manifest: mine, pool: this.pool, store: this.own };
    for (const t of this.trustedStores) {
      const m = await t.store.getManifest(key, o);
      if (m) return { manifest: m, pool: t.pool, store: t.store };
    }
    return null;
  }

  async getManifest(key: string, o: CallOptions = {}): Promise<LayerManifest | null> {
    return (await this.find(key, o))?.manifest ?? null;
  }

  close(): void {
    this.own.close();
    for (const t of this.trustedStores) t.store.close();
  }
}
