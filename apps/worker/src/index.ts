export { startWorker, type RunningWorker, type StartWorkerOptions } from './start-worker.js';
export { workerSettingsFrom, DEFAULT_WORKER_SETTINGS, type WorkerSettings } from './worker-settings.js';
export { jsonLogger, silentLogger, type Logger } from './logger.js';
export { workerSlots, freeNbdDevices } from './slots.js';
export { imageManifestPath, type ImageManifest, type FlattenJobResult } from './flatten-worker.js';
export type { LayerJobResult } from './layer-worker.js';
