/**
 * An error the API answers with: an HTTP status, a stable `code` and a message that names what
 * is wrong; `details` (e.g. the refused tar `entry`) go into the JSON body beside them:
 * `{ "error": { "code": "UNSAFE_ENTRY", "message": "…", "entry": "../x" } }`.
 */
export class HttpError extends Error {
  readonly status: number;
  readonly code: string;
  readonly details: Record<string, unknown>;
  constructor(status: number, code: string, message: string, details: Record<string, unknown> = {}) {
    super(message);
    this.name = 'HttpError';
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

export const unauthorized = () =>
  new HttpError(401, 'UNAUTHORIZED', 'a valid team token is required: send "Authorization: Bearer TOKEN"');

/**
 * Redis (the queue, the event streams, the workers' registrations) is not connected. Answered
 * at once: BullMQ's connections queue commands until Redis is back, so without this check a
 * submission would wait as long as the outage lasts.
 */
export const redisUnavailable = (why: string) =>
  new HttpError(503, 'REDIS_UNAVAILABLE', `the fleet's queue (Redis) does not answer (${why}); nothing was queued: try again shortly`);

/** Another team's build is answered exactly like a build that does not exist. */
export const noSuchBuild = (id: string) => new HttpError(404, 'NO_SUCH_BUILD', `there is no build ${id}`);
