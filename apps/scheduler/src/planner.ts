import { ProjectError, hostPathProblems, planBuild, type KeyedLayer, type LayerManifest } from '@vmlb/layer-engine';
import type { LayerRecord, PoolStores } from '@vmlb/fleet';
import { HttpError } from './http-error.js';

export interface BuildPlan {
  keyed: KeyedLayer[];
  /** Each layer as the new build record starts it: `hit` (in the shared store) or `queued`. */
  layers: LayerRecord[];
  /** The first layer to build; -1 when every layer is a hit. */
  firstMiss: number;
}

/**
 * Plans a build of an extracted project: the engine's own planning (loadProject, computeKeys
 * with the build id as nonce, each key looked up in the shared store on the parent this build
 * will have). Every layer before the first miss is a hit; from the first miss on, every layer
 * gets a job, even one whose key the store happens to hold, since its overlay was written on
 * another copy of the missing parent (that job finds the manifest and finishes at once, or
 * rebuilds on the new parent). The scheduler keeps no layers: planning is given no local store.
 */
export async function planProject(projectDir: string, view: PoolStores, buildId: string): Promise<BuildPlan> {
  let plan: Awaited<ReturnType<typeof planBuild>>;
  // Which pool each hit was found in: the pool's own namespace first, then those it trusts.
  const foundIn = new Map<string, string>();
  const lookup = {
    getManifest: async (key: string): Promise<LayerManifest | null> => {
      const hit = await view.find(key);
      if (hit) foundIn.set(key, hit.pool);
      return hit?.manifest ?? null;
    },
  };
  try {
    plan = await planBuild({ projectDir, shared: lookup, nonce: buildId });
    // A submission is another team's code: it names no host path (see hostPathProblems).
    const hostPaths = hostPathProblems(plan.project);
    if (hostPaths.length > 0) throw new ProjectError(projectDir, hostPaths);
  } catch (e) {
    if (e instanceof ProjectError) {
      const lines = e.problems.map((p) => `  ${p.where}: ${p.problem}`);
      throw new HttpError(400, 'PROJECT_INVALID', `the project has ${e.problems.length} problem${e.problems.length === 1 ? '' : 's'}:\n${lines.join('\n')}`, {
        problems: e.problems,
      });
    }
    throw e;
  }
  if (plan.sharedProblem) throw new HttpError(503, 'STORE_UNAVAILABLE', plan.sharedProblem);
  const firstMiss = plan.layers.findIndex((l) => l.status !== 'hit');
  const layers: LayerRecord[] = plan.layers.map((l, index) => {
    const hit = firstMiss < 0 || index < firstMiss;
    const rec: LayerRecord = { index, name: l.name, kind: l.kind, key: l.key, status: hit ? 'hit' : 'queued' };
    if (hit) {
      rec.source = 'shared';
      const from = foundIn.get(l.key);
      if (from && from !== view.pool) rec.pool = from;
      const m = plan.manifests.get(l.key);
      if (m) rec.bytes = m.blob.size;
    }
    return rec;
  });
  return { keyed: plan.keyed, layers, firstMiss };
}
