import type { FlowJobNode, FlowJob, Queue } from 'bullmq';
import {
  FLATTEN_JOB_OPTIONS,
  LAYER_JOB_OPTIONS,
  flattenJobId,
  flattenQueueOf,
  layerJobId,
  layerQueueOf,
  type FlattenJobData,
  type LayerJobData,
} from '@vmlb/fleet';
import type { KeyedLayer } from '@vmlb/layer-engine';

/** Finished jobs stay in Redis this long (for the dashboard and for debugging), then BullMQ drops them. */
export const KEEP_COMPLETED_S = 24 * 3600;
export const KEEP_FAILED_S = 7 * 24 * 3600;
const KEEP = { removeOnComplete: { age: KEEP_COMPLETED_S }, removeOnFail: { age: KEEP_FAILED_S } };

/**
 * A build's BullMQ flow: [flatten ←] layer N ← … ← the first missing layer. BullMQ runs a parent
 * only after its child completes, so the chain runs strictly in order, and a failing layer
 * fails every job above it at once (`failParentOnFailure`). Hits make no jobs. The flatten job
 * is there only when the build is to make a flattened image (`output: 'flattened'`); a build
 * whose layers all hit is then a flatten job alone (and with the chain as its output, no job:
 * see submit-build.ts). Returns null when there is no job to queue.
 */
export function buildFlow(
  b: { id: string; team: string; project: string; pool?: string; reads?: string[]; output?: 'chain' | 'flattened' },
  keyed: KeyedLayer[],
  firstMiss: number,
): FlowJob | null {
  const keys = keyed.map((k) => k.key);
  // The jobs go to the pool's queues, and say which pool they are of and which pools they may read.
  const pool = b.pool ?? 'default';
  const reads = b.reads ?? [];
  const flatten = flattenData(b, keys);
  let child: FlowJobNode | undefined;
  if (firstMiss >= 0) {
    for (let i = firstMiss; i < keyed.length; i++) {
      const k = keyed[i]!;
      const data: LayerJobData = {
        buildId: b.id,
        team: b.team,
        pool,
        reads,
        project: b.project,
        nonce: b.id,
        index: i,
        name: k.spec.name,
        key: k.key,
        chain: keys.slice(0, i),
        cacheable: k.cacheable,
        share: !k.spec.hints.noshare,
      };
      const base = { name: k.spec.name, queueName: layerQueueOf(pool), data, opts: { ...LAYER_JOB_OPTIONS, ...KEEP, jobId: layerJobId(b.id, i) } };
      child = child ? { ...base, children: [child] } : base;
    }
  }
  if (b.output === 'chain') return child ?? null;
  const top = flattenNode(flatten);
  return child ? { ...top, children: [child] } : top;
}

/** The flatten job of a build, as a flow node (queued alone for an image asked for later: see download-routes.ts). */
export function flattenNode(data: FlattenJobData): FlowJob {
  return { name: 'flatten', queueName: flattenQueueOf(data.pool), data, opts: { ...FLATTEN_JOB_OPTIONS, ...KEEP, jobId: flattenJobId(data.buildId) } };
}

/** A build's flatten job's data. */
export function flattenData(b: { id: string; team: string; project: string; pool?: string; reads?: string[] }, chain: string[]): FlattenJobData {
  return { buildId: b.id, team: b.team, pool: b.pool ?? 'default', reads: b.reads ?? [], chain, project: b.project, nonce: b.id };
}

/**
 * Removes a build's jobs that are not running, top down (flatten first, then layer N, …), so
 * that no removal leaves a parent without children to be moved to `wait`. A running job is
 * locked and stays: its worker sees `vmlb:cancelled:<id>` and stops it.
 */
export async function removeBuildJobs(queues: { layers: Queue; flatten: Queue }, buildId: string, layerIndexes: number[]): Promise<{ removed: string[]; running: string[] }> {
  const removed: string[] = [];
  const running: string[] = [];
  const ids: Array<[Queue, string]> = [[queues.flatten, flattenJobId(buildId)], ...[...layerIndexes].sort((a, b) => b - a).map((i): [Queue, string] => [queues.layers, layerJobId(buildId, i)])];
  for (const [queue, id] of ids) {
    const state = await queue.getJobState(id);
    if (state === 'unknown' || state === 'completed' || state === 'failed') continue;
    const r = await queue.remove(id, { removeChildren: false });
    (r === 1 ? removed : running).push(id);
  }
  return { removed, running };
}
