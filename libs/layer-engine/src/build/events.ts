import type { LayerKind } from '../types.js';

/**
 * What a build reports as it goes. The CLI renders these (terminal, plain, --json); the fleet
 * worker forwards them to the scheduler. Times are milliseconds since the epoch.
 */
export type InputChange =
  | { what: 'new'; detail: string }
  | { what: 'parent'; detail: string }
  | { what: 'kind'; detail: string }
  | { what: 'recipe'; detail: string }
  | { what: 'nocache'; detail: string }
  | { what: 'file-added' | 'file-removed' | 'file-changed' | 'mode-changed'; path: string; detail: string };

export interface PlannedLayer {
  index: number;
  name: string;
  kind: LayerKind;
  key: string;
  /** 'hit': served from the store; 'miss': will be built. */
  status: 'hit' | 'miss';
  /** For a hit: where it came from. */
  source?: 'local' | 'shared';
  /** For a miss: why (inputs changed against the last build of this layer name). */
  changes?: InputChange[];
  cacheable: boolean;
}

export type BuildEvent =
  | { type: 'notice'; at: number; message: string }
  | { type: 'plan'; at: number; project: string; layers: PlannedLayer[]; total: number }
  /** `pool`: a fleet hit found in a pool the build's pool trusts for reading (not its own). */
  | { type: 'layer-cached'; at: number; index: number; name: string; key: string; source: 'local' | 'shared'; bytes: number; pool?: string }
  | { type: 'layer-start'; at: number; index: number; name: string; kind: LayerKind; key: string }
  | { type: 'layer-log'; at: number; index: number; name: string; chunk: string }
  | { type: 'layer-step'; at: number; index: number; name: string; step: string }
  | { type: 'layer-done'; at: number; index: number; name: string; key: string; seconds: number; bytes: number }
  | { type: 'layer-failed'; at: number; index: number; name: string; key: string; seconds: number; message: string; exitCode?: number; timedOut: boolean; logPath: string; logTail: string; overlay?: string }
  | { type: 'output'; at: number; path: string; flattened: boolean; seconds: number; bytes: number }
  | { type: 'done'; at: number; built: number; cached: number; seconds: number; image: string | null }
  | { type: 'failed'; at: number; message: string; code: string; seconds: number };

export type BuildEventSink = (e: BuildEvent) => void;
