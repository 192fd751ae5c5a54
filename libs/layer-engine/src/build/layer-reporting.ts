import type { chooseBackend } from '../disk/backends.js';
import type { KeyedLayer } from '../project/cache-key.js';
import type { BuildEvent } from './events.js';
import type { LayerSandbox } from './layer-build-context.js';
import { buildLayer } from './layer-builder.js';
import type { LayerManifest } from '../store/layer-manifest.js';
import type { LocalStore } from '../store/local-store.js';
import type { OutputLimits } from './output-limits.js';
import { cacheMountsDir, checkSandboxTools, type SandboxOptions } from './sandbox.js';

/**
 * The sandbox as a build's layers get it (null: off), once the host is known to have what it
 * needs (checked before the first layer is built, so that an all-hits build needs none of it).
 */
export async function layerSandbox(o: SandboxOptions | undefined, store: LocalStore): Promise<LayerSandbox | null> {
  if (o?.enabled === false) return null;
  await checkSandboxTools();
  return { deny: o?.deny ?? [], cacheDir: cacheMountsDir(store) };
}

/**
 * The engine's buildLayer with the build's events around it: layer-start, the script's
 * output and steps, then layer-done or layer-failed. Used by `vmlb build` and by the fleet
 * worker, which reports as layer-failed only what will not be retried (`isFailure`).
 */
export async function buildLayerReporting(o: {
  store: LocalStore;
  backend: Awaited<ReturnType<typeof chooseBackend>>;
  /** See layerSandbox(); unset: unsandboxed. */
  sandbox?: LayerSandbox;
  index: number;
  layer: KeyedLayer;
  parent: LayerManifest | null;
  signal: AbortSignal | undefined;
  emit: (e: BuildEvent) => void;
  /** Which errors are reported as layer-failed. @default every error */
  isFailure?: (e: unknown) => boolean;
  /** What of the script's output goes out as layer-log events. @default ENGINE_OUTPUT_LIMITS */
  outputLimits?: OutputLimits;
  /** See LayerBuildContext.keepFailed (a local build's). */
  keepFailed?: boolean;
  /** See LayerBuildContext.logMax. */
  logMax?: number;
  /** See LayerBuildContext.passEnv. */
  passEnv?: Record<string, string>;
}): Promise<LayerManifest> {
  const { index, layer: k, emit } = o;
  const name = k.spec.name;
  const started = performance.now();
  const seconds = () => (performance.now() - started) / 1000;
  emit({ type: 'layer-start', at: Date.now(), index, name, kind: k.spec.kind, key: k.key });
  let manifest: LayerManifest;
  try {
    manifest = await buildLayer({
      store: o.store,
      backend: o.backend,
      spec: k.spec,
      key: k.key,
      inputs: k.inputs,
      cacheable: k.cacheable,
      parent: o.parent,
      sandbox: o.sandbox,
      signal: o.signal,
      outputLimits: o.outputLimits,
      keepFailed: o.keepFailed,
      logMax: o.logMax,
      passEnv: o.passEnv,
      onOutput: (chunk) => emit({ type: 'layer-log', at: Date.now(), index, name, chunk }),
      onStep: (step) => emit({ type: 'layer-step', at: Date.now(), index, name, step }),
    });
  } catch (e) {
    if (o.isFailure?.(e) ?? true) {
      const err = e as Error & { exitCode?: number; timedOut?: boolean; logPath?: string; logTail?: string; keptOverlay?: string };
      emit({
        type: 'layer-failed',
        at: Date.now(),
        index,
        name,
        key: k.key,
        seconds: seconds(),
        message: err.message,
        exitCode: err.exitCode,
        timedOut: err.timedOut ?? false,
        logPath: err.logPath ?? '',
        logTail: err.logTail ?? '',
        ...(err.keptOverlay ? { overlay: err.keptOverlay } : {}),
      });
    }
    throw e;
  }
  emit({ type: 'layer-done', at: Date.now(), index, name, key: k.key, seconds: seconds(), bytes: manifest.blob.size });
  return manifest;
}
