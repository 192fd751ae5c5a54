import type { FastifyInstance, FastifyRequest } from 'fastify';
import { VmlbError } from '@vmlb/layer-engine';
import { DEFAULT_POOL, type BuildLinks, type ProjectTrend } from '@vmlb/fleet';
import type { StoredRecord } from './build-records.js';
import type { BuildHistory } from './build-history.js';
import { HttpError } from './http-error.js';

/**
 * The trend routes (the dashboard's project page) and a build's links elsewhere:
 *
 *   GET /v1/projects/:name/trend?limit&branch&team
 *                               a project's last `limit` builds (1–200, default 30), newest
 *                               first, each with its layers' outcome (hit, done, failed…) and
 *                               seconds, from the history; the asking team's builds (an admin's:
 *                               every team's, or ?team's)
 *   GET /v1/builds/:id/links    { grafana }: the build's time range on the fleet's Grafana (or
 *                               Prometheus) view, from VMLB_GRAFANA_URL; null when unset
 */
export function registerProjectRoutes(
  app: FastifyInstance,
  deps: {
    records: BuildHistory;
    visibleBuild: (req: FastifyRequest) => Promise<StoredRecord>;
    listedTeams: (req: FastifyRequest, asked: string | undefined, verb: string) => Promise<string[]>;
    /** VMLB_GRAFANA_URL (checked by grafanaTemplate). */
    grafanaUrl?: string;
  },
): void {
  const grafana = deps.grafanaUrl ? grafanaTemplate(deps.grafanaUrl) : null;

  app.get('/v1/projects/:name/trend', async (req): Promise<ProjectTrend> => {
    const { name } = req.params as { name: string };
    const q = req.query as { limit?: string; branch?: string; team?: string };
    if (name.length === 0 || name.length > 200) throw new HttpError(400, 'BAD_QUERY', 'a project name is 1 to 200 characters');
    const limit = q.limit === undefined ? 30 : Number(q.limit);
    if (!Number.isInteger(limit) || limit < 1 || limit > 200) throw new HttpError(400, 'BAD_QUERY', `limit must be a whole number from 1 to 200 (not ${q.limit})`);
    if (q.branch !== undefined && (q.branch.length === 0 || q.branch.length > 200)) throw new HttpError(400, 'BAD_QUERY', 'branch must be 1 to 200 characters');
    const teams = await deps.listedTeams(req, q.team, 'sees');
    const builds = await deps.records.trend({ teams, project: name, branch: q.branch, limit });
    return { project: name, teams, ...(q.branch !== undefined ? { branch: q.branch } : {}), limit, builds };
  });

  app.get('/v1/builds/:id/links', async (req): Promise<BuildLinks> => {
    const r = await deps.visibleBuild(req);
    return { grafana: grafana ? grafana(r) : null };
  });
}

const PLACEHOLDERS = ['build', 'team', 'pool', 'from', 'to'] as const;

/**
 * VMLB_GRAFANA_URL: an http(s) URL with any of {build} {team} {pool} {from} {to} in it (from/to:
 * epoch milliseconds, a minute before the build was submitted and after it ended, or `now`
 * while it runs), e.g. `https://grafana.example/d/vmlb-fleet/vmlb?var-team={team}&var-pool={pool}&from={from}&to={to}`.
 * A URL with none of them gets `from` and `to` added as query parameters (as Grafana reads them).
 * @throws VmlbError FLEET_CONFIG for anything else
 */
export function grafanaTemplate(template: string): (r: Pick<StoredRecord, 'id' | 'team' | 'pool' | 'createdAt' | 'finishedAt'>) => string {
  let url: URL;
  try {
    url = new URL(template.replace(/\{(\w+)\}/g, 'x'));
  } catch {
    throw new VmlbError('FLEET_CONFIG', `VMLB_GRAFANA_URL: "${template}" is not a URL`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new VmlbError('FLEET_CONFIG', `VMLB_GRAFANA_URL must be an http:// or https:// URL (not ${template})`);
  const unknown = [...template.matchAll(/\{(\w+)\}/g)].map((m) => m[1]!).filter((p) => !(PLACEHOLDERS as readonly string[]).includes(p));
  if (unknown.length) throw new VmlbError('FLEET_CONFIG', `VMLB_GRAFANA_URL: unknown placeholder {${unknown[0]}} (known: ${PLACEHOLDERS.map((p) => `{${p}}`).join(' ')})`);
  const bare = !/\{(build|team|pool|from|to)\}/.test(template);
  return (r) => {
    const from = String(Date.parse(r.createdAt) - 60_000);
    const to = r.finishedAt ? String(Date.parse(r.finishedAt) + 60_000) : 'now';
    const values: Record<(typeof PLACEHOLDERS)[number], string> = { build: r.id, team: r.team, pool: r.pool ?? DEFAULT_POOL, from, to };
    if (bare) {
      const u = new URL(template);
      u.searchParams.set('from', from);
      u.searchParams.set('to', to);
      return u.href;
    }
    return template.replace(/\{(build|team|pool|from|to)\}/g, (_, k: (typeof PLACEHOLDERS)[number]) => encodeURIComponent(values[k]));
  };
}
