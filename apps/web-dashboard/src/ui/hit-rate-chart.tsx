import { useEffect, useRef } from 'preact/hooks';
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';
import { formatClock } from './format';
import type { CacheStats } from './types';

export const TEAM_COLORS = ['#0ea5e9', '#f59e0b', '#10b981', '#ef4444', '#8b5cf6', '#ec4899', '#14b8a6', '#84cc16'];
const OVERALL = '#3b5bdb';

/** x: bucket starts (seconds); then lookups, the overall rate (%), each team's rate (%). */
function toData(stats: CacheStats, teams: string[]): uPlot.AlignedData {
  const xs = stats.overall.map((b) => Date.parse(b.t) / 1000);
  const rate = (r: number | null) => (r === null ? null : r * 100);
  const byTeam = teams.map((t) => {
    const m = new Map((stats.teams[t] ?? []).map((b) => [b.t, b.rate]));
    return stats.overall.map((b) => rate(m.get(b.t) ?? null));
  });
    // No bar at all for an empty bucket (a zero-height bar still draws its outline).
  return [xs, stats.overall.map((b) => (b.lookups > 0 ? b.lookups : null)), stats.overall.map((b) => rate(b.rate)), ...byTeam];
}

function showLatest(u: uPlot): void {
  const n = u.data[0].length;
  if (n > 0 && u.cursor.idx == null) u.setLegend({ idx: n - 1 });
}

/** `Dec 2 16:40–16:45`: a bucket by its start and end. */
export function bucketLabel(startS: number | null, bucketSeconds: number): string {
  if (startS === null) return '—';
  const day = new Date(startS * 1000).toLocaleDateString(undefined, { month: 'short', day: 'numeric' });
  return `${day} ${formatClock(startS * 1000, false)}–${formatClock((startS + bucketSeconds) * 1000, false)}`;
}

function options(width: number, teams: string[], bucketSeconds: number): uPlot.Options {
  const barPaths = uPlot.paths.bars?.({ size: [0.7, 24] });
  const axisStroke = '#6b7280';
  const grid = { stroke: '#eceef2', width: 1 };
  return {
    width,
    height: 280,
    cursor: { points: { size: 7 }, drag: { x: false, y: false } },
    legend: { live: true },
    // With the cursor off the chart the legend shows the latest bucket, not a row of dashes.
    hooks: { ready: [showLatest], setData: [showLatest], setCursor: [showLatest] },
    scales: {
      // Half a bucket of room on each side, so the first and the latest bucket are not cut in half.
      x: { time: true, range: (_u, min, max) => [(min ?? 0) - bucketSeconds / 2, (max ?? 0) + bucketSeconds / 2] },
      pct: { range: [0, 100] },
      n: { range: (_u, _min, max) => [0, Math.max(4, Math.ceil((max ?? 0) * 1.25))] },
    },
    axes: [
      {
        stroke: axisStroke,
        grid,
        ticks: { stroke: '#e3e6ea' },
        space: 90,
        // 24-hour times; the date too once the range spans days.
        values: (u, splits) => {
          const span = (u.scales.x?.max ?? 0) - (u.scales.x?.min ?? 0);
          return splits.map((v) => (span > 36 * 3600 ? `${new Date(v * 1000).toLocaleDateString(undefined, { month: 'short', day: 'numeric' })} ${formatClock(v * 1000, false)}` : formatClock(v * 1000, false)));
        },
      },
      { scale: 'pct', stroke: axisStroke, grid, values: (_u, vals) => vals.map((v) => `${v}%`), size: 50 },
      { scale: 'n', side: 1, stroke: axisStroke, grid: { show: false }, size: 40, values: (_u, vals) => vals.map((v) => (Number.isInteger(v) ? String(v) : '')) },
    ],
    series: [
      // The bucket the cursor is on (its start), or, with the cursor off the chart, the latest bucket.
      { label: 'bucket', value: (u, v, _s, idx) => bucketLabel(v ?? (idx == null ? null : (u.data[0][idx] ?? null)), bucketSeconds) },
      {
        label: `lookups / ${bucketSeconds >= 3600 ? `${bucketSeconds / 3600} h` : `${bucketSeconds / 60} min`}`,
        scale: 'n',
        stroke: '#c7ccd6',
        fill: 'rgba(148, 163, 184, 0.28)',
        width: 1,
        ...(barPaths ? { paths: barPaths } : {}),
        points: { show: false },
        value: (_u, v) => (v === null ? '—' : String(v)),
      },
      {
        label: 'overall hit rate',
        scale: 'pct',
        stroke: OVERALL,
        width: 2.5,
        // An empty bucket is a gap, not a line drawn across it.
        spanGaps: false,
        points: { show: true, size: 6, fill: OVERALL },
        value: (_u, v) => (v === null ? '—' : `${v.toFixed(1)}%`),
      },
      ...teams.map((t, i) => ({
        label: t,
        scale: 'pct',
        stroke: TEAM_COLORS[i % TEAM_COLORS.length]!,
        width: 1.5,
        dash: [5, 4],
        // An empty bucket is a gap, not a line drawn across it.
        spanGaps: false,
        points: { show: true, size: 5 },
        value: (_u: uPlot, v: number | null) => (v === null ? '—' : `${v.toFixed(1)}%`),
      })),
    ],
  };
}

/**
 * The hit rate over time with uPlot: the overall rate (solid), each team's (dashed), and the
 * lookups per bucket as grey bars on the right axis. Rebuilt when the set of teams changes,
 * otherwise fed new data in place (no flicker on every poll).
 */
export function HitRateChart({ stats }: { stats: CacheStats }) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<{ u: uPlot; shape: string } | null>(null);
  const teams = Object.keys(stats.teams).sort();
  const shape = `${teams.join(',')}|${stats.bucketSeconds}`;

  useEffect(() => {
    const el = box.current;
    if (!el) return;
    const data = toData(stats, teams);
    if (plot.current && plot.current.shape === shape) {
      plot.current.u.setData(data);
      return;
    }
    plot.current?.u.destroy();
    plot.current = { u: new uPlot(options(Math.max(300, el.clientWidth), teams, stats.bucketSeconds), data, el), shape };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [stats, shape]);

  useEffect(() => {
    const el = box.current;
    if (!el) return;
    const ro = new ResizeObserver(() => {
      const u = plot.current?.u;
      if (u && Math.abs(u.width - el.clientWidth) > 2) u.setSize({ width: Math.max(300, el.clientWidth), height: 280 });
    });
    ro.observe(el);
    return () => {
      ro.disconnect();
      plot.current?.u.destroy();
      plot.current = null;
    };
  }, []);

  return <div class="chart" ref={box} data-testid="hit-rate-chart" />;
}
