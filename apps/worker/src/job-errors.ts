import { UnrecoverableError, type Job } from 'bullmq';
import type { z } from 'zod';
import { LayerFailedError, ProjectError, VmlbError } from '@vmlb/layer-engine';

/**
 * Which failures retrying cannot fix: the same project fails the same way on any worker. Those
 * fail the build at once (BullMQ's UnrecoverableError); everything else (the shared store or
 * Redis past their own retries, a disk or daemon problem on one host) is retried with backoff,
 * perhaps on another worker, up to the job's attempts.
 */
const PROJECT_CODES = new Set([
  'LAYER_FAILED',
  'PROJECT_INVALID',
  'PROJECT_NOT_FOUND',
  'LAYER_SETUP',
  'BAD_MOUNT',
  'DISK_TOO_SMALL',
  'DISK_SHRINK',
  /** A modify-disk of the original's contract that never connected its target. */
  'LEGACY_NO_TARGET',
  'NO_SUCH_PARTITION',
  'NO_ROOT_PARTITION',
  'BASE_IMAGE_MISSING',
  'BASE_IMAGE_BACKING',
  'BASE_IMAGE_FORMAT',
  'BASE_IMAGE_SHA256',
  /** The worker computes another key than the scheduler did (see layer-worker.ts). */
  'KEY_MISMATCH',
  /** The job's data does not fit its schema. */
  'JOB_DATA',
  /** A layer the job needs is nowhere (e.g. a # noshare layer a flatten cannot rebuild). */
  'LAYER_UNAVAILABLE',
]);

export function isUnrecoverable(e: unknown): boolean {
  if (e instanceof LayerFailedError || e instanceof ProjectError) return true;
  return e instanceof VmlbError && !e.retryable && PROJECT_CODES.has(e.code);
}

/** The job's data by its schema; data that does not fit fails the job for good, naming each field. */
export function parseJobData<T>(schema: z.ZodType<T>, job: Job, kind: 'layer' | 'flatten'): T {
  const parsed = schema.safeParse(job.data);
  if (parsed.success) return parsed.data;
  const fields = parsed.error.issues.map((i) => `${i.path.join('.') || '(data)'}: ${i.message}`).join('; ');
  throw new UnrecoverableError(`${kind} job ${job.id}: its data is not a ${kind} job's: ${fields}`);
}

export function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
