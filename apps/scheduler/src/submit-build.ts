import type { FlowProducer } from 'bullmq';
import { mkdtemp, rm } from 'node:fs/promises';
import path from 'node:path';
import { writeUseRecord, type LocalStore, type SharedStore } from '@vmlb/layer-engine';
import { storePaths } from '@vmlb/fleet';
import { buildFlow } from './build-flow.js';
import { isFinal, newBuildId, type BuildRecords, type StoredRecord } from './build-records.js';
import { HttpError } from './http-error.js';
import { findImage } from './image-manifest.js';
import type { ObjectStore } from './object-store.js';
import { planProject } from './planner.js';
import { extractArchive, inspectArchive, type ArchiveLimits } from './project-archive.js';
import { failBuild, finishBuild } from './record-fold.js';
import type { Upload } from './upload.js';

export interface SubmitContext {
  shared: SharedStore;
  objects: ObjectStore;
  records: BuildRecords;
  flows: FlowProducer;
  /** An empty local store for the engine's planning (the scheduler keeps no layers). */
  scratch: LocalStore;
  workDir: string;
  archiveLimits?: ArchiveLimits;
}

/**
 * A submission, in its stages: check every entry of the upload, extract it, plan it (keys,
 * hits), store the project by its hash, store the new record, queue its flow. Nothing is
 * stored before the checks pass. Returns the record; a build with nothing to do is done
 * already. The caller follows the others.
 */
export async function submitBuild(ctx: SubmitContext, team: string, upload: Upload): Promise<StoredRecord> {
  const listing = await inspectArchive(upload.file, ctx.archiveLimits);
  const dir = await mkdtemp(path.join(ctx.workDir, 'project-'));
  try {
    await extractArchive(upload.file, dir, listing);
    const id = newBuildId();
    const plan = await planProject(dir, ctx.shared, ctx.scratch, id);

    const projectPath = storePaths.project(upload.sha256);
    if (!(await ctx.objects.stat(projectPath))) await ctx.shared.putFile(projectPath, upload.file);
    // `vmlb gc --shared` keeps the layers that recent builds used: this build uses its
    // cacheable chain (its # nocache layers are removed by the flatten job anyway).
    await writeUseRecord(
      ctx.shared,
      plan.keyed.filter((k) => k.cacheable).map((k) => k.key),
      { project: upload.sha256 },
    );

    const record: StoredRecord = { version: 1, id, team, project: upload.sha256, createdAt: new Date().toISOString(), state: 'queued', layers: plan.layers, image: null };
    if (plan.firstMiss < 0) {
      // Every layer is a hit: when the image of this top key is there too, there is nothing to do.
      const image = await findImage(ctx.shared, plan.layers[plan.layers.length - 1]!.key);
      if (image) finishBuild(record, image);
    }
    // The record first: the workers' events need a build to be folded into.
    await ctx.records.put(record);
    if (isFinal(record)) return record;
    try {
      await ctx.flows.add(buildFlow(record, plan.keyed, plan.firstMiss));
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
