export { createScheduler, type Scheduler, type SchedulerOptions } from './scheduler.js';
export { Teams, sha256Hex, type Team } from './teams.js';
export { inspectArchive, extractArchive, symlinkEscape, DEFAULT_ARCHIVE_LIMITS, type ArchiveLimits } from './project-archive.js';
export { StoreIndexRecords, newBuildId, summarize, type BuildSummary, type StoredRecord } from './build-records.js';
export { buildFlow } from './build-flow.js';
export { foldEvent } from './record-fold.js';
export { DisplayEvents } from './display-events.js';
export { jsonLogger, silentLogger, type Logger } from './logger.js';
