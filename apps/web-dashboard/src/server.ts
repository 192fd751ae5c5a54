import fastifyHttpProxy from '@fastify/http-proxy';
import Fastify, { type FastifyInstance } from 'fastify';
import type { DashboardConfig } from './config.js';
import { registerDashboard, type DashboardOptions } from './static-files.js';

export interface DashboardServer {
  app: FastifyInstance;
  /** Listens on config.host:port (port 0: any free one); returns the base URL. */
  listen(): Promise<string>;
  /** Stops listening and ends open streams. Safe to call twice. */
  close(): Promise<void>;
}

/** What the proxy answers when the scheduler does not: the API's own error shape. */
function upstreamError(server: string) {
  return (reply: { status(code: number): { send(body: unknown): unknown } }, { error }: { error: Error & { statusCode?: number; cause?: unknown } }) => {
    const cause = error.cause instanceof Error ? error.cause.message : error.message;
    const timeout = error.statusCode === 504;
    reply
      .status(timeout ? 504 : 502)
      .send({ error: { code: timeout ? 'SCHEDULER_TIMEOUT' : 'SCHEDULER_UNREACHABLE', message: `the scheduler at ${server} does not answer: ${cause}` } });
  };
}

/**
 * The dashboard beside the scheduler, for deployments that keep the scheduler's port
 * private: the same static app at `/`, and `/v1/…` and `/healthz` proxied to VMLB_SERVER
 * (the team token travels in the Authorization header, untouched). Responses are streamed
 * through as they come, so the server-sent events of `/v1/builds/:id/events` are not held
 * back; nothing here compresses or buffers them.
 */
export async function createDashboardServer(config: DashboardConfig, opts: DashboardOptions = {}): Promise<DashboardServer> {
  // No body limit of its own: an upload is streamed to the scheduler, which enforces its cap.
  const app = Fastify({ logger: false, return503OnClosing: true, forceCloseConnections: true });
  const onError = upstreamError(config.server);
  const proxy = (prefix: string) =>
    app.register(fastifyHttpProxy, {
      upstream: config.server,
      prefix,
      rewritePrefix: prefix,
      // A long-lived event stream sends a ping every 15 s; the default body timeout (300 s of
      // silence) is only reached by a scheduler that hangs.
      replyOptions: { onError },
    });
  await proxy('/v1');
  await proxy('/healthz');
  await registerDashboard(app, opts);
  app.setNotFoundHandler((req, reply) => reply.status(404).send({ error: { code: 'NOT_FOUND', message: `no route ${req.method} ${req.url.split('?')[0]}` } }));

  let closed = false;
  return {
    app,
    async listen() {
      await app.listen({ host: config.host, port: config.port });
      const addr = app.server.address();
      const port = typeof addr === 'object' && addr ? addr.port : config.port;
      const host = config.host.includes(':') ? `[${config.host}]` : config.host;
      return `http://${host}:${port}`;
    },
    async close() {
      if (closed) return;
      closed = true;
      await app.close();
    },
  };
}
