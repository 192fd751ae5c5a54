import type { LayerManifest } from '@vmlb/layer-engine';
import type { BuildState, LayerStatus } from './build-record.js';
import type { WorkerRegistration } from './workers-registry.js';

/**
 * What the scheduler's read-only API answers beside build records (docs/fleet.md): the types
 * the scheduler writes and the web dashboard reads (type-only: nothing of this package runs in
 * the browser).
 */

/** A line of `GET /v1/builds`: a build without its layers. */
export interface BuildSummary {
  id: string;
  team: string;
  /** The pool it was built in (`default` for records from before pools). */
  pool: string;
  state: BuildState;
  project: string;
  projectName?: string;
  gitCommit?: string;
  gitBranch?: string;
  gitDirty?: boolean;
  submitter?: string;
  createdAt: string;
  finishedAt?: string;
  layers: number;
  /** Layers taken from a cache: the shared store (at plan time or by their job) or a worker's own store. */
  hits: number;
  built: number;
  /**
   * Cache lookups (docs/metrics.md): the layers whose lookup was settled, hits + built + failed
   * for good (a layer cancelled before its job ran is none). Absent in old stored indexes: `layers`.
   */
  lookups?: number;
  error?: string;
  /** Added by the API when it answers (see BuildRecord.warning). */
  warning?: string;
}

/** A layer of `GET /v1/builds/:id/chain` (what `vmlb pull` fetches): its shared manifest and blob route while the shared store has it. */
export interface BuildChainLayer {
  index: number;
  name: string;
  key: string;
  status: LayerStatus;
  /** The pool whose namespace holds it (its own, or the trusted pool it was a hit in). */
  pool: string | null;
  manifest: LayerManifest | null;
  /** `/v1/builds/:id/layers/:index/blob`, or null when the shared store lacks the layer. */
  blob: string | null;
}

/** `GET /v1/builds/:id/chain` */
export interface BuildChain {
  id: string;
  state: BuildState;
  pool: string;
  layers: BuildChainLayer[];
}

/** `GET /v1/whoami` */
export interface WhoAmI {
  team: string;
  admin: boolean;
  pool: string;
}

/** A worker as `GET /v1/fleet` lists it: live, or lost (its heartbeat stopped) within a day. */
export interface SeenWorker extends WorkerRegistration {
  /** Its registration has not expired: the heartbeat goes on. */
  live: boolean;
}

export interface FleetWorker extends SeenWorker {
  /** Seconds since its last heartbeat, by the scheduler's clock. */
  heartbeatAgeSeconds: number;
}

/** `GET /v1/fleet` */
export interface FleetView {
  workers: FleetWorker[];
  /** BullMQ job counts by state. */
  queues: { layers: Record<string, number>; flatten: Record<string, number> };
  /** The same per pool shown (the asking team's; every pool for an admin). */
  pools: Array<{ pool: string; layers: Record<string, number>; flatten: Record<string, number>; queued: number; oldestQueuedSeconds: number | null }>;
  /** Jobs waiting to run (waiting, prioritized, delayed) in both queues. */
  queued: number;
  oldestQueuedSeconds: number | null;
}

/** One bucket of the cache hit rate: layers of the builds submitted in [t, t + bucketSeconds). */
export interface HitRateBucket {
  /** ISO time the bucket starts. */
  t: string;
  lookups: number;
  hits: number;
  /** hits / lookups, or null for a bucket with no build. */
  rate: number | null;
  /** Builds submitted in the bucket. */
  builds?: number;
  /**
   * Of those finished: the median and the 90th percentile of their durations, seconds (null: none
   * finished). In `teams`, only when the answer is one team's; the overall series always has them.
   */
  p50Seconds?: number | null;
  p90Seconds?: number | null;
}

/** `GET /v1/stats/cache` */
export interface HitRateSeries {
  from: string;
  to: string;
  bucketSeconds: number;
  overall: HitRateBucket[];
  teams: Record<string, HitRateBucket[]>;
}

/** One layer of a build in a project's trend. */
export interface TrendLayer {
  index: number;
  name: string;
  /** hit, done, failed, … (LayerStatus) */
  status: string;
  /** Seconds its worker took (built layers only). */
  seconds: number | null;
  key: string;
}

/** One build of a project's trend. */
export interface TrendBuild {
  id: string;
  team: string;
  state: BuildState;
  createdAt: string;
  finishedAt?: string;
  /** Submission to end, seconds (null while it runs). */
  seconds: number | null;
  gitBranch?: string;
  gitCommit?: string;
  gitDirty?: boolean;
  submitter?: string;
  hits: number;
  built: number;
  /** Its cache lookups: hits + built + failed layers (docs/metrics.md), not queued or cancelled ones. */
  lookups: number;
  layers: TrendLayer[];
}

/** `GET /v1/projects/:name/trend?limit&branch&team`: the last builds of a project, newest first. */
export interface ProjectTrend {
  project: string;
  /** The team whose builds these are (an admin asking without ?team: every team's). */
  teams: string[];
  branch?: string;
  limit: number;
  builds: TrendBuild[];
}

/** `GET /v1/builds/:id/links`: where else to look at a build (null: not configured). */
export interface BuildLinks {
  /** The build's time range on the fleet's Grafana (or Prometheus) view: VMLB_GRAFANA_URL. */
  grafana: string | null;
}
