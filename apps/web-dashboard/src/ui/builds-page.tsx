import { useEffect, useState } from 'preact/hooks';
import { query } from './api';
import { elapsed, formatAgo, formatSeconds, formatTime, plural } from './format';
import { href, useNow, usePoll } from './hooks';
import { ProjectLabel } from './project-label';
import { useSession } from './session';
import { BUILD_STATES, isFinal, type BuildSummary } from './types';
import { Badge, Card, Empty, ErrorNote, Loading, Mono } from './ui-kit';

const STATE_FILTERS: Array<{ value: string; label: string }> = [
  { value: '', label: 'All' },
  { value: 'active', label: 'Active' },
  ...BUILD_STATES.map((s) => ({ value: s, label: s[0]!.toUpperCase() + s.slice(1) })),
];

/**
 * `#/builds?team=&pool=&state=&q=`: the builds, newest first, filtered, polled every 2 s. `q`
 * searches the project name, git commit and branch and the submitter (the API's ?q=).
 */
export function BuildsPage({ params }: { params: URLSearchParams }) {
  const { api, who } = useSession();
  const team = params.get('team') ?? '';
  const pool = params.get('pool') ?? '';
  const state = params.get('state') ?? '';
  const q = params.get('q') ?? '';
  const now = useNow();
  const list = usePoll((signal) => api.json<{ builds: BuildSummary[] }>(`/v1/builds${query({ team, pool, state, q, limit: 200 })}`, signal), [api, team, pool, state, q]);
  // What is typed in the search box, sent when the user stops typing for a moment.
  const [typed, setTyped] = useState(q);
  useEffect(() => setTyped(q), [q]);
  useEffect(() => {
    if (typed === q) return;
    const t = setTimeout(() => go({ q: typed }), 300);
    return () => clearTimeout(t);
  }, [typed]);

  // The admin's team menu: every team seen in an unfiltered listing, and the selected one.
  const [teams, setTeams] = useState<string[]>([who.team]);
  useEffect(() => {
    const seen = list.data?.builds.map((b) => b.team) ?? [];
    if (team) seen.push(team);
    setTeams((prev) => {
      const all = [...new Set([...prev, ...seen])].sort();
      return all.length === prev.length ? prev : all;
    });
  }, [list.data, team]);
  // The pool menu likewise: the pools of the builds seen, the token's own, and the selected one.
  const [pools, setPools] = useState<string[]>([who.pool ?? 'default']);
  useEffect(() => {
    const seen = list.data?.builds.map((b) => b.pool ?? 'default') ?? [];
    if (pool) seen.push(pool);
    setPools((prev) => {
      const all = [...new Set([...prev, ...seen])].sort();
      return all.length === prev.length ? prev : all;
    });
  }, [list.data, pool]);

  const go = (next: { team?: string; pool?: string; state?: string; q?: string }) => {
    location.hash = href(['builds'], { team: next.team ?? team, pool: next.pool ?? pool, state: next.state ?? state, q: next.q ?? q });
  };
  const builds = list.data?.builds ?? [];

  return (
    <div class="page">
      <div class="page-head">
        <h1>Builds</h1>
        <div class="page-sub">
          {who.admin ? (team ? `team ${team}` : 'every team') : `team ${who.team}`}
          {who.admin ? (pool ? ` · pool ${pool}` : '') : ` · pool ${who.pool ?? 'default'}`}
          {list.data && ` · ${plural(builds.length, 'build')}`}
        </div>
      </div>
      <div class="filters" role="toolbar" aria-label="Filters">
        {who.admin ? (
          <label class="filter">
            <span>Team</span>
            <select data-testid="team-filter" value={team} onChange={(e) => go({ team: e.currentTarget.value })}>
              <option value="">All teams</option>
              {teams.map((t) => (
                <option value={t} key={t}>
                  {t}
                </option>
              ))}
            </select>
          </label>
        ) : (
          <span class="filter">
            <span>Team</span>
            <strong>{who.team}</strong>
          </span>
        )}
        {who.admin ? (
          <label class="filter">
            <span>Pool</span>
            <select data-testid="pool-filter" value={pool} onChange={(e) => go({ pool: e.currentTarget.value })}>
              <option value="">All pools</option>
              {pools.map((p) => (
                <option value={p} key={p}>
                  {p}
                </option>
              ))}
            </select>
          </label>
        ) : (
          <span class="filter" data-testid="pool-filter">
            <span>Pool</span>
            <strong>{who.pool ?? 'default'}</strong>
          </span>
        )}
        <div class="segmented" data-testid="state-filter">
          {STATE_FILTERS.map((f) => (
            <a key={f.value} href={href(['builds'], { team, pool, state: f.value, q })} class={f.value === state ? 'on' : ''} aria-current={f.value === state ? 'true' : undefined}>
              {f.label}
            </a>
          ))}
        </div>
        <label class="filter">
          <span>Search</span>
          <input
            type="search"
            data-testid="search"
            placeholder="project, commit, branch, submitter"
            value={typed}
            onInput={(e) => setTyped(e.currentTarget.value)}
            onKeyDown={(e) => e.key === 'Enter' && go({ q: e.currentTarget.value })}
          />
        </label>
      </div>
      <ErrorNote error={list.error} what="the builds" />
      <Card>
        {list.loading ? (
          <Loading what="builds" />
        ) : builds.length === 0 ? (
          <Empty>
            No builds{q ? ` matching “${q}”` : ''}{state ? ` in state ${state}` : ''}{team ? ` for team ${team}` : ''}{pool ? ` in pool ${pool}` : ''}. Submit one with <Mono>vmlb submit</Mono>.
          </Empty>
        ) : (
          <table class="table builds-table" data-testid="builds-table">
            <thead>
              <tr>
                <th>Build</th>
                <th>Team</th>
                <th>Pool</th>
                <th>State</th>
                <th>Layers</th>
                <th>Created</th>
                <th class="num">Duration</th>
              </tr>
            </thead>
            <tbody>
              {builds.map((b) => (
                <BuildRow key={b.id} b={b} now={now} />
              ))}
            </tbody>
          </table>
        )}
      </Card>
    </div>
  );
}

function BuildRow({ b, now }: { b: BuildSummary; now: number }) {
  const link = href(['builds', b.id]);
  const rest = Math.max(0, b.layers - b.hits - b.built);
  return (
    <tr data-build={b.id} data-state={b.state} class="clickable" onClick={(e) => !(e.target as Element).closest('a') && (location.hash = link)}>
      <td>
        <a href={link} class="build-link">
          <Mono>{b.id}</Mono>
        </a>
        <div class="cell-sub">
          <ProjectLabel b={b} />
        </div>
      </td>
      <td>{b.team}</td>
      <td class="pool-cell" data-pool={b.pool ?? 'default'}>
        {b.pool ?? 'default'}
      </td>
      <td>
        <Badge status={b.state} />
        {b.error && (
          <div class="cell-sub cell-error" title={b.error} data-testid="build-error">
            {b.error}
          </div>
        )}
        {b.warning && (
          <div class="cell-sub cell-warn" title={b.warning} data-testid="build-warning">
            {b.warning}
          </div>
        )}
      </td>
      <td>
        <div class="layer-counts">
          {plural(b.layers, 'layer')}
          <span class="cell-sub">
            {' '}
            · {b.hits} cached · {b.built} built
          </span>
        </div>
        <div class="stackbar" aria-hidden="true">
          <span class="seg st-hit" style={{ flexGrow: b.hits }} />
          <span class="seg st-done" style={{ flexGrow: b.built }} />
          <span class={`seg ${b.state === 'failed' ? 'st-failed' : 'st-queued'}`} style={{ flexGrow: rest }} />
        </div>
      </td>
      <td title={formatTime(b.createdAt)}>{formatAgo(b.createdAt, now)}</td>
      <td class="num">{isFinal(b.state) || b.finishedAt ? formatSeconds(elapsed(b.createdAt, b.finishedAt, now)) : <span class="running">{formatSeconds(elapsed(b.createdAt, undefined, now))}</span>}</td>
    </tr>
  );
}
