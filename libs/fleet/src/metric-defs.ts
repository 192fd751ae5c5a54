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

/**
 * The label values of LAYER_CACHE_LOOKUPS a worker exports for each team of its pool, at 0
 * before its first count (so that `increase()` sees the first one); the scheduler counts only
 * `hit`/`shared`.
 */
export const WORKER_LOOKUP_RESULTS = [
  { result: 'hit', source: 'shared' },
  { result: 'hit', source: 'local' },
  { result: 'miss', source: 'shared' },
  { result: 'miss', source: 'local' },
] as const;

/** Build-duration buckets, seconds: from an all-hit build (under a second) to an hour. */
export const DURATION_BUCKETS = [0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1200, 3600];

/**
 * prom-client default metrics both processes drop: gauges named like counters (`_total`), which
 * `promtool check metrics` refuses; `nodejs_active_handles{type}` etc. (by type) stay, and their
 * sum is the total.
 */
export const DROPPED_DEFAULT_METRICS = ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total'] as const;
