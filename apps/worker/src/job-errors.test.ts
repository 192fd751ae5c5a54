import { describe, expect, it } from 'vitest';
import { ExecError, LayerFailedError, StoreError, VmlbError } from '@vmlb/layer-engine';
import { isUnrecoverable } from './job-errors.js';

describe('isUnrecoverable', () => {
  it('a failing script or a wrong project fails the build at once', () => {
    expect(isUnrecoverable(new LayerFailedError({ layer: '02_x', exitCode: 3, logTail: '', logPath: '' }))).toBe(true);
    expect(isUnrecoverable(new VmlbError('KEY_MISMATCH', 'keys differ'))).toBe(true);
    expect(isUnrecoverable(new VmlbError('DISK_TOO_SMALL', 'small'))).toBe(true);
  });

  it('the store, Redis and host troubles are retried', () => {
    expect(isUnrecoverable(new StoreError('S3 down', { retryable: true }))).toBe(false);
    expect(isUnrecoverable(new ExecError(['qemu-img', 'convert'], 1, undefined, 'No space left on device'))).toBe(false);
    expect(isUnrecoverable(new VmlbError('DISK_ATTACH_FAILED', 'no loop device'))).toBe(false);
    expect(isUnrecoverable(new Error('Connection is closed.'))).toBe(false);
  });
});
