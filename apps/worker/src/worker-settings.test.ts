import { describe, expect, it } from 'vitest';
import { DEFAULT_WORKER_SETTINGS, fleetDenyList, workerSettingsFrom } from './worker-settings.js';

const base = { VMLB_SHARED: 's3://bucket/p', S3_ENDPOINT: 'http://127.0.0.1:9000', S3_ACCESS_KEY: 'a', S3_SECRET_KEY: 's' };

describe('workerSettingsFrom', () => {
  it('takes the defaults, and the worker id from VMLB_WORKER_ID', () => {
    const { fleet, settings } = workerSettingsFrom({ ...base, VMLB_WORKER_ID: 'w1' });
    expect(fleet.shared.bucket).toBe('bucket');
    expect(settings).toMatchObject({ ...DEFAULT_WORKER_SETTINGS, id: 'w1' });
  });

  it('reads durations and milliseconds', () => {
    const { settings } = workerSettingsFrom({ ...base, VMLB_WORKER_GRACE: '90s', VMLB_WORKER_LOCK_MS: '2000', VMLB_WORKER_STALLED_MS: '1000', VMLB_WORKER_METRICS_PORT: '9464' });
    expect(settings).toMatchObject({ graceMs: 90_000, lockDurationMs: 2000, stalledIntervalMs: 1000, metricsPort: 9464 });
  });

  it("reports every problem at once, the fleet's and the worker's, each naming its variable", () => {
    let message = '';
    try {
      workerSettingsFrom({ ...base, VMLB_SHARED: undefined, VMLB_WORKER_SLOTS: 'many', VMLB_WORKER_GRACE: 'soon', VMLB_WORKER_LOCK_MS: '10' });
    } catch (e) {
      message = (e as Error).message;
    }
    expect(message).toMatch(/4 problems/);
    for (const name of ['VMLB_SHARED', 'VMLB_WORKER_SLOTS', 'VMLB_WORKER_GRACE', 'VMLB_WORKER_LOCK_MS']) expect(message).toContain(name);
  });

  it('reads the sandbox deny list, and refuses to run unsandboxed', () => {
    expect(workerSettingsFrom({ ...base, VMLB_SANDBOX_DENY: '10.0.0.0/8, redis.internal ,fd00::/8' }).settings.sandboxDeny).toEqual(['10.0.0.0/8', 'redis.internal', 'fd00::/8']);
    expect(workerSettingsFrom({ ...base, VMLB_SANDBOX: '1' }).settings.sandboxDeny).toEqual([]);
    expect(() => workerSettingsFrom({ ...base, VMLB_SANDBOX: '0' })).toThrow(/VMLB_SANDBOX: a worker runs every layer sandboxed/);
  });

  it('reads VMLB_AFFINITY_SMALL_CHAIN as a size (0: always wait for a holder), naming it when it is none', () => {
    expect(workerSettingsFrom(base).settings.smallChainBytes).toBe(32 * 1024 * 1024);
    expect(workerSettingsFrom({ ...base, VMLB_AFFINITY_SMALL_CHAIN: '0' }).settings.smallChainBytes).toBe(0);
    expect(workerSettingsFrom({ ...base, VMLB_AFFINITY_SMALL_CHAIN: '1G' }).settings.smallChainBytes).toBe(1024 ** 3);
    expect(() => workerSettingsFrom({ ...base, VMLB_AFFINITY_SMALL_CHAIN: 'big' })).toThrow(/VMLB_AFFINITY_SMALL_CHAIN: /);
  });

  it('refuses a VMLB_LOG_MAX that is not a size of at least 4K, naming it', () => {
    expect(() => workerSettingsFrom({ ...base, VMLB_LOG_MAX: '64M' })).not.toThrow();
    expect(() => workerSettingsFrom({ ...base, VMLB_LOG_MAX: 'lots' })).toThrow(/VMLB_LOG_MAX must be a size of at least 4K \(e\.g\. 64M, the default\), not "lots"/);
  });

  it("denies layers the fleet's Redis, S3 endpoint and scheduler, and VMLB_SANDBOX_DENY", () => {
    const { fleet, settings } = workerSettingsFrom({
      ...base,
      REDIS_URL: 'redis://:pw@redis.internal:6379',
      S3_ENDPOINT: 'http://[fd00::9]:9000',
      VMLB_SCHEDULER_HOST: '0.0.0.0',
      VMLB_SANDBOX_DENY: '10.0.0.0/8',
    });
    expect(fleetDenyList(fleet, settings.sandboxDeny)).toEqual(['redis.internal', 'fd00::9', '10.0.0.0/8']);
  });
});
