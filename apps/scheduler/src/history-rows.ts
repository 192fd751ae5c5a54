import type { BuildState, BuildSummary, LayerRecord } from '@vmlb/fleet';
import { summarize, type StoredRecord } from './build-records.js';

/**
 * A build record as the history's rows and back (build-history.ts): the builds row, with the
 * record minus its layers in `doc` beside the columns that lists filter and sort on, and one
 * build_layers row per layer; the one statement that writes them; and the listing's line.
 */

/** A record as rows: the builds row (with the record minus its layers in doc) and its layers. */
export function rowOf(r: StoredRecord) {
  const { layers, ...rest } = r;
  const s = summarize(r);
  return {
    id: r.id,
    team: r.team,
    pool: r.pool ?? 'default',
    state: r.state,
    project_hash: r.project,
    project_name: r.projectName ?? null,
    git_commit: r.gitCommit ?? null,
    git_branch: r.gitBranch ?? null,
    git_dirty: r.gitDirty ?? null,
    submitter: r.submitter ?? null,
    created_at: r.createdAt,
    finished_at: r.finishedAt ?? null,
    layer_count: s.layers,
    hits: s.hits,
    built: s.built,
    lookups: s.lookups,
    error: r.error ?? null,
    doc: rest,
    layers: layers.map((l: LayerRecord) => ({ idx: l.index, name: l.name, key: l.key, status: l.status, worker: l.worker ?? null, seconds: l.seconds ?? null, bytes: l.bytes ?? null, doc: l })),
  };
}

const INPUT = `jsonb_to_recordset($1::jsonb) AS r(id text, team text, pool text, state text, project_hash text, project_name text, git_commit text,
  git_branch text, git_dirty boolean, submitter text, created_at timestamptz, finished_at timestamptz, layer_count int, hits int, built int, lookups int, error text, doc jsonb, layers jsonb)`;
const COLUMNS = 'id, team, pool, state, project_hash, project_name, git_commit, git_branch, git_dirty, submitter, created_at, finished_at, layer_count, hits, built, lookups, error, doc';

/** The one write: builds upserted (a final row only by the same state), their layers with them, their teams. */
export const WRITE_SQL = (mode: 'update' | 'skip' | 'force') => `
  WITH input AS (SELECT * FROM ${INPUT}),
  up AS (
    INSERT INTO builds (${COLUMNS}) SELECT ${COLUMNS} FROM input
    ${
      mode === 'skip'
        ? 'ON CONFLICT (id) DO NOTHING'
        : `ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, finished_at = EXCLUDED.finished_at, layer_count = EXCLUDED.layer_count,
             hits = EXCLUDED.hits, built = EXCLUDED.built, lookups = EXCLUDED.lookups, error = EXCLUDED.error, doc = EXCLUDED.doc, updated_at = now()
           ${mode === 'force' ? '' : `WHERE builds.state NOT IN ('done', 'failed', 'cancelled') OR builds.state = EXCLUDED.state`}`
    }
    RETURNING id
  ),
  layers AS (
    INSERT INTO build_layers (build_id, idx, name, key, status, worker, seconds, bytes, doc)
    SELECT i.id, l.idx, l.name, l.key, l.status, l.worker, l.seconds, l.bytes, l.doc
    FROM input i JOIN up ON up.id = i.id, jsonb_to_recordset(i.layers) AS l(idx int, name text, key text, status text, worker text, seconds double precision, bytes bigint, doc jsonb)
    ON CONFLICT (build_id, idx) DO UPDATE SET status = EXCLUDED.status, worker = EXCLUDED.worker, seconds = EXCLUDED.seconds, bytes = EXCLUDED.bytes, doc = EXCLUDED.doc
    WHERE build_layers.doc IS DISTINCT FROM EXCLUDED.doc
  ),
  teams AS (INSERT INTO build_teams (team) SELECT DISTINCT team FROM input ON CONFLICT DO NOTHING)
  SELECT id FROM up`;

/** A record as stored: its builds row's doc and its layers' docs in order (get, and update under a row lock). */
export const READ_RECORD = `SELECT b.doc, (SELECT jsonb_agg(l.doc ORDER BY l.idx) FROM build_layers l WHERE l.build_id = b.id) AS layers FROM builds b WHERE b.id = $1`;
export type RecordRow = { doc: Omit<StoredRecord, 'layers'>; layers: LayerRecord[] | null };
export const recordOf = (row: RecordRow | undefined): StoredRecord | null => (row ? { ...row.doc, layers: row.layers ?? [] } : null);

/** A build's cache lookups (build-records.ts lookupsOf, docs/metrics.md), stored with it (history v4). */
export const LOOKUPS = 'builds.lookups';

/** The columns a listing line is made of. */
export const SUMMARY = `id, team, pool, state, project_hash, project_name, git_commit, git_branch, git_dirty, submitter, created_at, finished_at, layer_count, hits, built, ${LOOKUPS} AS lookups, error`;

export interface SummaryRow {
  id: string;
  team: string;
  pool: string;
  state: BuildState;
  project_hash: string;
  project_name: string | null;
  git_commit: string | null;
  git_branch: string | null;
  git_dirty: boolean | null;
  submitter: string | null;
  created_at: Date;
  finished_at: Date | null;
  layer_count: number;
  hits: number;
  built: number;
  lookups: number;
  error: string | null;
}

export function summaryOf(r: SummaryRow): BuildSummary {
  const s: BuildSummary = { id: r.id, team: r.team, pool: r.pool, state: r.state, project: r.project_hash, createdAt: r.created_at.toISOString(), layers: r.layer_count, hits: r.hits, built: r.built, lookups: r.lookups };
  if (r.project_name !== null) s.projectName = r.project_name;
  if (r.git_commit !== null) s.gitCommit = r.git_commit;
  if (r.git_branch !== null) s.gitBranch = r.git_branch;
  if (r.git_dirty !== null) s.gitDirty = r.git_dirty;
  if (r.submitter !== null) s.submitter = r.submitter;
  if (r.finished_at) s.finishedAt = r.finished_at.toISOString();
  if (r.error !== null) s.error = r.error;
  return s;
}
