/**
 * The scheduler's API as the dashboard reads it (docs/fleet.md): the types the scheduler
 * writes, imported type-only from @vmlb/fleet and the engine (esbuild erases these imports:
 * no server code reaches the browser), so the two sides cannot drift apart.
 */
import type { BuildState } from '@vmlb/fleet';

export type {
  BuildRecord,
  BuildState,
  BuildSummary,
  FleetView as Fleet,
  FleetWorker,
  HitRateBucket as CacheBucket,
  HitRateSeries as CacheStats,
  LayerRecord,
  LayerStatus,
  WhoAmI,
} from '@vmlb/fleet';
export type { BuildEvent, LayerKind } from '@vmlb/layer-engine';

export const BUILD_STATES: readonly BuildState[] = ['queued', 'building', 'done', 'failed', 'cancelled'];
export const isFinal = (s: BuildState) => s === 'done' || s === 'failed' || s === 'cancelled';

