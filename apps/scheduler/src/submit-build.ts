import type { FlowProducer } from 'bullmq';
import { mkdtemp, rm } from 'node:fs/promises';
import path from 'node:path';
import { writeUseRecord } from '@vmlb/layer-engine';
import { DEFAULT_POOL, poolPath, storePaths, type PoolStores } from '@vmlb/fleet';
import type { Team } from './teams.js';
import { buildFlow } from './build-flow.js';
import { isFinal, newBuildId, type StoredRecord } from './build-records.js';
import type { BuildHistory } from './build-history.js';
import type { SubmissionMeta } from './submission-meta.js';
import { HttpError } from './http-error.js';
import { findImage } from './image-manifest.js';
import type { ObjectStore } from './object-store.js';
import { planProject } from './planner.js';
import { extractArchive, inspectArchive, type ArchiveLimits } from './project-archive.js';
import { failBuild, finishBuild, finishChain } from './record-fold.js';
import type { Upload } from './upload.js';

export interface SubmitContext {
  /** The submitting team's pool: its namespace (projects, layers, images) and the pools it reads. */
  view: PoolStores;
  objects: ObjectStore;
  records: BuildHistory;
  flows: FlowProducer;
  workDir: string;
  archiveLimits?: ArchiveLimits;
}

/**
 * A submission, in its stages: check every entry of the upload, extract it, plan it (keys,
 * hits), store the project by its hash, store the new record, queue its flow. Nothing is
 * stored before the checks pass. Returns the record; a build with nothing to do is done
 * already. The caller follows the others.
 */
export async function submitBuild(ctx: SubmitContext, who: Pick<Team, 'team' | 'pool'>, upload: Upload, output: 'chain' | 'flattened' = 'chain', meta: SubmissionMeta = {}): Promise<StoredRecord> {
  const { team, pool } = { team: who.team, pool: who.pool ?? DEFAULT_POOL };
  const own = ctx.view.own;
  const listing = await inspectArchive(upload.file, ctx.archiveLimits);
  const dir = await mkdtemp(path.join(ctx.workDir, 'project-'));
  try {
    await extractArchive(upload.file, dir, listing);
    const id = newBuildId();
    const plan = await planProject(dir, ctx.view, id);

    const projectPath = storePaths.project(upload.sha256);
    if (!(await ctx.objects.stat(poolPath(pool, projectPath)))) await own.putFile(projectPath, upload.file);
    // `vmlb gc --shared` keeps the layers that recent builds used: this build uses its
    // cacheable chain (its # nocache layers are removed by the flatten job anyway), in its own
    // pool's namespace and in each trusted pool it takes hits from (that pool's gc must keep them).
    const cacheable = plan.keyed.filter((k) => k.cacheable).map((k) => k.key);
    await writeUseRecord(own, cacheable, { project: upload.sha256 });
    for (const t of ctx.view.trusted) {
      const there = plan.layers.filter((l) => l.pool === t.pool).map((l) => l.key);
      if (there.length) await writeUseRecord(t.store, there, { project: `${pool}:${upload.sha256}` });
    }

    const record: StoredRecord = { version: 1, id, team, pool, project: upload.sha256, ...meta, createdAt: new Date().toISOString(), state: 'queued', layers: plan.layers, output, image: null };
    if (plan.firstMiss < 0) {
      // Every layer is a hit: the chain is there; when the image of this top key is there too
      // (or none was asked for), there is nothing to do.
      const image = await findImage(own, plan.layers[plan.layers.length - 1]!.key, pool);
      if (image) finishBuild(record, image);
      else if (output === 'chain') finishChain(record);
    }
    // The record first: the workers' events need a build to be folded into.
    await ctx.records.put(record);
    if (isFinal(record)) return record;
    try {
      const flow = buildFlow({ ...record, pool, reads: ctx.view.trusted.map((t) => t.pool) }, plan.keyed, plan.firstMiss);
      if (flow) await ctx.flows.add(flow);
    } catch (e) {
      failBuild(record, `could not queue its jobs: ${(e as Error).message}`);
      await ctx.records.put(record);
      throw new HttpError(503, 'QUEUE_UNAVAILABLE', `could not queue the build's jobs: ${(e as Error).message}`, { id });
    }
    return record;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
