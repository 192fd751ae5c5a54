import type { LayerKind } from '@vmlb/layer-engine';

export type BuildState = 'queued' | 'building' | 'done' | 'failed' | 'cancelled';
export type LayerStatus = 'hit' | 'queued' | 'waiting' | 'building' | 'done' | 'failed' | 'cancelled';

export interface LayerRecord {
  index: number;
  name: string;
  kind: LayerKind;
  key: string;
  status: LayerStatus;
  /**
   * For hits: where the layer already was: the shared store (at plan time, or found there by
   * the job), or the local store of the worker that ran its job (`local`: a `# noshare` layer it
   * had built before). docs/metrics.md, "Cache lookups".
   */
  source?: 'shared' | 'local';
  /** For a hit in a pool the build's pool trusts for reading: that pool (shown `CACHED (shared: POOL)`). */
  pool?: string;
  worker?: string;
  /** When a worker started on it (ISO); with finishedAt, its bar on the build's time line. */
  startedAt?: string;
  finishedAt?: string;
  seconds?: number;
  bytes?: number;
  /** Bytes the worker that built it pulled from the shared store for its parent chain. */
  pulledBytes?: number;
  exitCode?: number;
  logTail?: string;
}

/** A build's record, `builds/<id>.json` in the shared store: the history that survives Redis. */
export interface BuildRecord {
  version: 1;
  id: string;
  team: string;
  /** The team's pool when it was submitted (pools.ts); absent in records from before pools: `default`. */
  pool?: string;
  /** sha256 of the uploaded project. */
  project: string;
  /**
   * What `vmlb submit` says of the project (each optional, at most 200 characters, printable):
   * its name (the folder's, or --name), the git commit and branch of its folder, and who
   * submitted it: the name of the team's token it came with (a teams file entry's `name`), else
   * what the CLI says (VMLB_SUBMITTER, else user@host). The team is the token's; these are what
   * history's filters and search look at, not credentials.
   */
  projectName?: string;
  gitCommit?: string;
  gitBranch?: string;
  /** The project's folder had changes git had not committed (modified, staged or untracked files). */
  gitDirty?: boolean;
  submitter?: string;
  createdAt: string;
  finishedAt?: string;
  state: BuildState;
  layers: LayerRecord[];
  /**
   * What the build makes: its chain of layers in the shared store (`chain`, the default: done
   * when its last layer is there; `vmlb pull` fetches the layers it lacks), or besides that one
   * flattened image (`flattened`: `vmlb submit --flatten`; done when the image is written).
   * Absent in records from before: `flattened`.
   */
  output?: 'chain' | 'flattened';
  /** The flattened image, once there is one (asked for at submission, or later by a download). */
  image: { key: string; path: string; bytes: number } | null;
  /** The flatten job, once a worker took it. */
  flatten?: { worker: string; startedAt: string; finishedAt?: string; seconds?: number };
  /** Why it failed, in one line (`layer 02_app exited with status 3`); the log is the layer's. */
  error?: string;
  /**
   * What the API adds when it answers, never stored: e.g. that no worker of the build's pool is
   * live, so an unfinished build waits (`no worker of pool default is live: …`).
   */
  warning?: string;
}

/**
 * What a worker appends to `vmlb:events:<buildId>`: the engine's events for the layer it runs
 * (BuildEvent, JSON in field `e`), and job transitions.
 */
export type FleetEvent =
  | {
      type: 'job';
      at: number;
      index: number;
      status: LayerStatus;
      worker: string;
      seconds?: number;
      bytes?: number;
      pulledBytes?: number;
      exitCode?: number;
      logTail?: string;
      message?: string;
      /** On `done`: the worker did not build the layer, its own store had it (a hit, `source: 'local'`). */
      source?: 'local';
    }
  | { type: 'flatten'; at: number; status: 'building' | 'done' | 'failed'; worker: string; image?: { key: string; path: string; bytes: number }; message?: string }
  | { type: 'engine'; at: number; index: number; worker: string; event: import('@vmlb/layer-engine').BuildEvent }
  /** The scheduler that leads stored the build's final record (the stream's last event). */
  | { type: 'ended'; at: number; state: BuildState };
