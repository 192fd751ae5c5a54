import type { Redis } from 'ioredis';
import type { DiskBackend, LayerSandbox, LocalStore, SharedStore } from '@vmlb/layer-engine';
import type { FleetConfig } from '@vmlb/fleet';
import type { Logger } from './logger.js';
import type { WorkerMetrics } from './metrics.js';
import type { RunningJobs } from './running-jobs.js';

/** What every job processor of one worker shares. */
export interface WorkerContext {
  id: string;
  fleet: FleetConfig;
  /** The worker's command connection (not BullMQ's). */
  redis: Redis;
  shared: SharedStore;
  store: LocalStore;
  backend: DiskBackend;
  /** How a team's layers are confined on this worker (its deny list; its # cache-mount folders). */
  sandboxFor(team: string): LayerSandbox;
  /** Project tarballs by hash. */
  projectCache: string;
  /** This process's scratch folder (extracted projects, images being written). */
  workDir: string;
  jobs: RunningJobs;
  metrics: WorkerMetrics;
  log: Logger;
  /** Trims the local store to its cap, sparing what running jobs use (serialized, in the background). */
  evictSoon(): void;
}
