/**
 * What the apps (the CLI, the worker, the scheduler, libs/fleet) and the benchmarks use of the
 * engine, with the types of those modules, and nothing else: the engine's internals (its
 * disks' daemons, lock files, loop listings, the S3 transport) stay behind these names. Tests
 * reach internals through their files. A name an app needs is added here, beside its module.
 */
export { type Plan, type PlanOptions, type PlanningStore, type SharedLookup, planBuild } from './build/build-plan.js';
export { type BuildOptions, type BuildResult, build } from './build/build.js';
export { type BuildEvent, type BuildEventSink, type InputChange, type PlannedLayer } from './build/events.js';
export { type BlobResult, type LayerBuildContext, type LayerSandbox } from './build/layer-build-context.js';
export { ENGINE_VERSION } from './build/layer-builder.js';
export { proxyEnv } from './build/layer-env.js';
export { buildLayerReporting, layerSandbox } from './build/layer-reporting.js';
export { type LayerSource, chooseLayerSource, takeSharedCopy } from './build/layer-source.js';
export { LOG_MAX_DEFAULT, type OutputLimits, droppedMarker, logMaxFromEnv } from './build/output-limits.js';
export { type SandboxArgsInput, type SandboxOptions, type SandboxRun, cacheMountsDir, checkSandboxTools } from './build/sandbox.js';
export { startupSweep } from './build/startup-sweep.js';
export { type BackendPreference, chooseBackend } from './disk/backends.js';
export { type AttachOptions, type AttachedDisk, type BackendName, type DiskBackend } from './disk/disk-backend.js';
export { type FuseDaemonLease, stopIdleFuseDaemon } from './disk/fuse-daemon.js';
export { type SweepReport, describeSweep, sweep } from './disk/sweep.js';
export { type ErrorClass, type ErrorCode, OUTAGE_CODES, USAGE_CODES, errorClass } from './error-codes.js';
export { AbortedError, ExecError, LayerFailedError, ProjectError, type ProjectProblem, StoreError, VmlbError } from './errors.js';
export { type ExecOptions, type ExecResult, type SpawnOptions, commandOnPath, exec } from './host/exec.js';
export { type ProcessIdentity, isRunning, selfIdentity } from './host/process-identity.js';
export { type ImageInfo, convert, createOverlay, imageInfo } from './host/qemu-img.js';
export { type ComputeKeysOptions, type KeyedLayer, computeKeys } from './project/cache-key.js';
export { type HintName, parseHints, readHintLine } from './project/hints.js';
export { hostPathProblems } from './project/host-paths.js';
export { LAYER_DIR_PATTERN, OUTPUT_DIR, loadProject } from './project/layer-project.js';
export { type ScaffoldKind, type ScaffoldOptions, scaffoldLayer } from './project/new-layer.js';
export { formatBytes, formatSeconds, parseDuration, parseSize } from './sizes.js';
export { sha256File } from './store/file-digest.js';
export { type LayerManifest } from './store/layer-manifest.js';
export { LocalStore } from './store/local-store.js';
export { pidAlive } from './store/pid-alive.js';
export { type Transport, minioClient } from './store/s3-client.js';
export { type S3Config, type S3ConfigOptions, s3ConfigFrom } from './store/s3-config.js';
export { type CallOptions, type RetryInfo, type RetryOptions } from './store/s3-retry.js';
export { DEFAULT_UPLOADS_OLDER_THAN_MS, type SharedPruneCandidate, type SharedPrunePlan, type UseRecord, planSharedPrune, pruneShared, writeUseRecord } from './store/shared-gc.js';
export { type PushOptions, type PushResult, SharedStore, type SharedStoreOptions, compressionFrom } from './store/shared-store.js';
export { defaultStoreDir } from './store/store-dir.js';
export { type ZstdProcess, startZstd } from './store/zstd-stream.js';
export { type BootMode, chooseBootMode } from './tools/boot-media.js';
export { type SeedContent, makeSeedImage, seedFromFiles } from './tools/cloud-init-seed.js';
export { type FailedLayer, listFailedLayers, sweepFailedLayers } from './tools/failed-layers.js';
export { type DiffResult, type ImageDiffOptions, diffImages } from './tools/image-diff.js';
export { type ResolvedImage, resolveImage } from './tools/image-ref.js';
export { type LayerShellOptions, type LayerShellResult, type ShellState, runInLayer } from './tools/layer-shell.js';
export { type RollupOptions, type RollupResult, rollup } from './tools/rollup.js';
export { type Aspect, type ChangeKind, type EntrySummary, type EntryType, type TreeChange, type TreeEntry, formatChange } from './tools/tree-diff.js';
export { type Accel, type AccelPreference, type BootVmOptions, type BootVmResult, type VmNetwork, type VmSpec, bootVm, describeAccel } from './tools/vm-boot.js';
export { type BaseImageSource, type ImageProject, LAYER_KINDS, type LayerFile, type LayerHints, type LayerInputs, type LayerKind, type LayerSpec, type Partition, type PartitionTable } from './types.js';
