import { describe, expect, it } from 'vitest';
import { OUTAGE_CODES, USAGE_CODES, errorClass, type ErrorCode } from './error-codes.js';
import { AbortedError, ExecError, HostError, LayerFailedError, ProjectError, StoreError, VmlbError } from './errors.js';

describe('errorClass', () => {
  it('classifies the errors of the engine by what a retry can do', () => {
    const classes = [
      new LayerFailedError({ layer: '02_x', exitCode: 1, logTail: '', logPath: '' }),
      new ProjectError('/p', []),
      new ExecError(['qemu-img'], 1, undefined, ''),
      new HostError('no qemu-img'),
      new StoreError('down'),
      new AbortedError(),
    ].map((e) => [e.code, errorClass(e.code)]);
    expect(classes).toEqual([
      ['LAYER_FAILED', 'input'],
      ['PROJECT_INVALID', 'input'],
      ['EXEC_FAILED', 'host'],
      ['HOST_UNSUITABLE', 'host'],
      ['STORE_ERROR', 'transient'],
      ['ABORTED', 'transient'],
    ]);
  });

  it('keeps a VmlbError its code and its retryable flag', () => {
    const e = new VmlbError('FLEET_ERROR', 'the scheduler answered 502', { retryable: true });
    expect([e.name, e.code, e.retryable, errorClass(e.code)]).toEqual(['VmlbError', 'FLEET_ERROR', true, 'transient']);
  });
});

describe('USAGE_CODES and OUTAGE_CODES', () => {
  it('are the codes the CLI has always shown as usage (exit 2) and outage (exit 3) errors', () => {
    const usage: ErrorCode[] = [
      ...['PROJECT_INVALID', 'NO_SUCH_LAYER', 'INVALID_LAYER_NAME', 'LAYER_EXISTS', 'LAYER_NOT_FIRST', 'PROJECT_NOT_FOUND'],
      ...['S3_CONFIG', 'BAD_SETTING', 'SANDBOX_UNAVAILABLE', 'NEEDS_ROOT', 'NEEDS_NBD'],
      ...['FLEET_USAGE', 'FLEET_AUTH', 'FLEET_REFUSED', 'NO_SUCH_BUILD', 'MIGRATE_USAGE'],
    ] as ErrorCode[];
    expect([...USAGE_CODES].sort()).toEqual(usage.sort());
    expect([...OUTAGE_CODES].sort()).toEqual(['FLEET_UNAVAILABLE', 'FLEET_UNREACHABLE']);
  });

  it('are never errors a retry could fix, save the outages', () => {
    expect([...USAGE_CODES].filter((c) => errorClass(c) === 'transient')).toEqual([]);
    expect([...OUTAGE_CODES].map(errorClass)).toEqual(['transient', 'transient']);
  });
});
