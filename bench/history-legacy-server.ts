/** The store index of before, served as the scheduler served it (history-scale's comparison). */
import Fastify, { type FastifyRequest } from 'fastify';
import type { BuildSummary } from '@vmlb/fleet';
import { BUILD_ID, FINAL_STATES, type StoreIndexRecords } from '../apps/scheduler/src/build-records.js';
import { hitRateSeries } from '../apps/scheduler/src/cache-stats.js';
import { HttpError, noSuchBuild, unauthorized } from '../apps/scheduler/src/http-error.js';
import { publicRecord } from '../apps/scheduler/src/public-record.js';
import { TEAM_NAME, Teams, type Team } from '../apps/scheduler/src/teams.js';

/**
 * GET /v1/builds, GET /v1/builds/:id and GET /v1/stats/cache as scheduler.ts and
 * insight-routes.ts had them before the history (git show dcebfbf^), over StoreIndexRecords: a
 * listing is the asked teams' indexes (kept in memory once read) filtered by pool and state,
 * sorted, cut at `limit`; other parameters (q, project, branch, before…) were not there and are
 * ignored. No build is followed here, so the live overlay of then has nothing to do.
 */
export async function legacyServer(teams: Teams, records: StoreIndexRecords): Promise<{ url: string; close: () => Promise<void> }> {
  const app = Fastify({ logger: false });
  app.decorateRequest('team', null);
  app.addHook('onRequest', async (req) => {
    const token = Teams.bearer(req.headers.authorization);
    const team = token ? teams.authenticate(token) : null;
    if (!team) throw unauthorized();
    req.team = team;
  });
  app.setErrorHandler(async (err: Error, _req, reply) => {
    if (err instanceof HttpError) return reply.status(err.status).send({ error: { code: err.code, message: err.message } });
    return reply.status(500).send({ error: { code: 'INTERNAL', message: err.message } });
  });
  const listedTeams = async (req: FastifyRequest, asked: string | undefined): Promise<string[]> => {
    const team = req.team as Team;
    if (asked !== undefined && asked !== team.team && !team.admin) throw new HttpError(403, 'FORBIDDEN', 'not your team');
    const recorded = team.admin ? await records.teams() : [];
    if (asked === undefined) return team.admin ? recorded : [team.team];
    if (!TEAM_NAME.test(asked) || !(teams.names.includes(asked) || recorded.includes(asked))) throw new HttpError(400, 'NO_SUCH_TEAM', `there is no team "${asked}"`);
    return [asked];
  };
  app.get('/v1/builds', async (req) => {
    const q = req.query as { state?: string; team?: string; pool?: string; limit?: string };
    const limit = q.limit === undefined ? 50 : Number(q.limit);
    let builds: BuildSummary[] = [];
    for (const t of await listedTeams(req, q.team)) builds.push(...(await records.list(t)));
    if (q.pool) builds = builds.filter((b) => (b.pool ?? 'default') === q.pool);
    if (q.state === 'active') builds = builds.filter((b) => !FINAL_STATES.has(b.state));
    else if (q.state) builds = builds.filter((b) => b.state === q.state);
    builds.sort((a, b) => (a.createdAt < b.createdAt ? 1 : a.createdAt > b.createdAt ? -1 : 0));
    return { builds: builds.slice(0, limit) };
  });
  app.get('/v1/builds/:id', async (req) => {
    const { id } = req.params as { id: string };
    if (!BUILD_ID.test(id)) throw noSuchBuild(id);
    const r = await records.get(id);
    const team = req.team as Team;
    if (!r || (r.team !== team.team && !team.admin)) throw noSuchBuild(id);
    return publicRecord(r);
  });
  app.get('/v1/stats/cache', async (req) => {
    const q = req.query as { hours?: string; bucketMinutes?: string; team?: string };
    const hours = q.hours === undefined ? 24 : Number(q.hours);
    const bucketMinutes = q.bucketMinutes === undefined ? 60 : Number(q.bucketMinutes);
    const shown = await listedTeams(req, q.team);
    const builds = (await Promise.all(shown.map((t) => records.list(t)))).flat();
    return hitRateSeries(builds, { now: Date.now(), hours, bucketSeconds: bucketMinutes * 60, teams: shown });
  });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const addr = app.server.address();
  return { url: `http://127.0.0.1:${typeof addr === 'object' && addr ? addr.port : 0}`, close: () => app.close() };
}
