import { randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import { AbortedError, type SharedStore } from '@vmlb/layer-engine';
import { redisKeys } from './names.js';

/**
 * The claim on a layer key (docs/fleet.md, "The same layer is built once"). BullMQ flows cannot
 * share a child between two parents, so two builds that want the same layer coordinate on its
 * key instead: `vmlb:claim:<key>` (SET NX PX) names who builds it; the others wait for its
 * manifest. The same claim, on `image:<top key>`, keeps two flatten jobs from writing one image.
 *
 * An owner is `<jobId>|<workerId>|<random>`. A claim held by an earlier attempt of the *same*
 * BullMQ job is taken over at once: BullMQ gave this attempt the job's lock, so that attempt is
 * dead (a SIGKILLed worker) or has lost its lock and will lose the claim at its next renewal.
 */

/** How long a claim lives without renewal. @default 30 s */
export const CLAIM_TTL_MS = 30_000;
/** How often a holder renews it. */
export const CLAIM_RENEW_MS = 10_000;
/** How often a waiter looks at the shared store besides the `layer-ready` messages. */
export const READY_POLL_MS = 2000;

/** An owner id for a job's claim. */
export function claimOwner(jobId: string, workerId: string): string {
  return `${jobId}|${workerId}|${randomBytes(4).toString('hex')}`;
}

/** The job id an owner id names. */
export function claimJob(owner: string): string {
  return owner.slice(0, owner.indexOf('|'));
}

// KEYS[1] claim; ARGV: owner, ttl ms, a prefix whose holder may be taken over ('' for none).
const TAKE = `
local v = redis.call('GET', KEYS[1])
if (not v) or (ARGV[3] ~= '' and string.sub(v, 1, string.len(ARGV[3])) == ARGV[3]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 'OK'
end
return v`;

// Renews (ARGV[2] > 0) or releases (ARGV[2] == 0) a claim, only while it is still ARGV[1]'s.
const RENEW_OR_RELEASE = `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(ARGV[2]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) else redis.call('DEL', KEYS[1]) end
return 1`;

export type ClaimResult = { ok: true } | { ok: false; holder: string };

/**
 * Takes the claim on `key` for `owner`, unless someone else holds it (then says who). A holder
 * that is an earlier attempt of the owner's own job is taken over.
 */
export async function takeClaim(redis: Redis, key: string, owner: string, ttlMs = CLAIM_TTL_MS): Promise<ClaimResult> {
  const r = (await redis.eval(TAKE, 1, redisKeys.claim(key), owner, String(ttlMs), `${claimJob(owner)}|`)) as string;
  return r === 'OK' ? { ok: true } : { ok: false, holder: r };
}

/** Extends the claim; false when it is no longer `owner`'s (it expired and someone took it). */
export async function renewClaim(redis: Redis, key: string, owner: string, ttlMs = CLAIM_TTL_MS): Promise<boolean> {
  return (await redis.eval(RENEW_OR_RELEASE, 1, redisKeys.claim(key), owner, String(ttlMs))) === 1;
}

/** Gives the claim up if it is still `owner`'s; true when it was. */
export async function releaseClaim(redis: Redis, key: string, owner: string): Promise<boolean> {
  return (await redis.eval(RENEW_OR_RELEASE, 1, redisKeys.claim(key), owner, '0')) === 1;
}

export async function claimHolder(redis: Redis, key: string): Promise<string | null> {
  return redis.get(redisKeys.claim(key));
}

/**
 * A held claim, renewed every CLAIM_RENEW_MS until released. When a renewal finds the claim
 * gone or another's, `signal` aborts (whoever builds under it must stop: someone else builds
 * now). A renewal that fails on Redis is retried at the next tick (the claim has 30 s).
 */
export class ClaimLease {
  readonly key: string;
  readonly owner: string;
  private readonly redis: Redis;
  private readonly controller = new AbortController();
  private readonly timer: NodeJS.Timeout;
  private released = false;

  private constructor(redis: Redis, key: string, owner: string, renewMs: number, ttlMs: number) {
    this.redis = redis;
    this.key = key;
    this.owner = owner;
    this.timer = setInterval(() => {
      void renewClaim(redis, key, owner, ttlMs).then(
        (ours) => {
          if (!ours && !this.released) this.controller.abort(new AbortedError(`the claim on ${key} was lost (it expired and another job took it)`));
        },
        () => undefined,
      );
    }, renewMs);
    this.timer.unref();
  }

  /** Takes the claim and starts renewing it, or says who holds it. */
  static async take(redis: Redis, key: string, owner: string, o: { ttlMs?: number; renewMs?: number } = {}): Promise<ClaimLease | { holder: string }> {
    const ttlMs = o.ttlMs ?? CLAIM_TTL_MS;
    const r = await takeClaim(redis, key, owner, ttlMs);
    if (!r.ok) return { holder: r.holder };
    return new ClaimLease(redis, key, owner, o.renewMs ?? CLAIM_RENEW_MS, ttlMs);
  }

  /** Aborts when the claim is lost. */
  get signal(): AbortSignal {
    return this.controller.signal;
  }

  /** Whether the claim is still ours right now (asked of Redis, renewing it). */
  async stillOurs(): Promise<boolean> {
    return renewClaim(this.redis, this.key, this.owner);
  }

  /** Stops renewing and gives the claim up. Safe to call twice. */
  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    clearInterval(this.timer);
    await releaseClaim(this.redis, this.key, this.owner);
  }
}

/** Tells the waiters that `what` (a layer key, or `image:<top>`) is now in the shared store. */
export async function publishReady(redis: Redis, what: string): Promise<void> {
  await redis.publish(redisKeys.layerReady, what);
}

export interface WaitOptions {
  signal?: AbortSignal;
  /** @default READY_POLL_MS */
  pollMs?: number;
}

/**
 * Waits until `isReady()` says yes ('ready'), or the claim on `claimKey` is gone ('claim-free':
 * its holder gave up or died, so the caller may try to claim it). Woken by `layer-ready`
 * messages naming `claimKey` and by a poll every `pollMs`. Uses its own subscriber connection.
 */
export async function waitUntilReady(redis: Redis, claimKey: string, isReady: () => Promise<boolean>, o: WaitOptions = {}): Promise<'ready' | 'claim-free'> {
  const sub = redis.duplicate({ connectionName: `vmlb-wait-${claimKey.slice(0, 16)}` });
  let wake: () => void = () => {};
  const onMessage = (_channel: string, message: string) => {
    if (message === claimKey) wake();
  };
  const onAbort = () => wake();
  sub.on('message', onMessage);
  o.signal?.addEventListener('abort', onAbort);
  try {
    await sub.subscribe(redisKeys.layerReady);
    for (;;) {
      if (o.signal?.aborted) throw o.signal.reason instanceof Error ? o.signal.reason : new AbortedError();
      // Claim first: a holder publishes the manifest before it releases, so a free claim
      // followed by a missing manifest really means nobody made it.
      const free = (await claimHolder(redis, claimKey)) === null;
      if (await isReady()) return 'ready';
      if (free) return 'claim-free';
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, o.pollMs ?? READY_POLL_MS);
        wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
  } finally {
    o.signal?.removeEventListener('abort', onAbort);
    sub.off('message', onMessage);
    sub.disconnect();
  }
}

/**
 * Waits for layer `key`'s manifest in the shared store ('ready'), or for its claim to
 * disappear without it ('claim-free').
 */
export function waitForLayer(
  shared: Pick<SharedStore, 'getManifest'>,
  redis: Redis,
  key: string,
  signal?: AbortSignal,
  o: Omit<WaitOptions, 'signal'> & { claimKey?: string } = {},
): Promise<'ready' | 'claim-free'> {
  return waitUntilReady(redis, o.claimKey ?? key, async () => (await shared.getManifest(key, { signal })) !== null, { ...o, signal });
}
