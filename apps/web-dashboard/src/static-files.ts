import fastifyStatic from '@fastify/static';
import type { FastifyInstance, FastifyReply } from 'fastify';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Where `node bundle.mjs` writes the browser app. The same path from src/ (tsx, vitest) and
 * from dist/ (the compiled package): both sit one folder under the package.
 */
export const PUBLIC_DIR = fileURLToPath(new URL('../dist/public/', import.meta.url));

export interface DashboardOptions {
  /** The bundled app's folder. @default PUBLIC_DIR */
  root?: string;
}

/** Content-hashed by the bundler: a file there never changes under its name. */
const IMMUTABLE = /\/assets\/[^/]+-[A-Z0-9]{8,}\.(js|css)(\.map)?$/i;

/**
 * The page may load scripts, styles and fonts only from this origin and talk only to it: a
 * team token sits in localStorage, so no third-party code may ever run beside it. uPlot sets
 * inline style attributes, hence 'unsafe-inline' for styles (never for scripts).
 */
const CSP = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self' 'unsafe-inline'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "frame-ancestors 'none'",
  "base-uri 'none'",
  "form-action 'self'",
].join('; ');

function securityHeaders(reply: FastifyReply): void {
  reply.header('content-security-policy', CSP);
  reply.header('x-content-type-options', 'nosniff');
  reply.header('referrer-policy', 'no-referrer');
  reply.header('x-frame-options', 'DENY');
}

/**
 * Serves the dashboard (the bundled browser app) at `/`: index.html at `/` with no-cache, the
 * content-hashed assets under `/assets/` cached for a year. Routes are made for the files that
 * exist now (no wildcard), so `/v1/…`, `/healthz` and `/metrics` stay the host app's, and an
 * unknown path goes to its not-found handler.
 *
 * Without a bundle (`npm run build` not run) `/` answers 503 saying so, instead of a 404 that
 * looks like a wrong URL.
 */
export async function registerDashboard(app: FastifyInstance, opts: DashboardOptions = {}): Promise<void> {
  const root = opts.root ?? PUBLIC_DIR;
  const index = path.join(root, 'index.html');
  if (!existsSync(index)) {
    app.get('/', async (_req, reply) =>
      reply.status(503).type('text/plain; charset=utf-8').send(`the dashboard is not built: run npm run build (${index} is missing)\n`),
    );
    return;
  }
  await app.register(fastifyStatic, {
    root,
    prefix: '/',
    wildcard: false,
    index: ['index.html'],
    // The bundle holds no folders to list and no dot-files; a stray request for one is a 404.
    list: false,
    dotfiles: 'ignore',
    // setHeaders decides; send's own Cache-Control would be overwritten anyway.
    cacheControl: false,
    setHeaders: (reply, filePath) => {
      const file = filePath.replaceAll('\\', '/');
      reply.header('cache-control', IMMUTABLE.test(file) ? 'public, max-age=31536000, immutable' : 'no-cache');
      if (file.endsWith('.html')) securityHeaders(reply);
    },
  });
}
