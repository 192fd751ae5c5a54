import type { ProjectTrend, TrendBuild } from '@vmlb/fleet';
import { query } from './api';
import { formatAgo, formatPercent, formatSeconds, formatTime } from './format';
import { href, useNow, usePoll } from './hooks';
import { useSession } from './session';
import { Badge, Card, Empty, ErrorNote, Loading, Mono, Stat } from './ui-kit';
import './project-page.css';

const LIMITS = [10, 30, 100];
const STATUS_WORDS: Record<string, string> = { hit: 'cached', done: 'built', failed: 'failed', building: 'building', queued: 'queued', waiting: 'waiting', cancelled: 'cancelled' };

function median(xs: number[]): number | null {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Every layer name of these builds: the newest build's in order, then any only older ones had. */
function layerNames(builds: TrendBuild[]): string[] {
  const names: string[] = [];
  for (const b of builds) for (const l of b.layers) if (!names.includes(l.name)) names.push(l.name);
  return names;
}

/**
 * `#/projects/<name>?limit&branch&team`: a project's last builds side by side, oldest on the
 * left: per layer, whether it was a cache hit or built and how long it took, so a layer that got
 * slower or stopped hitting the cache shows as a row that changes.
 */
export function ProjectPage({ name, params }: { name: string; params: URLSearchParams }) {
  const { api, who } = useSession();
  const now = useNow(5000);
  const limit = LIMITS.includes(Number(params.get('limit'))) ? Number(params.get('limit')) : 30;
  const branch = params.get('branch') || undefined;
  const team = params.get('team') || undefined;
  const trend = usePoll(
    (signal) => api.json<ProjectTrend>(`/v1/projects/${encodeURIComponent(name)}/trend${query({ limit, branch, team })}`, signal),
    [api, name, limit, branch, team],
    10_000,
  );
  const go = (p: Record<string, string | undefined>) => (location.hash = href(['projects', name], { limit: String(limit), branch, team, ...p }));

  const t = trend.data;
  const builds = t ? [...t.builds].reverse() : []; // oldest first, left to right
  const names = layerNames(t?.builds ?? []);
  const finished = builds.filter((b) => b.state === 'done' && b.seconds !== null).map((b) => b.seconds!);
  // The one hit rate (docs/metrics.md): layers a failure cancelled are no lookups.
  const lookups = builds.reduce((n, b) => n + b.lookups, 0);
  const hits = builds.reduce((n, b) => n + b.hits, 0);
  const failed = builds.filter((b) => b.state === 'failed').length;
  // Each layer's bar is scaled to its own slowest build here.
  const slowest = new Map<string, number>();
  for (const b of builds) for (const l of b.layers) if (l.seconds !== null) slowest.set(l.name, Math.max(slowest.get(l.name) ?? 0, l.seconds));

  return (
    <div class="page" data-project={name}>
      <nav class="crumbs" aria-label="Breadcrumb">
        <a href={href(['builds'])}>Builds</a>
        <span>/</span>
        <span>project</span>
      </nav>
      <div class="page-head">
        <h1 data-testid="project-title">{name}</h1>
        <span class="page-sub">
          {t ? `${t.teams.length === 1 ? `team ${t.teams[0]}` : who.admin ? 'every team' : ''}${branch ? ` · branch ${branch}` : ''}` : ''}
        </span>
      </div>
      <div class="trend-controls">
        <label>
          Last{' '}
          <select data-testid="trend-limit" value={String(limit)} onChange={(e) => go({ limit: (e.target as HTMLSelectElement).value })}>
            {LIMITS.map((n) => (
              <option key={n} value={String(n)}>
                {n}
              </option>
            ))}
          </select>{' '}
          builds
        </label>
        <label>
          Branch{' '}
          <input
            data-testid="trend-branch"
            placeholder="any"
            value={branch ?? ''}
            onChange={(e) => go({ branch: (e.target as HTMLInputElement).value.trim() || undefined })}
          />
        </label>
      </div>
      <ErrorNote error={trend.error} what={`project ${name}`} />
      {!t ? (
        !trend.error && <Loading what={`project ${name}`} />
      ) : builds.length === 0 ? (
        <Empty>No builds of project {name}{branch ? ` on branch ${branch}` : ''} for this team.</Empty>
      ) : (
        <>
          <div class="stats">
            <Stat label="Builds" value={String(builds.length)} sub={`${failed} failed`} testid="trend-builds" />
            <Stat label="Median duration" value={formatSeconds(median(finished))} sub="of the done ones" testid="trend-median" />
            <Stat label="Cache hits" value={formatPercent(lookups ? hits / lookups : null)} sub={`${hits} of ${lookups} layers`} testid="trend-hits" />
            <Stat label="Last build" value={formatAgo(t.builds[0]!.createdAt, now)} sub={t.builds[0]!.state} />
          </div>
          <Card title="Layers over the last builds" testid="trend-card">
            <div class="trend-wrap">
              <table class="trend" data-testid="trend">
                <thead>
                  <tr>
                    <th class="layer-name">Layer</th>
                    {builds.map((b) => (
                      <th key={b.id} class="col-head" data-build={b.id} title={`${b.id} · ${formatTime(b.createdAt)}${b.gitBranch ? ` · ${b.gitBranch}` : ''}${b.gitCommit ? ` · ${b.gitCommit}` : ''}${b.gitDirty ? ' (dirty)' : ''}${b.submitter ? ` · by ${b.submitter}` : ''}`}>
                        <a href={href(['builds', b.id])}>{b.id.slice(-6)}</a>
                        <div>
                          <Mono>{b.gitCommit ? b.gitCommit.slice(0, 7) : '—'}</Mono>
                          {b.gitDirty ? <span class="dirty-mark" title="dirty work tree">*</span> : null}
                        </div>
                        <Badge status={b.state} />
                      </th>
                    ))}
                  </tr>
                </thead>
                <tbody>
                  {names.map((n) => (
                    <tr key={n} data-layer-name={n}>
                      <th class="layer-name">
                        <Mono>{n}</Mono>
                      </th>
                      {builds.map((b) => {
                        const l = b.layers.find((x) => x.name === n);
                        const status = l?.status ?? 'none';
                        const max = slowest.get(n) ?? 0;
                        return (
                          <td
                            key={b.id}
                            class={`cell st-${status}`}
                            data-build={b.id}
                            data-status={status}
                            title={l ? `${n} in ${b.id}: ${STATUS_WORDS[status] ?? status}${l.seconds !== null ? ` in ${formatSeconds(l.seconds)}` : ''}` : `${n}: not in ${b.id}`}
                          >
                            {!l ? '' : status === 'hit' ? 'cached' : l.seconds !== null ? formatSeconds(l.seconds) : (STATUS_WORDS[status] ?? status)}
                            {l && l.seconds !== null && max > 0 && <span class="bar" style={{ width: `${Math.max(4, (l.seconds / max) * 42)}px` }} />}
                          </td>
                        );
                      })}
                    </tr>
                  ))}
                  <tr class="total" data-layer-name="">
                    <th class="layer-name">Build</th>
                    {builds.map((b) => (
                      <td key={b.id} class="cell" data-build={b.id} data-testid="trend-total">
                        {b.seconds !== null ? formatSeconds(b.seconds) : '…'}
                      </td>
                    ))}
                  </tr>
                </tbody>
              </table>
            </div>
            <div class="trend-legend" aria-hidden="true">
              <span class="st-hit">cached: a hit in the layer cache</span>
              <span>seconds: built by a worker (the bar: against its slowest here)</span>
            </div>
          </Card>
        </>
      )}
    </div>
  );
}
