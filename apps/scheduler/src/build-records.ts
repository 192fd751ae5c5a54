import { randomBytes } from 'node:crypto';
import type { SharedStore } from '@vmlb/layer-engine';
import { storePaths, type BuildRecord, type BuildState, type BuildSummary } from '@vmlb/fleet';

export type { BuildSummary };
import type { ObjectStore } from './object-store.js';

/**
 * Build records as the scheduler kept them before PostgreSQL (build-history.ts): in the shared
 * store, `builds/<id>.json`, and one index per team, `builds/index/<team>.json` (newest first),
 * rewritten whole on each change. The scheduler no longer writes them: a scheduler imports them
 * into the history once (history-import.ts) and leaves them where they are. The class stays for
 * that import, for tests that make such a store, and as the benchmark's baseline.
 */

/** What the scheduler keeps in a record beyond BuildRecord: where its event stream was folded up to. */
export interface StoredRecord extends BuildRecord {
  /** The last event stream id folded into this record (a restarted scheduler goes on after it). */
  cursor?: string;
}

export const FINAL_STATES: ReadonlySet<BuildState> = new Set(['done', 'failed', 'cancelled']);
export const isFinal = (r: { state: BuildState }) => FINAL_STATES.has(r.state);

/** Build ids: `b`, the time (base 36, so ids sort by age) and 40 random bits. */
export function newBuildId(now = Date.now()): string {
  return `b${now.toString(36).padStart(9, '0')}${randomBytes(5).toString('hex')}`;
}
export const BUILD_ID = /^b[0-9a-z]{8,40}$/;

const indexPath = (team: string) => `builds/index/${team}.json`;

interface IndexFile {
  version: 1;
  team: string;
  builds: BuildSummary[];
}

/**
 * A build's cache lookups, as the metrics count them (docs/metrics.md, "Cache lookups"): every
 * layer whose lookup was settled — a hit (shared or local), built, or failed for good. A layer
 * cancelled before its job ran, or still queued or building, is none (yet).
 */
export function lookupsOf(r: Pick<BuildRecord, 'layers'>): number {
  return r.layers.filter((l) => l.status === 'hit' || l.status === 'done' || l.status === 'failed').length;
}

export function summarize(r: BuildRecord): BuildSummary {
  const s: BuildSummary = {
    id: r.id,
    team: r.team,
    pool: r.pool ?? 'default',
    state: r.state,
    project: r.project,
    createdAt: r.createdAt,
    layers: r.layers.length,
    hits: r.layers.filter((l) => l.status === 'hit').length,
    built: r.layers.filter((l) => l.status === 'done').length,
    lookups: lookupsOf(r),
  };
  // What vmlb submit said of the project (a followed build's line must show it as the history's does).
  for (const k of ['projectName', 'gitCommit', 'gitBranch', 'gitDirty', 'submitter'] as const) if (r[k] !== undefined) (s as unknown as Record<string, unknown>)[k] = r[k];
  if (r.finishedAt) s.finishedAt = r.finishedAt;
  if (r.error) s.error = r.error;
  return s;
}

export class StoreIndexRecords {
  private readonly indexes = new Map<string, Promise<BuildSummary[]>>();
  private readonly writes = new Map<string, Promise<unknown>>();

  constructor(
    private readonly shared: SharedStore,
    private readonly objects: ObjectStore,
  ) {}

  async get(id: string): Promise<StoredRecord | null> {
    if (!BUILD_ID.test(id)) return null;
    return this.shared.getJson<StoredRecord>(storePaths.build(id));
  }

  /** Writes the record, and its line in the team's index when that changed. */
  async put(record: StoredRecord): Promise<void> {
    await this.shared.putJson(storePaths.build(record.id), record);
    await this.updateIndex(record.team, summarize(record));
  }

  /** A team's builds, newest first. */
  async list(team: string): Promise<BuildSummary[]> {
    return [...(await this.index(team))];
  }

  /** Every record's id in the store (`builds/<id>.json`), listed or not in an index. */
  async ids(): Promise<string[]> {
    const names = await this.objects.list('builds/');
    return names.map((n) => /^builds\/(b[0-9a-z]{8,40})\.json$/.exec(n)?.[1]).filter((id): id is string => !!id);
  }

  /** The teams that have an index (every team that ever submitted). */
  async teams(): Promise<string[]> {
    const names = await this.objects.list('builds/index/');
    return names.map((n) => /^builds\/index\/(.+)\.json$/.exec(n)?.[1]).filter((t): t is string => !!t);
  }


  private index(team: string): Promise<BuildSummary[]> {
    let p = this.indexes.get(team);
    if (!p) {
      p = this.shared.getJson<IndexFile>(indexPath(team)).then((f) => f?.builds ?? []);
      p.catch(() => this.indexes.delete(team));
      this.indexes.set(team, p);
    }
    return p;
  }

  private updateIndex(team: string, summary: BuildSummary): Promise<void> {
    const prev = this.writes.get(team) ?? Promise.resolve();
    const next = prev.catch(() => undefined).then(async () => {
      const builds = await this.index(team);
      const i = builds.findIndex((b) => b.id === summary.id);
      if (i >= 0 && JSON.stringify(builds[i]) === JSON.stringify(summary)) return;
      const updated = i >= 0 ? builds.map((b, j) => (j === i ? summary : b)) : [summary, ...builds];
      updated.sort((a, b) => (a.createdAt < b.createdAt ? 1 : a.createdAt > b.createdAt ? -1 : a.id < b.id ? 1 : -1));
      await this.shared.putJson(indexPath(team), { version: 1, team, builds: updated } satisfies IndexFile);
      this.indexes.set(team, Promise.resolve(updated));
    });
    this.writes.set(team, next);
    return next;
  }
}
