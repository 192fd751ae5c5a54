import { describe, expect, it } from 'vitest';
import { ExecError, LayerFailedError, ProjectError, StoreError, VmlbError, type ErrorCode } from '@vmlb/layer-engine';
import { isUnrecoverable } from './job-errors.js';

/** The codes the worker failed at once before they were classified in the engine: still so. */
const FAIL_AT_ONCE: ErrorCode[] = [
  'LAYER_FAILED',
  'PROJECT_INVALID',
  'PROJECT_NOT_FOUND',
  'LAYER_SETUP',
  'BAD_MOUNT',
  'DISK_TOO_SMALL',
  'DISK_SHRINK',
  'LEGACY_NO_TARGET',
  'NO_SUCH_PARTITION',
  'NO_ROOT_PARTITION',
  'BASE_IMAGE_MISSING',
  'BASE_IMAGE_BACKING',
  'BASE_IMAGE_FORMAT',
  'BASE_IMAGE_SHA256',
  'KEY_MISMATCH',
  'LAYER_UNAVAILABLE',
];

describe('isUnrecoverable', () => {
  it('a failing script or a wrong project fails the build at once', () => {
    expect(isUnrecoverable(new LayerFailedError({ layer: '02_x', exitCode: 3, logTail: '', logPath: '' }))).toBe(true);
    expect(isUnrecoverable(new ProjectError('/p', [{ where: '01_x', problem: 'no script' }]))).toBe(true);
    expect(FAIL_AT_ONCE.filter((code) => !isUnrecoverable(new VmlbError(code, 'x')))).toEqual([]);
  });

  it('an input error marked retryable is retried', () => {
    expect(isUnrecoverable(new VmlbError('KEY_MISMATCH', 'keys differ', { retryable: true }))).toBe(false);
  });

  it('the store, Redis and host troubles are retried', () => {
    expect(isUnrecoverable(new StoreError('S3 down', { retryable: true }))).toBe(false);
    expect(isUnrecoverable(new StoreError('no such layer'))).toBe(false);
    expect(isUnrecoverable(new ExecError(['qemu-img', 'convert'], 1, undefined, 'No space left on device'))).toBe(false);
    expect(isUnrecoverable(new VmlbError('DISK_ATTACH_FAILED', 'no loop device'))).toBe(false);
    expect(isUnrecoverable(new VmlbError('NO_SPACE', 'full'))).toBe(false);
    expect(isUnrecoverable(new VmlbError('NEEDS_NBD', 'this host attaches with fuse'))).toBe(false);
    expect(isUnrecoverable(new VmlbError('CLAIM_LOST', 'lapsed', { retryable: true }))).toBe(false);
    expect(isUnrecoverable(new Error('Connection is closed.'))).toBe(false);
  });
});
