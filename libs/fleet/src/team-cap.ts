import type { Redis } from 'ioredis';
import { redisKeys } from './names.js';

/**
 * The per-team cap on running layer jobs. `vmlb:team-running:<team>` is a sorted set: one
 * member per running job (its BullMQ job id), scored with the time its slot lapses. Taking a
 * slot first drops lapsed members, so a SIGKILLed worker's slots come back after
 * TEAM_SLOT_TTL_MS without anyone giving them back; a running job renews its slot. Taking is
 * idempotent per job (a retried job does not count twice).
 */

export const TEAM_SLOT_TTL_MS = 60_000;

// The set itself lives as long as its longest slot (a set nobody touches goes away).
const KEEP_SET = `
local function keep(key, ttl)
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end`;

// KEYS[1] the team's set; ARGV: holder, cap, now ms, ttl ms. Returns 1 when taken.
const TAKE = `${KEEP_SET}
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], tonumber(ARGV[3]) + tonumber(ARGV[4]), ARGV[1])
  keep(KEYS[1], tonumber(ARGV[4]))
  return 1
end
return 0`;

// Renews a slot if it is still held. Returns 1 when it was.
const RENEW = `${KEEP_SET}
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], tonumber(ARGV[2]) + tonumber(ARGV[3]), ARGV[1])
keep(KEYS[1], tonumber(ARGV[3]))
return 1`;

/** Takes one of `team`'s `cap` running slots for `holder`; false when the team is at its cap. */
export async function takeTeamSlot(redis: Redis, team: string, holder: string, cap: number, ttlMs = TEAM_SLOT_TTL_MS): Promise<boolean> {
  return (await redis.eval(TAKE, 1, redisKeys.teamRunning(team), holder, String(cap), String(Date.now()), String(ttlMs))) === 1;
}

export async function renewTeamSlot(redis: Redis, team: string, holder: string, ttlMs = TEAM_SLOT_TTL_MS): Promise<boolean> {
  return (await redis.eval(RENEW, 1, redisKeys.teamRunning(team), holder, String(Date.now()), String(ttlMs))) === 1;
}

export async function giveBackTeamSlot(redis: Redis, team: string, holder: string): Promise<void> {
  await redis.zrem(redisKeys.teamRunning(team), holder);
}

/** How many layer jobs of `team` hold a slot now. */
export async function teamRunning(redis: Redis, team: string): Promise<number> {
  const key = redisKeys.teamRunning(team);
  const [, count] = (await redis.multi().zremrangebyscore(key, '-inf', Date.now()).zcard(key).exec()) ?? [];
  return Number(count?.[1] ?? 0);
}
