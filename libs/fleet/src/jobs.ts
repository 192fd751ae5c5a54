import { z } from 'zod';

/** What a layer job carries: enough for any worker to rebuild the same key. */
/**
 * The pool a job belongs to and the pools it may read (pools.ts), stamped by the scheduler. A
 * job queued before pools has neither: pool default, no trusted pools.
 */
const poolFields = {
  pool: z.string().default('default'),
  reads: z.array(z.string()).default([]),
};

export const LayerJobData = z.object({
  buildId: z.string(),
  team: z.string(),
  ...poolFields,
  /** sha256 of the project's .tar.gz in the shared store (storePaths.project). */
  project: z.string().regex(/^[0-9a-f]{64}$/),
  /** The build's nonce for `# nocache` keys (computeKeys' `nonce`). */
  nonce: z.string(),
  index: z.number().int().nonnegative(),
  name: z.string(),
  key: z.string().regex(/^[0-9a-f]{64}$/),
  /** Keys of every layer before this one, root first (the chain to pull). */
  chain: z.array(z.string().regex(/^[0-9a-f]{64}$/)),
  cacheable: z.boolean(),
  share: z.boolean(),
});
export type LayerJobData = z.infer<typeof LayerJobData>;
export type LayerJobInput = z.input<typeof LayerJobData>;

export const FlattenJobData = z.object({
  buildId: z.string(),
  team: z.string(),
  ...poolFields,
  /** The chain, root first; the image is its top flattened. */
  chain: z.array(z.string().regex(/^[0-9a-f]{64}$/)).min(1),
  /**
   * The project and nonce, as in the layer jobs: a worker that lacks a `# noshare` layer of the
   * chain (it lives only on the worker that built it) builds it again from them. Optional:
   * jobs queued by an older scheduler have none, and fail as LAYER_UNAVAILABLE instead.
   */
  project: z.string().regex(/^[0-9a-f]{64}$/).optional(),
  nonce: z.string().optional(),
});
export type FlattenJobData = z.infer<typeof FlattenJobData>;
export type FlattenJobInput = z.input<typeof FlattenJobData>;
