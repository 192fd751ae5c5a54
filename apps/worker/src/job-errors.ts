import { UnrecoverableError, type Job } from 'bullmq';
import type { z } from 'zod';
import { VmlbError, errorClass } from '@vmlb/layer-engine';

/**
 * Which failures retrying cannot fix: those whose code is classified `input` (error-codes.ts in
 * the engine), where the same project fails the same way on any worker. They fail the build at
 * once (BullMQ's UnrecoverableError); everything else (the shared store or Redis past their own
 * retries, a disk or daemon problem on one host) is retried with backoff, perhaps on another
 * worker, up to the job's attempts.
 */
export function isUnrecoverable(e: unknown): boolean {
  return e instanceof VmlbError && !e.retryable && errorClass(e.code) === 'input';
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
