import { S3Error } from 'minio';
import { createServer, type AddressInfo, type Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import { s3ConfigFrom } from './s3-config.js';
import { isTransientS3Error } from './s3-errors.js';
import { SharedStore } from './shared-store.js';

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

describe('a server that hints a short keep-alive (Keep-Alive: timeout=5, as Node servers such as s3rver send)', () => {
  it('may take longer than the hint to answer a request on a reused connection: the idle timeout is the request\'s, not the pooled socket\'s', async () => {
    const { createServer: createHttpServer } = await import('node:http');
    let requests = 0;
    const connections = new Set<unknown>();
    const server = createHttpServer((req, res) => {
      requests++;
      // The first request answers at once; the second, on the same kept-alive connection,
      // after 4.5 s of silence (a server busy assembling a part): longer than the 4 s Node
      // gives a pooled socket under that hint.
      const delay = requests === 1 ? 0 : 4500;
      setTimeout(() => {
        res.writeHead(404, { 'Content-Type': 'application/xml' });
        res.end('<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchKey</Code><Message>none</Message></Error>');
      }, delay);
    });
    server.on('connection', (s) => connections.add(s));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as AddressInfo).port;
    const store = new SharedStore(s3ConfigFrom('s3://bucket/p', { S3_ENDPOINT: `http://127.0.0.1:${port}`, S3_ACCESS_KEY: 'a', S3_SECRET_KEY: 's' }), {
      retry: { tries: 1 },
    });
    try {
      expect(await store.getManifest('0'.repeat(64))).toBeNull();
      expect(await store.getManifest('1'.repeat(64))).toBeNull();
      expect(requests).toBe(2);
      expect(connections.size).toBe(1);
    } finally {
      store.close();
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  }, 15_000);
});
