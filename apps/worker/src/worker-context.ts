import type { Redis } from 'ioredis';
import type { DiskBackend, LayerSandbox, LocalStore, SharedStore } from '@vmlb/layer-engine';
import type { FleetConfig, PoolStores } from '@vmlb/fleet';
import type { Logger } from './logger.js';
import type { WorkerMetrics } from './metrics.js';
import type { RunningJobs } from './running-jobs.js';

/** What every job processor of one worker shares. */
export interface WorkerContext {
  id: string;
  fleet: FleetConfig;
  /** The worker's command connection (not BullMQ's). */
  redis: Redis;
  /** The pool whose jobs this worker takes (VMLB_WORKER_POOL). */
  pool: string;
  /** This pool's own namespace of the shared store: everything the worker writes goes there. */
  shared: SharedStore;
  /** The pool's view with the pools a job may read (its `reads`): where layers are looked up. */
  viewFor(reads: readonly string[]): PoolStores;
  store: LocalStore;
  backend: DiskBackend;
  /** How a team's layers are confined on this worker (its deny list; its # cache-mount folders). */
  sandboxFor(team: string): LayerSandbox;
  /** Project tarballs by hash. */
  projectCache: string;
  /** VMLB_AFFINITY_SMALL_CHAIN: a missing chain up to this size is pulled rather than waited for. */
  smallChainBytes: number;
  /** What every layer script run here gets: the log kept (VMLB_LOG_MAX), the host's proxy settings. */
  layerRun: { logMax: number; passEnv: Record<string, string> };
  /** This process's scratch folder (extracted projects, images being written). */
  workDir: string;
  jobs: RunningJobs;
  metrics: WorkerMetrics;
  log: Logger;
  /**
   * Writes the worker's registration (its busy slots) and the keys it holds now (chain
   * affinity; not with `keys: false`) at once, not at the next heartbeat.
   */
  announce(o?: { keys?: boolean }): Promise<void>;
  /** Trims the local store to its cap, sparing what running jobs use (serialized, in the background). */
  evictSoon(): void;
}
