import http from 'node:http';
import https from 'node:https';
import { Client } from 'minio';
import type { S3Config } from './s3-config.js';

/**
 * The keep-alive agent. Its `timeout` applies to idle pooled sockets only: Node lowers it to a
 * second under the server's `Keep-Alive: timeout=N` hint, so a pooled socket is dropped before
 * the server closes it. It must not be the timeout of a request in flight: a reused socket
 * keeps the lowered value (4 s for a Node server such as s3rver), which is why uploads failed
 * within seconds, under load, with "no data for 60000 ms" while the server assembled a part.
 */
export function keepAliveAgent(useSSL: boolean, idleMs: number): http.Agent {
  return useSSL ? new https.Agent({ keepAlive: true, timeout: idleMs }) : new http.Agent({ keepAlive: true, timeout: idleMs });
}

/**
 * The transport the minio client makes its requests with: each request is given up on (with
 * ETIMEDOUT, so it is retried) when its connection is silent for `idleMs` — set per request,
 * whatever timeout a pooled socket carried before.
 */
export function idleTimeoutTransport(useSSL: boolean, idleMs: number): Transport {
  const mod = useSSL ? https : http;
  return {
    request: ((options: http.RequestOptions, callback?: (res: http.IncomingMessage) => void) => {
      const req = mod.request(options, callback);
      req.setTimeout(idleMs, () => req.destroy(Object.assign(new Error(`no data for ${idleMs} ms`), { code: 'ETIMEDOUT' })));
      return req;
    }) as Transport['request'],
  };
}

export type Transport = NonNullable<ConstructorParameters<typeof Client>[0]['transport']>;

/** The `minio` client for a store's configuration (one place that maps S3Config onto it). */
export function minioClient(
  config: S3Config,
  transportAgent?: ConstructorParameters<typeof Client>[0]['transportAgent'],
  transport?: Transport,
): Client {
  return new Client({
    endPoint: config.host,
    port: config.port,
    useSSL: config.useSSL,
    accessKey: config.accessKey,
    secretKey: config.secretKey,
    // Given, so the client never asks the server for the bucket's region first.
    region: config.region,
    pathStyle: config.pathStyle,
    ...(transportAgent ? { transportAgent } : {}),
    ...(transport ? { transport } : {}),
  });
}
