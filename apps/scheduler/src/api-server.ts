import Fastify, { type FastifyInstance } from 'fastify';
import { StoreError, VmlbError } from '@vmlb/layer-engine';
import type { FleetConfig } from '@vmlb/fleet';
import { HttpError, unauthorized } from './http-error.js';
import type { Logger } from './logger.js';
import type { SchedulerMetrics } from './metrics.js';
import { Teams, type Team } from './teams.js';
import { UPLOAD_TYPES, isUpload, receiveUpload } from './upload.js';

declare module 'fastify' {
  interface FastifyRequest {
    team: Team | null;
  }
}

/**
 * The scheduler's HTTP server before its routes: what every request goes through. A project
 * upload (only POST /v1/builds takes one) is streamed to a temporary file in `workDir` under the
 * cap, hashed on the way; every /v1 route needs a team token (`req.team`); every answer is timed
 * for the metrics and drops its upload; errors become the API's JSON error shape — an HttpError
 * as it says, trouble with the history or the shared store as a 503, anything else a 500.
 */
export function createApiServer(deps: { config: FleetConfig; teams: Teams; metrics: SchedulerMetrics; log: Logger; workDir: string }): FastifyInstance {
  const { config, teams, metrics, log, workDir } = deps;
  // requestTimeout: a request (an upload) must arrive whole in time, or Node answers 408.
  const app = Fastify({ logger: false, bodyLimit: config.maxUploadBytes, requestTimeout: config.uploadTimeoutMs, return503OnClosing: true, forceCloseConnections: true });
  app.decorateRequest('team', null);

  app.addContentTypeParser(UPLOAD_TYPES, (req, payload, done) => {
    if (req.method !== 'POST' || req.routeOptions.url !== '/v1/builds') {
      payload.resume();
      done(new HttpError(415, 'UNSUPPORTED_MEDIA_TYPE', 'this route takes no upload'), undefined);
      return;
    }
    receiveUpload(payload, workDir, config.maxUploadBytes, req.headers['content-length'], config.uploadIdleMs).then(
      (u) => done(null, u),
      (e: Error) => done(e, undefined),
    );
  });

  app.addHook('onRequest', async (req) => {
    if (!req.url.startsWith('/v1/')) return;
    const token = Teams.bearer(req.headers.authorization);
    const team = token ? teams.authenticate(token) : null;
    if (!team) throw unauthorized();
    req.team = team;
  });

  app.addHook('onResponse', async (req, reply) => {
    if (isUpload(req.body)) await req.body.discard();
    const route = req.routeOptions.url ?? 'unmatched';
    metrics.httpDuration.observe({ method: req.method, route, status: String(reply.statusCode) }, reply.elapsedTime / 1000);
  });

  app.setErrorHandler(async (err: Error & { statusCode?: number; code?: string }, req, reply) => {
    if (isUpload(req.body)) await req.body.discard();
    if (err instanceof HttpError) {
      if (err.status === 401) reply.header('www-authenticate', 'Bearer realm="vmlb"');
      if (req.routeOptions.url === '/v1/builds' && req.method === 'POST' && err.status >= 400 && err.status < 500) {
        metrics.uploadsRefused.inc({ reason: err.code });
      }
      return reply.status(err.status).send({ error: { code: err.code, message: err.message, ...err.details } });
    }
    if (err instanceof VmlbError && err.code === 'HISTORY_UNAVAILABLE') {
      log.warn('build history trouble', { url: req.url, error: err.message });
      return reply.status(503).send({ error: { code: 'HISTORY_UNAVAILABLE', message: err.message } });
    }
    if (err instanceof StoreError || (err instanceof VmlbError && err.retryable)) {
      log.warn('shared store trouble', { url: req.url, error: err.message });
      return reply.status(503).send({ error: { code: 'STORE_UNAVAILABLE', message: err.message } });
    }
    if (typeof err.statusCode === 'number' && err.statusCode >= 400 && err.statusCode < 500) {
      return reply.status(err.statusCode).send({ error: { code: err.code ?? 'BAD_REQUEST', message: err.message } });
    }
    log.error('request failed', { method: req.method, url: req.url, error: err.stack ?? err.message });
    return reply.status(500).send({ error: { code: 'INTERNAL', message: err.message } });
  });

  app.setNotFoundHandler((req, reply) => reply.status(404).send({ error: { code: 'NOT_FOUND', message: `no route ${req.method} ${req.url.split('?')[0]}` } }));
  return app;
}
