import pg from 'pg';
import { VmlbError } from '@vmlb/layer-engine';
import type { BuildState, BuildSummary, HitRateBucket, HitRateSeries, TrendBuild, TrendLayer } from '@vmlb/fleet';
import { BUILD_ID, FINAL_STATES, type StoredRecord } from './build-records.js';
import { migrate } from './history-migrations.js';
import { LOOKUPS, READ_RECORD, SUMMARY, WRITE_SQL, recordOf, rowOf, summaryOf, type RecordRow, type SummaryRow } from './history-rows.js';

/**
 * Build history in PostgreSQL (VMLB_DATABASE_URL): every build's record, its layers, and what
 * lists, filters, search and the hit-rate and duration series read. Any number of schedulers
 * write it, each write one statement (so one transaction) — see `putMany`. Blobs, logs and
 * images stay in the shared store; Redis keeps only the queue and live state.
 *
 * A record may go from one unfinished state to another, or to a final one, but a final record
 * is never overwritten by another state: a scheduler that folded a build's events a moment too
 * late (after another marked it cancelled, or after it lost the lead) finds its write refused
 * (`put` answers false) and reads the record again.
 */

export interface HistoryQuery {
  /** The teams the listing covers; null: every team. */
  teams: string[] | null;
  pool?: string;
  state?: BuildState | 'active';
  /** Text in the project name, git branch, git commit or submitter (case-insensitive). */
  q?: string;
  /** Exactly this project name / branch / submitter. */
  project?: string;
  branch?: string;
  /** A git commit or its prefix. */
  commit?: string;
  submitter?: string;
  /** Only builds whose folder was dirty (true) / clean (false) in git. */
  dirty?: boolean;
  /** Submitted at or after / before (ISO times). */
  since?: string;
  until?: string;
  /** The page after this build (the last line of the previous page): `createdAt` and `id`. */
  before?: { createdAt: string; id: string };
  limit: number;
}

export interface SeriesQuery {
  teams: string[] | null;
  from: number;
  to: number;
  bucketSeconds: number;
}

const FINAL = [...FINAL_STATES];

const escapeLike = (s: string) => s.replace(/[\\%_]/g, (c) => `\\${c}`);

/** Where a database URL points, without its password, for messages. */
export function describeDatabase(url: string): string {
  try {
    const u = new URL(url);
    return `${u.hostname}${u.port ? `:${u.port}` : ''}${u.pathname}`;
  } catch {
    return 'VMLB_DATABASE_URL';
  }
}

export class BuildHistory {
  private constructor(
    readonly pool: pg.Pool,
    private readonly where: string,
  ) {}

  /** Connects (a pool of `max` connections), applies the missing migrations. */
  static async open(url: string, o: { max?: number } = {}): Promise<BuildHistory> {
    const pool = new pg.Pool({
      connectionString: url,
      max: o.max ?? 10,
      connectionTimeoutMillis: 10_000,
      idleTimeoutMillis: 30_000,
      // No JIT compiling: PostgreSQL's default compiles a plan estimated above 100,000, which
      // costs 10–300 ms, more than any of these queries takes to run (the series' plan at
      // hundreds of buckets is estimated past it: 720 hourly buckets over a million builds
      // took 280 ms more). Run on each new connection before the pool hands it out.
      onConnect: async (client) => {
        await client.query('SET jit = off').catch(() => undefined);
      },
    });
    // An idle connection the server dropped (a restart) is replaced on the next query; say nothing here.
    pool.on('error', () => undefined);
    const h = new BuildHistory(pool, describeDatabase(url));
    try {
      await migrate(pool);
    } catch (e) {
      await pool.end().catch(() => undefined);
      throw h.failure(e, 'preparing the build history');
    }
    return h;
  }

  /** A database error as one line naming the database. */
  failure(e: unknown, doing: string): VmlbError {
    if (e instanceof VmlbError) return e;
    const err = e as Error & { code?: string };
    const why = err.code === 'ECONNREFUSED' ? 'nothing listens there' : err.code === '3D000' ? 'no such database' : err.code === '28P01' ? 'wrong password' : err.message;
    return new VmlbError('HISTORY_UNAVAILABLE', `${doing}: PostgreSQL at ${this.where}: ${why}`, { retryable: err.code !== '3D000' && err.code !== '28P01' });
  }

  private async query<R extends pg.QueryResultRow>(doing: string, sql: string, args: unknown[] = []): Promise<pg.QueryResult<R>> {
    try {
      return await this.pool.query<R>(sql, args);
    } catch (e) {
      throw this.failure(e, doing);
    }
  }

  async ping(): Promise<void> {
    await this.query('asking the build history', 'SELECT 1');
  }

  async get(id: string): Promise<StoredRecord | null> {
    if (!BUILD_ID.test(id)) return null;
    const r = await this.query<RecordRow>(`reading build ${id}`, READ_RECORD, [id]);
    return recordOf(r.rows[0]);
  }

  /** Writes a record; false when refused (it is final in the history with another state). */
  async put(record: StoredRecord): Promise<boolean> {
    return (await this.putMany([record])) === 1;
  }

  /**
   * Writes records in one statement (one transaction): new ones inserted, known ones updated
   * unless final with another state; `skip`: known ones left as they are (the import). Returns
   * how many were written.
   */
  async putMany(records: StoredRecord[], mode: 'update' | 'skip' = 'update'): Promise<number> {
    if (records.length === 0) return 0;
    const r = await this.query(`writing ${records.length === 1 ? `build ${records[0]!.id}` : `${records.length} build records`}`, WRITE_SQL(mode), [JSON.stringify(records.map(rowOf))]);
    return r.rowCount ?? 0;
  }

  /**
   * Changes a record under a row lock (SELECT … FOR UPDATE): `change` gets the stored record and
   * returns the new one, or null to leave it. Returns what is stored afterwards.
   */
  async update(id: string, change: (r: StoredRecord) => StoredRecord | null): Promise<StoredRecord | null> {
    const client = await this.pool.connect().catch((e: unknown) => {
      throw this.failure(e, `changing build ${id}`);
    });
    try {
      await client.query('BEGIN');
      const current = recordOf((await client.query<RecordRow>(`${READ_RECORD} FOR UPDATE OF b`, [id])).rows[0]);
      if (!current) {
        await client.query('ROLLBACK');
        return null;
      }
      const next = change(structuredClone(current));
      if (!next) {
        await client.query('ROLLBACK');
        return current;
      }
      await client.query(WRITE_SQL('force'), [JSON.stringify([rowOf(next)])]);
      await client.query('COMMIT');
      return next;
    } catch (e) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw this.failure(e, `changing build ${id}`);
    } finally {
      client.release();
    }
  }

  /** Lines of builds, newest first (see HistoryQuery). */
  async list(q: HistoryQuery): Promise<BuildSummary[]> {
    const args: unknown[] = [];
    const p = (v: unknown) => {
      args.push(v);
      return `$${args.length}`;
    };
    const where: string[] = [];
    if (q.teams) where.push(q.teams.length === 1 ? `team = ${p(q.teams[0])}` : `team = ANY(${p(q.teams)})`);
    if (q.pool) where.push(`pool = ${p(q.pool)}`);
    if (q.state === 'active') where.push(`state IN ('queued', 'building')`);
    else if (q.state) where.push(`state = ${p(q.state)}`);
    if (q.project !== undefined) where.push(`project_name = ${p(q.project)}`);
    if (q.branch !== undefined) where.push(`git_branch = ${p(q.branch)}`);
    if (q.commit !== undefined) where.push(`git_commit LIKE ${p(`${escapeLike(q.commit.toLowerCase())}%`)}`);
    if (q.submitter !== undefined) where.push(`submitter = ${p(q.submitter)}`);
    if (q.dirty === true) where.push('git_dirty');
    else if (q.dirty === false) where.push('git_dirty = false');
    if (q.q) where.push(`search LIKE ${p(`%${escapeLike(q.q.toLowerCase())}%`)}`);
    if (q.since) where.push(`created_at >= ${p(q.since)}`);
    if (q.until) where.push(`created_at < ${p(q.until)}`);
    if (q.before) where.push(`(created_at, id) < (${p(q.before.createdAt)}::timestamptz, ${p(q.before.id)})`);
    const sql = `SELECT ${SUMMARY} FROM builds ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY created_at DESC, id DESC LIMIT ${p(q.limit)}`;
    const r = await this.query<SummaryRow>('listing builds', sql, args);
    return r.rows.map(summaryOf);
  }

  /**
   * A project's last `limit` builds (of one branch, if given), newest first, each with its
   * layers' outcome and seconds: the dashboard's project page. Per team one range of the index
   * on (team, project_name[, git_branch], created_at DESC, id DESC), read to its first `limit`
   * rows, then the layers of those builds by their primary key.
   */
  async trend(q: { teams: string[]; project: string; branch?: string; limit: number }): Promise<TrendBuild[]> {
    if (q.teams.length === 0) return [];
    const args: unknown[] = [q.teams, q.project, q.limit];
    const branch = q.branch === undefined ? '' : `AND git_branch = $${args.push(q.branch)}`;
    const r = await this.query<{
      id: string; team: string; state: BuildState; created_at: Date; finished_at: Date | null; seconds: number | null;
      git_branch: string | null; git_commit: string | null; git_dirty: boolean | null; submitter: string | null; hits: number; built: number; lookups: number; layers: TrendLayer[] | null;
    }>(
      `reading project ${q.project}'s builds`,
      `SELECT b.id, b.team, b.state, b.created_at, b.finished_at, b.seconds, b.git_branch, b.git_commit, b.git_dirty, b.submitter, b.hits, b.built, b.lookups,
         (SELECT jsonb_agg(jsonb_build_object('index', l.idx, 'name', l.name, 'status', l.status, 'seconds', l.seconds, 'key', l.key) ORDER BY l.idx)
          FROM build_layers l WHERE l.build_id = b.id) AS layers
       FROM unnest($1::text[]) AS t(team),
       LATERAL (SELECT * FROM builds WHERE team = t.team AND project_name = $2 ${branch} ORDER BY created_at DESC, id DESC LIMIT $3) AS b
       ORDER BY b.created_at DESC, b.id DESC
       LIMIT $3`,
      args,
    );
    return r.rows.map((x) => {
      const b: TrendBuild = { id: x.id, team: x.team, state: x.state, createdAt: x.created_at.toISOString(), seconds: x.seconds === null ? null : Math.round(x.seconds * 10) / 10, hits: x.hits, built: x.built, lookups: x.lookups, layers: x.layers ?? [] };
      if (x.finished_at) b.finishedAt = x.finished_at.toISOString();
      if (x.git_branch !== null) b.gitBranch = x.git_branch;
      if (x.git_commit !== null) b.gitCommit = x.git_commit;
      if (x.git_dirty !== null) b.gitDirty = x.git_dirty;
      if (x.submitter !== null) b.submitter = x.submitter;
      return b;
    });
  }

  /** Every team with builds on record. */
  async teams(): Promise<string[]> {
    return (await this.query<{ team: string }>('listing the teams with builds', 'SELECT team FROM build_teams ORDER BY team')).rows.map((r) => r.team);
  }

  /** Every build not finished: what a scheduler taking the lead follows. */
  async unfinishedIds(): Promise<string[]> {
    return (await this.query<{ id: string }>('listing unfinished builds', `SELECT id FROM builds WHERE state IN ('queued', 'building') ORDER BY created_at`)).rows.map((r) => r.id);
  }

  /** Of these builds, the ones that are final in the history, with their state. */
  async finalStates(ids: string[]): Promise<Map<string, BuildState>> {
    if (ids.length === 0) return new Map();
    const r = await this.query<{ id: string; state: BuildState }>('reading build states', `SELECT id, state FROM builds WHERE id = ANY($1) AND state = ANY($2)`, [ids, FINAL]);
    return new Map(r.rows.map((x) => [x.id, x.state]));
  }

  /**
   * The layer cache hit rate and build durations over time: per bucket of bucketSeconds (aligned
   * to multiples of it since the epoch), overall and per team, each build counted in the bucket
   * of its submission (as hitRateSeries in cache-stats.ts, which this replaces for the fleet).
   */
  async series(q: SeriesQuery & { teamsShown: string[] }): Promise<HitRateSeries> {
    const size = q.bucketSeconds * 1000;
    const end = Math.floor(q.to / size) * size + size;
    const count = Math.max(1, Math.ceil((q.to - q.from) / size));
    const start = end - count * size;
    const args: unknown[] = [new Date(start).toISOString(), count, q.bucketSeconds];
    const teamFilter = q.teams ? `AND team = ANY($4)` : '';
    if (q.teams) args.push(q.teams);
    // One small aggregate per bucket (a range of builds_time or builds_team_time), not one over
    // the whole range: that one sorted every row of it by bucket and team (82,000 rows for 30
    // days of a fleet of a million builds a year, spilling past work_mem) where each bucket's
    // few hundred sort in memory. The percentiles as one array: one sort of a group's seconds.
    // Duration percentiles per team only when the answer is one team's: across a hundred teams
    // they were 12,000 small sorts for 30 days (the admin's view: 270 ms at p99), and what they
    // would show is in the overall series; the teams' counts are one hash aggregate per bucket.
    const perTeamDurations = q.teamsShown.length <= 1;
    const inBucket = `created_at >= $1::timestamptz + s.i * make_interval(secs => $3) AND created_at < $1::timestamptz + (s.i + 1) * make_interval(secs => $3) ${teamFilter}`;
    const percentiles = `percentile_cont('{0.5,0.9}'::float8[]) WITHIN GROUP (ORDER BY seconds)`;
    const perBucket = perTeamDurations
      ? `SELECT team, count(*) AS builds, sum(${LOOKUPS}) AS lookups, sum(hits) AS hits, ${percentiles} AS p
         FROM builds WHERE ${inBucket}
         GROUP BY GROUPING SETS ((team), ())
         HAVING count(*) > 0`
      : `SELECT NULL::text AS team, count(*) AS builds, sum(${LOOKUPS}) AS lookups, sum(hits) AS hits, ${percentiles} AS p
         FROM builds WHERE ${inBucket}
         HAVING count(*) > 0
         UNION ALL
         SELECT team, count(*), sum(${LOOKUPS}), sum(hits), NULL
         FROM builds WHERE ${inBucket}
         GROUP BY team`;
    const r = await this.query<{ team: string | null; i: number; builds: string; lookups: string; hits: string; p: Array<number | null> | null }>(
      'computing the hit-rate series',
      `SELECT x.team, s.i, x.builds, x.lookups, x.hits, x.p
       FROM generate_series(0, $2::int - 1) AS s(i),
       LATERAL (${perBucket}) AS x`,
      args,
    );
    const times = Array.from({ length: count }, (_, i) => new Date(start + i * size).toISOString());
    // A team's buckets carry no duration fields when it has none (the answer of many teams).
    const empty = (durations: boolean): HitRateBucket[] =>
      times.map((t) => (durations ? { t, lookups: 0, hits: 0, rate: null, builds: 0, p50Seconds: null, p90Seconds: null } : { t, lookups: 0, hits: 0, rate: null, builds: 0 }));
    const overall = empty(true);
    const teams: Record<string, HitRateBucket[]> = {};
    for (const t of q.teamsShown) teams[t] = empty(perTeamDurations);
    const tenth = (v: number | null | undefined) => (v === null || v === undefined ? null : Math.round(v * 10) / 10);
    for (const row of r.rows) {
      const series = row.team === null ? overall : (teams[row.team] ??= empty(perTeamDurations));
      const x = series[row.i];
      if (!x) continue;
      x.builds = Number(row.builds);
      x.lookups = Number(row.lookups);
      x.hits = Number(row.hits);
      x.rate = x.lookups ? x.hits / x.lookups : null;
      if (row.team === null || perTeamDurations) {
        x.p50Seconds = tenth(row.p?.[0]);
        x.p90Seconds = tenth(row.p?.[1]);
      }
    }
    return { from: new Date(start).toISOString(), to: new Date(end).toISOString(), bucketSeconds: q.bucketSeconds, overall, teams };
  }

  async close(): Promise<void> {
    await this.pool.end().catch(() => undefined);
  }
}
