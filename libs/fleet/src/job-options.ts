import type { JobsOptions } from 'bullmq';

/**
 * The retry policy of fleet jobs, for whoever adds them (the scheduler's flows). A failing
 * script is never retried (the worker throws UnrecoverableError); anything else that fails a
 * job (S3 or Redis trouble past the store's own retries, a host problem on one worker) is
 * retried with exponential backoff: 5 attempts, waiting 5, 10, 20 and 40 s (75 s in all), each
 * perhaps on another worker. A layer fails its parents at once (`failParentOnFailure`).
 */
export const JOB_ATTEMPTS = 5;
export const JOB_BACKOFF = { type: 'exponential', delay: 5000 } as const;

export const LAYER_JOB_OPTIONS: JobsOptions = { attempts: JOB_ATTEMPTS, backoff: JOB_BACKOFF, failParentOnFailure: true };
export const FLATTEN_JOB_OPTIONS: JobsOptions = { attempts: JOB_ATTEMPTS, backoff: JOB_BACKOFF };
