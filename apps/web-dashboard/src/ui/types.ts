/**
 * The scheduler's API as the dashboard reads it (docs/fleet.md). Written out here rather than
 * imported from @vmlb/fleet: the browser depends on the HTTP contract, not on server code.
 */

export type BuildState = 'queued' | 'building' | 'done' | 'failed' | 'cancelled';
export type LayerStatus = 'hit' | 'queued' | 'waiting' | 'building' | 'done' | 'failed' | 'cancelled';
export type LayerKind = 'create-disk' | 'build-layer' | 'modify-disk' | 'base-image';

export const BUILD_STATES: readonly BuildState[] = ['queued', 'building', 'done', 'failed', 'cancelled'];
export const isFinal = (s: BuildState) => s === 'done' || s === 'failed' || s === 'cancelled';

export interface WhoAmI {
  team: string;
  admin: boolean;
}

export interface BuildSummary {
  id: string;
  team: string;
  state: BuildState;
  project: string;
  createdAt: string;
  finishedAt?: string;
  layers: number;
  hits: number;
  built: number;
  error?: string;
}

export interface LayerRecord {
  index: number;
  name: string;
  kind: LayerKind;
  key: string;
  status: LayerStatus;
  source?: 'shared';
  worker?: string;
  startedAt?: string;
  finishedAt?: string;
  seconds?: number;
  bytes?: number;
  exitCode?: number;
  logTail?: string;
}

export interface FlattenRecord {
  worker: string;
  startedAt: string;
  finishedAt?: string;
  seconds?: number;
}

export interface BuildRecord {
  id: string;
  team: string;
  project: string;
  createdAt: string;
  finishedAt?: string;
  state: BuildState;
  layers: LayerRecord[];
  image: { key: string; path: string; bytes: number } | null;
  error?: string;
  flatten?: FlattenRecord;
}

export interface FleetWorker {
  id: string;
  host: string;
  pid: number;
  backend: 'fuse' | 'nbd';
  slots: number;
  busy: number;
  cachedBytes: number;
  version: string;
  startedAt: string;
  lastHeartbeat: string;
  state: 'running' | 'stopping';
  live: boolean;
  /** Seconds since its last heartbeat, by the scheduler's clock (the browser's may differ). */
  heartbeatAgeSeconds?: number;
}

export interface Fleet {
  workers: FleetWorker[];
  queues: { layers: Record<string, number>; flatten: Record<string, number> };
  queued: number;
  oldestQueuedSeconds: number | null;
}

export interface CacheBucket {
  t: string;
  lookups: number;
  hits: number;
  rate: number | null;
}

export interface CacheStats {
  from: string;
  to: string;
  bucketSeconds: number;
  overall: CacheBucket[];
  teams: Record<string, CacheBucket[]>;
}

/** The engine's BuildEvent (libs/layer-engine/src/events.ts), as far as the dashboard reads it. */
export type BuildEvent =
  | { type: 'notice'; at: number; message: string }
  | { type: 'plan'; at: number; project: string; total: number }
  | { type: 'layer-cached'; at: number; index: number; name: string; source: string; bytes: number }
  | { type: 'layer-start'; at: number; index: number; name: string }
  | { type: 'layer-log'; at: number; index: number; name: string; chunk: string }
  | { type: 'layer-step'; at: number; index: number; name: string; step: string }
  | { type: 'layer-done'; at: number; index: number; name: string; seconds: number; bytes: number }
  | { type: 'layer-failed'; at: number; index: number; name: string; seconds: number; message: string; exitCode?: number; logTail: string }
  | { type: 'output'; at: number; path: string; seconds: number; bytes: number }
  | { type: 'done'; at: number; built: number; cached: number; seconds: number; image: string | null }
  | { type: 'failed'; at: number; message: string; code: string; seconds: number };
