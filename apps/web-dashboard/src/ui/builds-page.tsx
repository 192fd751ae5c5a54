import { useEffect, useState } from 'preact/hooks';
import { query } from './api';
import { elapsed, formatAgo, formatSeconds, formatTime, plural, shortHash } from './format';
import { href, useNow, usePoll } from './hooks';
import { useSession } from './session';
import { BUILD_STATES, isFinal, type BuildSummary } from './types';
import { Badge, Card, Empty, ErrorNote, Loading, Mono } from './ui-kit';

const STATE_FILTERS: Array<{ value: string; label: string }> = [
  { value: '', label: 'All' },
  { value: 'active', label: 'Active' },
  ...BUILD_STATES.map((s) => ({ value: s, label: s[0]!.toUpperCase() + s.slice(1) })),
];

/** `#/builds?team=&state=`: the builds, newest first, filtered, polled every 2 s. */
export function BuildsPage({ params }: { params: URLSearchParams }) {
  const { api, who } = useSession();
  const team = params.get('team') ?? '';
  const state = params.get('state') ?? '';
  const now = useNow();
  const list = usePoll((signal) => api.json<{ builds: BuildSummary[] }>(`/v1/builds${query({ team, state, limit: 200 })}`, signal), [api, team, state]);

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

  const go = (next: { team?: string; state?: string }) => {
    location.hash = href(['builds'], { team: next.team ?? team, state: next.state ?? state });
  };
  const builds = list.data?.builds ?? [];

  return (
    <div class="page">
      <div class="page-head">
        <h1>Builds</h1>
        <div class="page-sub">
          {who.admin ? (team ? `team ${team}` : 'every team') : `team ${who.team}`}
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
        <div class="segmented" data-testid="state-filter">
          {STATE_FILTERS.map((f) => (
            <a key={f.value} href={href(['builds'], { team, state: f.value })} class={f.value === state ? 'on' : ''} aria-current={f.value === state ? 'true' : undefined}>
              {f.label}
            </a>
          ))}
        </div>
      </div>
      <ErrorNote error={list.error} what="the builds" />
      <Card>
        {list.loading ? (
          <Loading what="builds" />
        ) : builds.length === 0 ? (
          <Empty>
            No builds{state ? ` in state ${state}` : ''}{team ? ` for team ${team}` : ''}. Submit one with <Mono>vmlb submit</Mono>.
          </Empty>
        ) : (
          <table class="table builds-table" data-testid="builds-table">
            <thead>
              <tr>
                <th>Build</th>
                <th>Team</th>
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
        <div class="cell-sub" title={`project sha256 ${b.project}`}>
          project <Mono>{shortHash(b.project)}</Mono>
        </div>
      </td>
      <td>{b.team}</td>
      <td>
        <Badge status={b.state} />
        {b.error && (
          <div class="cell-sub cell-error" title={b.error}>
            {b.error}
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
