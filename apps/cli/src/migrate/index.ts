/** `vmlb migrate`'s logic (see project.ts): what commands/migrate.ts and the tests use. */
export { classifyModifyDisk, type ModifyDiskForm } from './modify-disk.js';
export { compressionOf } from './compression.js';
export { formatReport, summaryLine, type MigrateItem, type MigrateReport } from './report.js';
export { normaliseHints, type HintChange } from './hints.js';
export { migrateProject } from './project.js';
export { MIGRATE_USAGE } from './usage-error.js';
export { readSConstruct, type SconsBaseImage } from './sconstruct.js';
export type { MigrateOptions } from './migration.js';
