import { S3Error } from 'minio';
import { describe, expect, it } from 'vitest';
import { isTransientS3Error } from './shared-store.js';

function s3Error(code: string): Error {
  const e = new S3Error('from the server');
  e.code = code;
  return e;
}

describe('isTransientS3Error', () => {
  it('retries the network, server errors and SlowDown', () => {
    for (const code of ['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'EAI_AGAIN']) {
      expect(isTransientS3Error(Object.assign(new Error(code), { code })), code).toBe(true);
    }
    for (const code of ['SlowDown', 'InternalError', 'ServiceUnavailable', 'RequestTimeout']) expect(isTransientS3Error(s3Error(code)), code).toBe(true);
    // The minio client's own message after its single 5xx retry, and a reply that was not S3 XML.
    expect(isTransientS3Error(new Error('Request failed after 1 retries: Error: Retryable HTTP status: 503'))).toBe(true);
    expect(isTransientS3Error(s3Error(''))).toBe(true);
  });

  it('does not retry a refusal or a missing bucket', () => {
    for (const code of ['AccessDenied', 'NoSuchBucket', 'InvalidAccessKeyId', 'SignatureDoesNotMatch', 'NoSuchKey']) {
      expect(isTransientS3Error(s3Error(code)), code).toBe(false);
    }
    expect(isTransientS3Error(new TypeError('bad argument'))).toBe(false);
  });
});
