import path from 'node:path';
import { VmlbError } from '../errors.js';
import type { DiskBackend } from '../disk/disk-backend.js';
import { DEFAULT_DISK_SIZE } from '../project/hints.js';
import type { LayerManifest } from '../store/layer-manifest.js';
import type { LocalStore } from '../store/local-store.js';
import type { OutputLimits } from './output-limits.js';
import type { LayerInputs, LayerSpec, PartitionTable } from '../types.js';

/** What building one layer is given: buildLayer's argument, and what each kind's builder reads. */
export interface LayerBuildContext {
  store: LocalStore;
  backend: DiskBackend;
  spec: LayerSpec;
  key: string;
  inputs: LayerInputs;
  cacheable: boolean;
  /** The parent layer's manifest (null for the first layer). */
  parent: LayerManifest | null;
  signal?: AbortSignal;
  /** What of the script's output onOutput gets (see OutputLimiter). @default ENGINE_OUTPUT_LIMITS */
  outputLimits?: OutputLimits;
  onOutput?: (chunk: string) => void;
  onStep?: (step: string) => void;
  /** How scripts are confined (see sandbox.ts); unset: unsandboxed, as the host's root. */
  sandbox?: LayerSandbox;
  /**
   * Keep a failed script's half-built overlay for `vmlb shell --failed` (failed-layers.ts),
   * and drop those of earlier failures of the layer first. Local builds do; workers do not.
   */
  keepFailed?: boolean;
  /** The most of the script's log the store keeps (its tail). @default LOG_MAX_DEFAULT (64 MiB; the apps pass VMLB_LOG_MAX) */
  logMax?: number;
  /** Host variables the script gets as they are (see proxyEnv). @default {} (the apps pass the host's proxy settings) */
  passEnv?: Record<string, string>;
}

/** The sandbox as one build applies it to each layer. */
export interface LayerSandbox {
  /** Addresses no layer may reach (besides the host's own and link-local ones). */
  deny: readonly string[];
  /** Where this build's `# cache-mount` folders are kept (per store, or per team on a worker). */
  cacheDir: string;
  /**
   * The project is someone else's (a fleet worker's job): a `# chroot-bind-mount` may only
   * bind a folder of the project, read-only. @default false (local builds bind what they name)
   */
  projectBindsOnly?: boolean;
}

/** What a kind's builder made: the blob's disk as the manifest records it. */
export interface BlobResult {
  virtualSize: number;
  partitions: PartitionTable;
  root: { number: number; start: number; size: number };
}

/** The size of the disk a layer writes, when known before it runs (a base-image's is known once imported). */
export function diskSizeOf(ctx: LayerBuildContext): number | undefined {
  switch (ctx.spec.kind) {
    case 'create-disk':
      return ctx.spec.hints.diskSize ?? DEFAULT_DISK_SIZE;
    case 'build-layer':
      return ctx.parent?.virtualSize;
    case 'modify-disk':
      return ctx.parent ? Math.max(ctx.parent.virtualSize, ctx.spec.hints.diskSize ?? 0) : undefined;
    case 'base-image':
      return undefined;
  }
}

/** Where a failed script's log is kept (`<key>.failed.log`), for the user to read. */
export function failedLogPath(store: LocalStore, key: string): string {
  return path.join(store.layersDir, `${key}.failed.log`);
}

/** The parent a layer works on; every kind but the first layer's has one (the project's rules). */
export function requireParent(ctx: LayerBuildContext): LayerManifest {
  if (!ctx.parent) throw new VmlbError('INTERNAL', `${ctx.spec.name}: a ${ctx.spec.kind} layer needs a parent`);
  return ctx.parent;
}
