import { S3Error } from 'minio';
import { createServer, type AddressInfo, type Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import { s3ConfigFrom } from './s3-config.js';
import { isTransientS3Error, SharedStore } from './shared-store.js';

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

describe('a server that accepts and never answers', () => {
  it('is given up on after the idle timeout, as a retryable StoreError', async () => {
    const sockets = new Set<Socket>();
    const server = createServer((s) => {
      sockets.add(s);
      s.on('error', () => undefined);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as AddressInfo).port;
    const store = new SharedStore(s3ConfigFrom('s3://bucket/p', { S3_ENDPOINT: `http://127.0.0.1:${port}`, S3_ACCESS_KEY: 'a', S3_SECRET_KEY: 's' }), {
      idleTimeoutMs: 300,
      retry: { tries: 2, firstDelayMs: 10 },
    });
    try {
      const started = Date.now();
      const err = await store.getManifest('0'.repeat(64)).then(() => null, (e: unknown) => e);
      expect(err).toMatchObject({ code: 'STORE_ERROR', retryable: true });
      expect((err as Error).message).toMatch(/tried 2 times.*ETIMEDOUT/);
      expect(Date.now() - started).toBeLessThan(5000);
    } finally {
      store.close();
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(r));
    }
  });
});
