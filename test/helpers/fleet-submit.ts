/**
 * What the scheduler does for a submitted build, reduced to what the worker tests need (the
 * scheduler has its own): pack the project, store it as `projects/<sha>.tar.gz`, plan it with
 * the engine (keys with the build id as nonce, shared manifests), and add the BullMQ flow as
 * docs/fleet.md describes it: flatten ← layer N ← … ← the first missing layer; hits make no jobs.
 */
import { execa } from 'execa';
import { FlowProducer, type FlowJob } from 'bullmq';
import { Redis } from 'ioredis';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { computeKeys } from '../../libs/layer-engine/src/project/cache-key.js';
import { loadProject } from '../../libs/layer-engine/src/project/layer-project.js';
import type { SharedStore } from '../../libs/layer-engine/src/store/shared-store.js';
import { FLATTEN_JOB_OPTIONS, LAYER_JOB_OPTIONS } from '../../libs/fleet/src/job-options.js';
import type { FlattenJobInput as FlattenJobData, LayerJobInput as LayerJobData } from '../../libs/fleet/src/jobs.js';
import { flattenJobId, flattenQueueOf, layerJobId, layerQueueOf, storePaths } from '../../libs/fleet/src/names.js';

export interface PlannedFleetLayer {
  index: number;
  name: string;
  key: string;
  status: 'hit' | 'queued';
  cacheable: boolean;
  share: boolean;
}

export interface SubmittedBuild {
  buildId: string;
  team: string;
  project: string;
  layers: PlannedFleetLayer[];
  /** Keys of every layer, root first. */
  chain: string[];
  layerJobIds: string[];
  flattenJobId: string;
}

export interface SubmitOptions {
  redisUrl: string;
  shared: SharedStore;
  /** @default a random id */
  buildId?: string;
  /** @default 'test' */
  team?: string;
  /** Overrides of the layer jobs' options (e.g. a short backoff). */
  layerJobOptions?: FlowJob['opts'];
  /** The pool whose queues get the jobs (`shared` must then be that pool's namespace). @default 'default' */
  pool?: string;
  /** Queue a flatten job on top (as `vmlb submit --flatten` does); without it the top job is the last layer's. @default true */
  flatten?: boolean;
}

async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const c of createReadStream(file)) h.update(c as Buffer);
  return h.digest('hex');
}

/** `vmlb submit`'s packing: the project folder without build/ and dot-files. */
export async function packProject(dir: string, out: string): Promise<void> {
  await execa('tar', ['-czf', out, '-C', dir, '--exclude=./build', '--exclude=./.*', '.']);
}

export async function submitProject(dir: string, o: SubmitOptions): Promise<SubmittedBuild> {
  const buildId = o.buildId ?? `b${randomBytes(6).toString('hex')}`;
  const team = o.team ?? 'test';
  const pool = o.pool ?? 'default';
  const tmp = await mkdtemp(path.join(os.tmpdir(), 'vmlb-submit-'));
  let project: string;
  try {
    const tarball = path.join(tmp, 'project.tar.gz');
    await packProject(dir, tarball);
    project = await sha256File(tarball);
    await o.shared.putFile(storePaths.project(project), tarball);
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }

  const keyed = computeKeys(await loadProject(dir), { nonce: buildId });
  const found = await Promise.all(keyed.map((k) => (k.cacheable ? o.shared.getManifest(k.key) : null)));
  // Hits are a prefix: past a miss, a shared copy was written on another parent than this build's.
  let firstMiss = found.findIndex((m) => m === null);
  if (firstMiss < 0) firstMiss = keyed.length;
  const chain = keyed.map((k) => k.key);
  const layers: PlannedFleetLayer[] = keyed.map((k, index) => ({
    index,
    name: k.spec.name,
    key: k.key,
    status: index < firstMiss ? 'hit' : 'queued',
    cacheable: k.cacheable,
    share: !k.spec.hints.noshare,
  }));

  const layerNode = (index: number): FlowJob => {
    const k = keyed[index]!;
    const data: LayerJobData = {
      buildId,
      team,
      pool,
      project,
      nonce: buildId,
      index,
      name: k.spec.name,
      key: k.key,
      chain: chain.slice(0, index),
      cacheable: k.cacheable,
      share: !k.spec.hints.noshare,
    };
    return {
      name: `layer ${k.spec.name}`,
      queueName: layerQueueOf(pool),
      data,
      opts: { ...LAYER_JOB_OPTIONS, ...o.layerJobOptions, jobId: layerJobId(buildId, index) },
      children: index > firstMiss ? [layerNode(index - 1)] : undefined,
    };
  };
  const flatten: FlattenJobData = { buildId, team, pool, chain, project, nonce: buildId };
  const top = firstMiss < keyed.length ? layerNode(keyed.length - 1) : undefined;
  const flow: FlowJob | undefined = o.flatten === false ? top : {
    name: 'flatten',
    queueName: flattenQueueOf(pool),
    data: flatten,
    opts: { ...FLATTEN_JOB_OPTIONS, jobId: flattenJobId(buildId) },
    children: top ? [top] : undefined,
  };
  const connection = new Redis(o.redisUrl, { maxRetriesPerRequest: null });
  const producer = new FlowProducer({ connection });
  try {
    if (flow) await producer.add(flow);
  } finally {
    await producer.close();
    connection.disconnect();
  }
  const layerJobIds = layers.filter((l) => l.status === 'queued').map((l) => layerJobId(buildId, l.index));
  return { buildId, team, project, layers, chain, layerJobIds, flattenJobId: flattenJobId(buildId) };
}
