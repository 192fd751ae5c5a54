import type pg from 'pg';

/**
 * The build history's schema, as numbered migrations: each runs once, in order, in one
 * transaction, recorded in `vmlb_schema_migrations`. A scheduler applies the missing ones at
 * start-up under an advisory lock, so schedulers starting together do not race. A migration is
 * never edited once released: a change is a new one at the end.
 */
export const MIGRATIONS: ReadonlyArray<{ version: number; name: string; sql: string }> = [
  {
    version: 1,
    name: 'builds, their layers, the teams with builds',
    sql: `
      CREATE EXTENSION IF NOT EXISTS pg_trgm;

      -- One row per build: the columns lists, filters, search and series read; the whole record
      -- (without its layers) in doc.
      CREATE TABLE builds (
        id            text PRIMARY KEY,
        team          text NOT NULL,
        pool          text NOT NULL,
        state         text NOT NULL CHECK (state IN ('queued', 'building', 'done', 'failed', 'cancelled')),
        project_hash  text NOT NULL,
        project_name  text,
        git_commit    text,
        git_branch    text,
        submitter     text,
        created_at    timestamptz NOT NULL,
        finished_at   timestamptz,
        seconds       double precision GENERATED ALWAYS AS (extract(epoch FROM finished_at - created_at)) STORED,
        layer_count   integer NOT NULL,
        hits          integer NOT NULL,
        built         integer NOT NULL,
        error         text,
        search        text GENERATED ALWAYS AS (lower(coalesce(project_name, '') || ' ' || coalesce(git_branch, '') || ' ' || coalesce(git_commit, '') || ' ' || coalesce(submitter, ''))) STORED,
        doc           jsonb NOT NULL,
        updated_at    timestamptz NOT NULL DEFAULT now()
      );
      CREATE INDEX builds_team_time ON builds (team, created_at DESC, id DESC);
      CREATE INDEX builds_time ON builds (created_at DESC, id DESC) INCLUDE (team, layer_count, hits, seconds);
      CREATE INDEX builds_team_project ON builds (team, project_name, created_at DESC);
      CREATE INDEX builds_team_branch ON builds (team, git_branch, created_at DESC);
      CREATE INDEX builds_commit ON builds (git_commit text_pattern_ops);
      CREATE INDEX builds_submitter ON builds (submitter, created_at DESC);
      CREATE INDEX builds_state_time ON builds (state, created_at DESC) WHERE state <> 'done';
      CREATE INDEX builds_search ON builds USING gin (search gin_trgm_ops);

      -- One row per layer of a build: its key (which builds used a layer), outcome and numbers.
      CREATE TABLE build_layers (
        build_id  text NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
        idx       integer NOT NULL,
        name      text NOT NULL,
        key       text NOT NULL,
        status    text NOT NULL,
        worker    text,
        seconds   double precision,
        bytes     bigint,
        doc       jsonb NOT NULL,
        PRIMARY KEY (build_id, idx)
      );
      CREATE INDEX build_layers_key ON build_layers (key);

      -- Every team that ever submitted (a DISTINCT over builds would read them all).
      CREATE TABLE build_teams (team text PRIMARY KEY);

      -- Imports of the shared store's records from before (builds/*.json), once per store.
      CREATE TABLE history_imports (
        source    text PRIMARY KEY,
        records   integer NOT NULL,
        at        timestamptz NOT NULL DEFAULT now()
      );
    `,
  },
  {
    version: 2,
    name: 'indexes for a team\'s search and state filters at a million builds',
    sql: `
      -- A team's search (team = $1 AND search LIKE '%…%'): one GIN over both, so the index
      -- answers only that team's matches. With v1's search-only GIN and builds_team_* the
      -- planner ANDs two bitmaps, and a common word's is every team's matches (60,000+ of a
      -- million rows). It answers a search over every team too (the second column alone), so
      -- it replaces builds_search. btree_gin gives GIN its text = operator; like pg_trgm it is
      -- a trusted contrib extension (the database's owner may create it).
      CREATE EXTENSION IF NOT EXISTS btree_gin;
      CREATE INDEX builds_team_search ON builds USING gin (team, search gin_trgm_ops);
      DROP INDEX builds_search;

      -- A team's failed, cancelled or active builds, newest first, read straight off the index
      -- (v1's builds_state_time is every team's: a team's page of failed builds ANDed it with
      -- the team's rows).
      CREATE INDEX builds_team_state_time ON builds (team, state, created_at DESC, id DESC) WHERE state <> 'done';
    `,
  },
  {
    version: 3,
    name: 'whether a build\'s work tree was dirty; a project\'s last builds newest first',
    sql: `
      -- vmlb submit says whether the project's folder had uncommitted changes (null: not a git
      -- work tree, or a record from before).
      ALTER TABLE builds ADD COLUMN git_dirty boolean;
      -- A team's dirty builds, newest first (the clean ones are most: builds_team_time serves them).
      CREATE INDEX builds_team_dirty_time ON builds (team, created_at DESC, id DESC) WHERE git_dirty;
      -- A project's trend (its last N builds, and of one branch): v1's builds_team_project has no
      -- id to break ties and no branch; this one answers both straight off the index.
      CREATE INDEX builds_team_project_branch_time ON builds (team, project_name, git_branch, created_at DESC, id DESC);
    `,
  },
  {
    version: 4,
    name: 'a build\'s cache lookups stored with it, and in the series index',
    sql: `
      -- A build's lookups (build-records.ts lookupsOf: its hits, built and failed layers), written
      -- with the record, so that a list or a series adds a column instead of counting each
      -- build's failed layers (a subquery per row, which also kept the series off its index).
      ALTER TABLE builds ADD COLUMN lookups int NOT NULL DEFAULT 0;
      UPDATE builds b SET lookups = b.hits + b.built
        + (SELECT count(*)::int FROM build_layers l WHERE l.build_id = b.id AND l.status = 'failed');
      -- The series reads a range of time and these columns only: an index-only scan.
      CREATE INDEX builds_time_series ON builds (created_at DESC, id DESC) INCLUDE (team, layer_count, lookups, hits, seconds);
      DROP INDEX builds_time;
    `,
  },
];

/** An arbitrary constant: the advisory lock the migrations (and the import) run under. */
export const MIGRATION_LOCK = 0x766d6c62;

/** Applies the migrations the database lacks; returns the versions applied now. */
export async function migrate(pool: pg.Pool): Promise<number[]> {
  const client = await pool.connect();
  const applied: number[] = [];
  try {
    await client.query('BEGIN');
    await client.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK]);
    await client.query(`CREATE TABLE IF NOT EXISTS vmlb_schema_migrations (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`);
    const done = new Set((await client.query<{ version: number }>('SELECT version FROM vmlb_schema_migrations')).rows.map((r) => r.version));
    const known = Math.max(...MIGRATIONS.map((m) => m.version));
    const newest = Math.max(0, ...done);
    if (newest > known) throw new Error(`the database's schema is at version ${newest}, newer than this scheduler knows (${known}): run a scheduler as new as the others`);
    for (const m of MIGRATIONS) {
      if (done.has(m.version)) continue;
      await client.query(m.sql);
      await client.query('INSERT INTO vmlb_schema_migrations (version, name) VALUES ($1, $2)', [m.version, m.name]);
      applied.push(m.version);
    }
    await client.query('COMMIT');
    return applied;
  } catch (e) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw e;
  } finally {
    client.release();
  }
}
