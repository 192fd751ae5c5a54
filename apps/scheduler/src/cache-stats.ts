import type { BuildSummary, HitRateBucket, HitRateSeries } from '@vmlb/fleet';

/**
 * The layer cache hit rate over time, from build summaries: each build's layers are its
 * lookups and its hits the layers taken from the cache, counted in the bucket of the time it
 * was submitted (a hit found by a worker later, for a layer another build was making at the same
 * time, counts once the build's record has it). Buckets are aligned to multiples of
 * bucketSeconds since the epoch, so two calls a minute apart give the same buckets.
 */
export function hitRateSeries(builds: BuildSummary[], o: { now: number; hours: number; bucketSeconds: number; teams: string[] }): HitRateSeries {
  const size = o.bucketSeconds * 1000;
  const end = Math.floor(o.now / size) * size + size;
  const count = Math.max(1, Math.ceil((o.hours * 3600_000) / size));
  const start = end - count * size;
  const empty = () => Array.from({ length: count }, (_, i) => ({ t: new Date(start + i * size).toISOString(), lookups: 0, hits: 0, rate: null as number | null }));
  const overall = empty();
  const teams: Record<string, HitRateBucket[]> = {};
  for (const t of o.teams) teams[t] = empty();
  for (const b of builds) {
    const at = Date.parse(b.createdAt);
    if (!(at >= start && at < end)) continue;
    const i = Math.floor((at - start) / size);
    for (const series of [overall, (teams[b.team] ??= empty())]) {
      series[i]!.lookups += b.lookups ?? b.layers;
      series[i]!.hits += b.hits;
    }
  }
  for (const series of [overall, ...Object.values(teams)]) for (const x of series) x.rate = x.lookups ? x.hits / x.lookups : null;
  return { from: new Date(start).toISOString(), to: new Date(end).toISOString(), bucketSeconds: o.bucketSeconds, overall, teams };
}
