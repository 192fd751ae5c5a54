import { query } from './api';
import { formatClock, formatPercent, formatTime } from './format';
import { HitRateChart, TEAM_COLORS } from './hit-rate-chart';
import { href, usePoll } from './hooks';
import { useSession } from './session';
import type { CacheBucket, CacheStats } from './types';
import { Card, Empty, ErrorNote, Loading, Meter, Stat } from './ui-kit';

const RANGES = [
  { hours: 1, bucketMinutes: 1, label: '1 h' },
  { hours: 6, bucketMinutes: 5, label: '6 h' },
  { hours: 24, bucketMinutes: 15, label: '24 h' },
  { hours: 24 * 7, bucketMinutes: 120, label: '7 d' },
] as const;
const DEFAULT_HOURS = 6;

function totals(buckets: CacheBucket[]): { lookups: number; hits: number; rate: number | null } {
  const lookups = buckets.reduce((n, b) => n + b.lookups, 0);
  const hits = buckets.reduce((n, b) => n + b.hits, 0);
  return { lookups, hits, rate: lookups > 0 ? hits / lookups : null };
}

/** `#/cache?hours=&team=`: the cache hit rate over time, overall and per team. */
export function CachePage({ params }: { params: URLSearchParams }) {
  const { api, who } = useSession();
  const range = RANGES.find((r) => String(r.hours) === params.get('hours')) ?? RANGES.find((r) => r.hours === DEFAULT_HOURS)!;
  const team = params.get('team') ?? '';
  const stats = usePoll(
    (signal) => api.json<CacheStats>(`/v1/stats/cache${query({ hours: range.hours, bucketMinutes: range.bucketMinutes, team })}`, signal),
    [api, range.hours, team],
    5000,
  );
  const s = stats.data;
  const overall = s ? totals(s.overall) : null;
  const teams = s ? Object.keys(s.teams).sort() : [];

  return (
    <div class="page">
      <div class="page-head">
        <h1>Cache</h1>
        <div class="page-sub">
          hit rate of layer lookups, {who.admin ? (team ? `team ${team}` : 'every team') : `team ${who.team}`}
          {s && ` · ${formatTime(s.from)} – ${formatClock(s.to, false)}`}
        </div>
      </div>
      <div class="filters">
        <div class="segmented" data-testid="range">
          {RANGES.map((r) => (
            <a key={r.hours} href={href(['cache'], { hours: String(r.hours), team })} class={r === range ? 'on' : ''}>
              {r.label}
            </a>
          ))}
        </div>
        {who.admin && teams.length > 0 && (
          <label class="filter">
            <span>Team</span>
            <select value={team} onChange={(e) => (location.hash = href(['cache'], { hours: String(range.hours), team: e.currentTarget.value }))}>
              <option value="">All teams</option>
              {[...new Set([...teams, ...(team ? [team] : [])])].map((t) => (
                <option key={t} value={t}>
                  {t}
                </option>
              ))}
            </select>
          </label>
        )}
      </div>
      <ErrorNote error={stats.error} what="the cache statistics" />
      {!s ? (
        !stats.error && <Loading what="the cache statistics" />
      ) : (
        <>
          <div class="stats">
            <Stat label={`Hit rate · last ${range.label}`} value={formatPercent(overall!.rate)} sub={overall!.lookups ? `${overall!.hits} of ${overall!.lookups} layer lookups` : 'no lookups yet'} tone={overall!.rate === null ? undefined : overall!.rate >= 0.5 ? 'ok' : 'warn'} testid="stat-hit-rate" />
            <Stat label="Lookups" value={String(overall!.lookups)} testid="stat-lookups" />
            <Stat label="Hits" value={String(overall!.hits)} testid="stat-hits" />
            <Stat label="Misses (built)" value={String(overall!.lookups - overall!.hits)} testid="stat-misses" />
          </div>
          <Card title="Hit rate over time">
            {overall!.lookups === 0 ? <Empty>No layer lookups in the last {range.label}.</Empty> : null}
            <HitRateChart stats={s} />
          </Card>
          <Card title="By team">
            {teams.length === 0 ? (
              <Empty>No team has looked up a layer in the last {range.label}.</Empty>
            ) : (
              <table class="table" data-testid="teams-table">
                <thead>
                  <tr>
                    <th>Team</th>
                    <th class="num">Lookups</th>
                    <th class="num">Hits</th>
                    <th class="num">Hit rate</th>
                    <th class="bar-col" />
                  </tr>
                </thead>
                <tbody>
                  {teams.map((t, i) => {
                    const tt = totals(s.teams[t] ?? []);
                    return (
                      <tr key={t} data-team={t}>
                        <td>
                          <span class="swatch" style={{ background: TEAM_COLORS[i % TEAM_COLORS.length] }} />
                          {t}
                        </td>
                        <td class="num">{tt.lookups}</td>
                        <td class="num">{tt.hits}</td>
                        <td class="num rate">{formatPercent(tt.rate)}</td>
                        <td class="bar-col">
                          <Meter value={tt.hits} max={tt.lookups} tone="hit" />
                        </td>
                      </tr>
                    );
                  })}
                </tbody>
              </table>
            )}
          </Card>
        </>
      )}
    </div>
  );
}
