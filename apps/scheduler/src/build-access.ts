import type { FastifyRequest } from 'fastify';
import { BUILD_ID, type StoredRecord } from './build-records.js';
import type { BuildFollower } from './build-follower.js';
import type { BuildHistory } from './build-history.js';
import { HttpError, noSuchBuild } from './http-error.js';
import { TEAM_NAME, type Teams } from './teams.js';

/** What a team's token may see, for every route that reads builds. */
export interface BuildAccess {
  /** A build the asking team may see (`:id` of the route): its own, or any for an admin; anything else is 404. */
  visibleBuild(req: FastifyRequest): Promise<StoredRecord>;
  /**
   * The teams a listing covers: the one asked for (a team's token may ask only for its own; an
   * admin's for any team of the teams file or with builds on record, else 400), or without one
   * the asking team's, every team's with builds for an admin.
   */
  listedTeams(req: FastifyRequest, asked: string | undefined, verb: string): Promise<string[]>;
}

export function buildAccess(deps: { records: BuildHistory; follower: BuildFollower; teams: Teams }): BuildAccess {
  const { records, follower, teams } = deps;
  return {
    async visibleBuild(req) {
      const { id } = req.params as { id: string };
      if (!BUILD_ID.test(id)) throw noSuchBuild(id);
      // A build followed here is fresher in memory than in the history.
      const r = follower.live(id) ?? (await records.get(id));
      if (!r || (r.team !== req.team!.team && !req.team!.admin)) throw noSuchBuild(id);
      return r;
    },
    async listedTeams(req, asked, verb) {
      const team = req.team!;
      if (asked !== undefined && asked !== team.team && !team.admin) {
        throw new HttpError(403, 'FORBIDDEN', `only an admin token ${verb} another team's builds (this token is team ${team.team}'s)`);
      }
      const recorded = team.admin ? await records.teams() : [];
      if (asked === undefined) return team.admin ? recorded : [team.team];
      if (!TEAM_NAME.test(asked) || !(teams.names.includes(asked) || recorded.includes(asked))) {
        throw new HttpError(400, 'NO_SUCH_TEAM', `there is no team "${asked}" (teams: ${[...new Set([...teams.names, ...recorded])].sort().join(', ')})`);
      }
      return [asked];
    },
  };
}
