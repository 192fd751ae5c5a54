import type { Redis } from 'ioredis';
import { redisKeys } from '@vmlb/fleet';
import type { Logger } from './logger.js';
import { withTimeout } from './with-timeout.js';

/**
 * Which of the schedulers follows builds (folds their events into the history, asks BullMQ how
 * their jobs stand): the one holding a lease in Redis, `vmlb:scheduler-leader` = its instance id,
 * set with NX and a TTL and renewed well before it runs out. Every scheduler serves every API
 * route; only the leader follows. When the leader dies, its lease runs out (ttlMs) and the next
 * scheduler to try (every renewMs) takes it: a takeover within ttlMs + renewMs. A leader that
 * cannot renew (Redis unreachable) for ttlMs − renewMs steps down by itself, since another may hold the
 * lease by then; two leaders for a moment do no harm (a final record is never overwritten).
 * Each try waits at most renewMs for Redis: the connection queues commands while Redis does
 * not answer (a partition gives no error), and a try that waited for it would never step down.
 * A take that Redis carries out after its try gave up leaves the lease under this id; the next
 * try adopts it (TAKE renews a lease that already is this scheduler's).
 */

const RENEW = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end`;
const TAKE = `local v = redis.call('GET', KEYS[1])
if v == false then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
return 0`;
const RELEASE = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end`;

export interface LeaseOptions {
  /** How long a lease lasts unrenewed. @default 5000 */
  ttlMs?: number;
  /** How often the leader renews and the others try. @default 1000 */
  renewMs?: number;
}

export class LeaderLease {
  private leading = false;
  private lastRenewed = 0;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  private running: Promise<void> = Promise.resolve();
  readonly ttlMs: number;
  readonly renewMs: number;

  constructor(
    private readonly redis: Redis,
    readonly id: string,
    private readonly onChange: (leading: boolean) => void,
    private readonly log: Logger,
    o: LeaseOptions = {},
  ) {
    this.ttlMs = o.ttlMs ?? 5000;
    this.renewMs = o.renewMs ?? 1000;
  }

  get isLeader(): boolean {
    return this.leading;
  }

  /** The instance id of the leader now, or null (asks Redis). */
  async holder(): Promise<string | null> {
    return this.redis.get(redisKeys.leader);
  }

  /** Tries once at once, then every renewMs. */
  async start(): Promise<void> {
    await this.tick();
    this.schedule();
  }

  private schedule(): void {
    if (this.closed) return;
    this.timer = setTimeout(() => {
      this.running = this.tick().finally(() => this.schedule());
    }, this.renewMs);
  }

  private async tick(): Promise<void> {
    try {
      if (this.leading) {
        const ok = (await withTimeout(this.redis.eval(RENEW, 1, redisKeys.leader, this.id, String(this.ttlMs)), this.renewMs)) === 1;
        if (ok) this.lastRenewed = Date.now();
        else this.set(false, 'another scheduler holds the lease now');
      } else {
        const ok = (await withTimeout(this.redis.eval(TAKE, 1, redisKeys.leader, this.id, String(this.ttlMs)), this.renewMs)) === 1;
        if (ok) {
          this.lastRenewed = Date.now();
          this.set(true, 'took the lease');
        }
      }
    } catch (e) {
      // One try before the lease can run out: down before another can take it, as far as this side can tell.
      if (this.leading && Date.now() - this.lastRenewed >= this.ttlMs - this.renewMs) this.set(false, `could not renew the lease for ${(Date.now() - this.lastRenewed) / 1000} s (${(e as Error).message})`);
    }
  }

  private set(leading: boolean, why: string): void {
    if (this.leading === leading || this.closed) return;
    this.leading = leading;
    this.log.info(leading ? 'following builds: this scheduler leads' : 'no longer following builds: another scheduler leads', { scheduler: this.id, why });
    this.onChange(leading);
  }

  /** Stops trying; a leader gives the lease up, so another takes over at its next try. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.timer);
    await this.running.catch(() => undefined);
    if (this.leading) {
      this.leading = false;
      await this.redis.eval(RELEASE, 1, redisKeys.leader, this.id).catch(() => undefined);
    }
  }
}
