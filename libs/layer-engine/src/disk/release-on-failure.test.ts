import { describe, expect, it } from 'vitest';
import { LayerFailedError, VmlbError } from '../errors.js';
import { releaseOnFailure } from './release-on-failure.js';

describe('releaseOnFailure', () => {
  it('keeps the step\'s error when the release fails too, noting the release failure in it', async () => {
    const failed = new LayerFailedError({ layer: '02_app', exitCode: 3, logTail: '', logPath: '/x.log' });
    const e = await releaseOnFailure(failed, async () => {
      throw new VmlbError('DISK_RELEASE_FAILED', 'releasing x failed', { retryable: true });
    });
    expect(e).toBe(failed);
    expect(failed.retryable).toBe(false);
    expect(failed.message).toBe('layer 02_app exited with status 3\n(and releasing what was attached failed too: releasing x failed)');
  });
  it('releases, and leaves the error as it is, when the release succeeds', async () => {
    let released = false;
    const e = new Error('boom');
    expect(await releaseOnFailure(e, async () => void (released = true))).toBe(e);
    expect(released).toBe(true);
    expect(e.message).toBe('boom');
  });
});
