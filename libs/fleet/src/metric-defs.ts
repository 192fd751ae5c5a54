/**
 * Metrics that the scheduler and the workers both export, under one name (Prometheus sums them
 * across the two jobs): their definition, in one place (docs/metrics.md).
 */

/**
 * Every layer of every build is one lookup, counted once where it is settled: the scheduler
 * counts the hits it finds in the shared store at plan time, the worker that runs a layer's
 * job counts the rest when the job ends. `pool` is the pool the build runs in (its team's): a hit
 * found in a pool it trusts counts for the pool that used it.
 */
export const LAYER_CACHE_LOOKUPS = {
  name: 'vmlb_layer_cache_lookups_total',
  help: 'Layer cache lookups, by result (hit, miss), source (local, shared), team and pool (the build\'s); the scheduler counts plan-time hits, workers the rest.',
  labelNames: ['result', 'source', 'team', 'pool'] as const,
};

/** Build-duration buckets, seconds: from an all-hit build (under a second) to an hour. */
export const DURATION_BUCKETS = [0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1200, 3600];
