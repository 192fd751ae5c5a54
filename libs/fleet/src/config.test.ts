import { describe, expect, it } from 'vitest';
import { fleetConfigFrom } from './config.js';
import { describeRedisTarget, redisHosts } from './redis-target.js';

const base = { VMLB_SHARED: 's3://bucket/prefix', S3_ENDPOINT: 'http://s3:9000', S3_ACCESS_KEY: 'k', S3_SECRET_KEY: 's' };
const problemsOf = (env: Record<string, string>): string[] => {
  try {
    fleetConfigFrom({ ...base, ...env });
  } catch (e) {
    return (e as Error).message.split('\n').slice(1).map((l) => l.trim());
  }
  return [];
};

describe('fleet config: where Redis is', () => {
  it('one Redis by default, REDIS_URL as given; REDIS_PASSWORD and REDIS_USERNAME go with a URL that has none', () => {
    expect(fleetConfigFrom(base).redis).toEqual({ kind: 'url', url: 'redis://127.0.0.1:6379' });
    expect(fleetConfigFrom({ ...base, REDIS_URL: 'redis://scheduler:pw@redis:6379' }).redis).toEqual({ kind: 'url', url: 'redis://scheduler:pw@redis:6379' });
    expect(fleetConfigFrom({ ...base, REDIS_URL: 'rediss://redis:6380/2', REDIS_USERNAME: 'worker', REDIS_PASSWORD: 's3cret' }).redis).toEqual({
      kind: 'url',
      url: 'rediss://redis:6380/2',
      username: 'worker',
      password: 's3cret',
    });
  });

  it('REDIS_SENTINELS: the sentinels, the master group name (default vmlb) and both passwords; not REDIS_URL\'s address', () => {
    const { redis } = fleetConfigFrom({
      ...base,
      REDIS_URL: 'redis://ignored:1',
      REDIS_SENTINELS: 'sentinel-1:26379, sentinel-2:26379,[fd00::3]:26380,10.0.0.4:26379',
      REDIS_USERNAME: 'scheduler',
      REDIS_PASSWORD: 'data-pw',
      REDIS_SENTINEL_PASSWORD: 'sentinel-pw',
    });
    expect(redis).toEqual({
      kind: 'sentinel',
      sentinels: [
        { host: 'sentinel-1', port: 26379 },
        { host: 'sentinel-2', port: 26379 },
        { host: 'fd00::3', port: 26380 },
        { host: '10.0.0.4', port: 26379 },
      ],
      name: 'vmlb',
      username: 'scheduler',
      password: 'data-pw',
      sentinelUsername: undefined,
      sentinelPassword: 'sentinel-pw',
    });
    expect(fleetConfigFrom({ ...base, REDIS_SENTINELS: 's:1', REDIS_SENTINEL_NAME: 'queue.eu-1' }).redis).toMatchObject({ name: 'queue.eu-1', password: undefined });
    // A part's REDIS_URL keeps giving its own credentials (and database) when sentinels take over the address.
    expect(fleetConfigFrom({ ...base, REDIS_SENTINELS: 's:1', REDIS_URL: 'redis://worker:p%40ss@redis:6379/2' }).redis).toMatchObject({ kind: 'sentinel', username: 'worker', password: 'p@ss', db: 2 });
    expect(problemsOf({ REDIS_SENTINELS: 's:1', REDIS_URL: 'redis://worker:pw@redis:6379', REDIS_PASSWORD: 'other' })).toEqual(['REDIS_PASSWORD: REDIS_URL has a password already (give it in one place)']);
    expect(redisHosts(redis)).toEqual(['sentinel-1', 'sentinel-2', 'fd00::3', '10.0.0.4']);
  });

  it('rejects every bad entry and setting at once, each naming its variable', () => {
    expect(problemsOf({ REDIS_SENTINELS: 'sentinel-1:26379,sentinel-2,redis://s:1,s:99999', REDIS_SENTINEL_NAME: 'my master' })).toEqual([
      'REDIS_SENTINELS: "sentinel-2" is not HOST:PORT (e.g. sentinel-1:26379; an IPv6 address in brackets)',
      'REDIS_SENTINELS: "redis://s:1" is not HOST:PORT (e.g. sentinel-1:26379; an IPv6 address in brackets)',
      'REDIS_SENTINELS: "s:99999" is not HOST:PORT (e.g. sentinel-1:26379; an IPv6 address in brackets)',
      'REDIS_SENTINEL_NAME must be a master group name (letters, digits, . _ -, up to 64)',
    ]);
    expect(problemsOf({ REDIS_SENTINELS: ' , ' })).toEqual(['REDIS_SENTINELS: names no sentinel (HOST:PORT,HOST:PORT,…)']);
    expect(problemsOf({ REDIS_SENTINEL_PASSWORD: 'x', REDIS_SENTINEL_NAME: 'vmlb' })).toEqual([
      'REDIS_SENTINEL_NAME: set, but REDIS_SENTINELS is not (without sentinels, REDIS_URL names the one Redis)',
      'REDIS_SENTINEL_PASSWORD: set, but REDIS_SENTINELS is not (without sentinels, REDIS_URL names the one Redis)',
    ]);
    expect(problemsOf({ REDIS_URL: 'redis://:pw@redis:6379', REDIS_PASSWORD: 'other' })).toEqual(['REDIS_PASSWORD: REDIS_URL has a password already (give it in one place)']);
    expect(problemsOf({ REDIS_URL: 'http://redis:6379' })).toEqual(['REDIS_URL must be a redis:// or rediss:// URL']);
    // With the other variables' problems, in the same message.
    expect(problemsOf({ REDIS_SENTINELS: 'nope', VMLB_SCHEDULER_PORT: 'x' })).toEqual([
      'REDIS_SENTINELS: "nope" is not HOST:PORT (e.g. sentinel-1:26379; an IPv6 address in brackets)',
      'VMLB_SCHEDULER_PORT must be a whole number',
    ]);
  });

  it('describes the target for a log line with the passwords masked', () => {
    const d = (env: Record<string, string>) => describeRedisTarget(fleetConfigFrom({ ...base, ...env }).redis);
    expect(d({ REDIS_URL: 'redis://scheduler:hunter2@redis:6379' })).toBe('redis://scheduler:***@redis:6379');
    expect(d({ REDIS_URL: 'redis://:hunter2@redis:6379' })).toBe('redis://:***@redis:6379');
    expect(d({ REDIS_URL: 'redis://redis:6379', REDIS_PASSWORD: 'hunter2' })).toBe('redis://redis:6379 (password from REDIS_PASSWORD)');
    const s = d({ REDIS_SENTINELS: 'a:1,[fd00::1]:2', REDIS_USERNAME: 'worker', REDIS_PASSWORD: 'hunter2', REDIS_SENTINEL_PASSWORD: 'hunter3' });
    expect(s).toBe('sentinels a:1,[fd00::1]:2, master vmlb, user worker (data nodes: password, sentinels: password)');
    expect(s).not.toMatch(/hunter/);
  });
});
