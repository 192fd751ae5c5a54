import { query } from './api';
import { useRef } from 'preact/hooks';
import { formatClock, formatPercent, formatTime } from './format';
import { HitRateChart, TEAM_COLORS } from './hit-rate-chart';
import { href, usePoll } from './hooks';
import { useSession } from './session';
import type { CacheBucket, CacheStats } from './types';
import { Card, Empty, ErrorNote, Loading, Meter, Stat } from './ui-kit';

interface Range {
  hours: number;
  bucketMinutes: number;
  label: string;
  /** Fitted to the data (the page without ?hours), not picked. */
  fit?: boolean;
}

const RANGES: readonly Range[] = [
  { hours: 1, bucketMinutes: 1, label: '1 h' },
  { hours: 6, bucketMinutes: 5, label: '6 h' },
  { hours: 24, bucketMinutes: 15, label: '24 h' },
  { hours: 24 * 7, bucketMinutes: 120, label: '7 d' },
];
/** Without data to fit (no lookup in the last 7 days): this window. */
const DEFAULT_HOURS = 6;
/** Asked once when the page has no ?hours, to fit the window to the data: 7 days in 6-minute buckets. */
const PROBE = { hours: 24 * 7, bucketMinutes: 6 };
/** The windows a fitted one is one of (hours, buckets of minutes), smallest first. */
const FIT_SPANS: ReadonlyArray<[number, number, string]> = [
  [0.25, 1, '15 min'],
  [0.5, 1, '30 min'],
  [1, 1, '1 h'],
  [2, 2, '2 h'],
  [6, 5, '6 h'],
  [12, 10, '12 h'],
  [24, 15, '24 h'],
  [72, 60, '3 d'],
  [168, 120, '7 d'],
];

/**
 * The window that fits the data: since the first lookup of the last 7 days, in the smallest
 * span that holds it (a fleet that started 5 minutes ago gets 15 minutes of 1-minute buckets,
 * not a sliver at the end of 6 hours). No lookup in 7 days: the 6 h window.
 */
export function fitRange(s: CacheStats, now: number): Range {
  const first = s.overall.find((b) => b.lookups > 0);
  if (!first) return RANGES.find((r) => r.hours === DEFAULT_HOURS)!;
  const age = now - Date.parse(first.t);
  const [hours, bucketMinutes, span] = FIT_SPANS.find(([h, b]) => h * 3600_000 >= age + b * 60_000) ?? FIT_SPANS[FIT_SPANS.length - 1]!;
  return { hours, bucketMinutes, label: span, fit: true };
}

function totals(buckets: CacheBucket[]): { lookups: number; hits: number; rate: number | null } {
  const lookups = buckets.reduce((n, b) => n + b.lookups, 0);
  const hits = buckets.reduce((n, b) => n + b.hits, 0);
  return { lookups, hits, rate: lookups > 0 ? hits / lookups : null };
}

/** `#/cache?hours=&team=`: the cache hit rate over time, overall and per team. */
export function CachePage({ params }: { params: URLSearchParams }) {
  const { api, who } = useSession();
  const asked = RANGES.find((r) => String(r.hours) === params.get('hours'));
  const team = params.get('team') ?? '';
  // No ?hours: the window is fitted to the data once (per team shown), then kept while the page is open.
  const fitted = useRef<{ team: string; range: Range } | null>(null);
  const load = (r: { hours: number; bucketMinutes: number }, signal: AbortSignal) => api.json<CacheStats>(`/v1/stats/cache${query({ hours: r.hours, bucketMinutes: r.bucketMinutes, team })}`, signal);
  const stats = usePoll(
    async (signal): Promise<{ s: CacheStats; range: Range }> => {
      const known = asked ?? (fitted.current?.team === team ? fitted.current.range : undefined);
      if (known) return { s: await load(known, signal), range: known };
      const fit = fitRange(await load(PROBE, signal), Date.now());
      fitted.current = { team, range: fit };
      return { s: await load(fit, signal), range: fit };
    },
    [api, asked?.hours, team],
    5000,
  );
  const range = stats.data?.range ?? asked ?? fitted.current?.range ?? RANGES.find((r) => r.hours === DEFAULT_HOURS)!;
  const s = stats.data?.s;
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
        <div class="segmented" data-testid="range" data-hours={range.hours}>
          <a href={href(['cache'], { team })} class={range.fit ? 'on' : ''} title="since the first build of the last 7 days" data-fit={range.fit ? range.label : undefined}>
            Fit
          </a>
          {RANGES.map((r) => (
            <a key={r.hours} href={href(['cache'], { hours: String(r.hours), team })} class={r === range ? 'on' : ''}>
              {r.label}
            </a>
          ))}
        </div>
        {who.admin && teams.length > 0 && (
          <label class="filter">
            <span>Team</span>
            <select value={team} onChange={(e) => (location.hash = href(['cache'], { hours: range.fit ? '' : String(range.hours), team: e.currentTarget.value }))}>
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
