#!/usr/bin/env node
// The health check of the vm-layer-builder image (deploy/Dockerfile's HEALTHCHECK; compose.yaml
// names the part of each service):
//
//   node /opt/vmlb/deploy/healthcheck.mjs [scheduler|worker|dashboard]
//
// Without an argument, the part is the one that runs as the container's pid 1 (or as the child
// of `init: true`'s tini): apps/<part>/dist/main.js on its command line. Each part is asked on
// the port its own environment gives it (the container's, which docker passes to the check):
//
//   scheduler  GET /healthz   on VMLB_SCHEDULER_HOST:VMLB_SCHEDULER_PORT (200: Redis and S3 answer)
//   worker     GET /metrics   on VMLB_WORKER_METRICS_HOST:VMLB_WORKER_METRICS_PORT
//   dashboard  GET /          on VMLB_DASHBOARD_HOST:VMLB_DASHBOARD_PORT (200: the UI is built)
//
// A wildcard listen address (0.0.0.0, ::, unset) is asked on loopback. Exit status 0 when the
// answer is 200, 1 otherwise (nothing listens, another status, no answer within 4 s); one line
// on stdout says which (docker inspect shows it). Node's built-ins only: the image has no curl.
import { readFileSync, realpathSync } from 'node:fs';
import { pathToFileURL } from 'node:url';

export const PARTS = ['scheduler', 'worker', 'dashboard'];
/** Below docker's --timeout (5 s in the Dockerfile and compose.yaml), so the check reports itself. */
export const TIMEOUT_MS = 4000;

/** The part named by a command line (arguments as /proc/PID/cmdline holds them), or null. */
export function partOfCommand(args) {
  for (const a of args) {
    const m = /(?:^|\/)apps\/(scheduler|worker|web-dashboard)\/(?:dist\/main\.js|src\/main\.ts)$/.exec(a);
    if (m) return m[1] === 'web-dashboard' ? 'dashboard' : m[1];
  }
  return null;
}

function loopbackFor(host) {
  if (!host || host === '0.0.0.0') return '127.0.0.1';
  if (host === '::' || host === '[::]') return '::1';
  return host;
}

/**
 * The URL to ask for a part, from its environment (the defaults are those of
 * libs/fleet/src/config.ts, apps/web-dashboard/src/config.ts and apps/worker/src/worker-settings.ts).
 * Throws when the part serves nothing to ask (a worker without a metrics port).
 */
export function targetOf(part, env) {
  let host;
  let port;
  let route;
  if (part === 'scheduler') {
    host = env.VMLB_SCHEDULER_HOST || '127.0.0.1';
    port = env.VMLB_SCHEDULER_PORT || '8080';
    route = '/healthz';
  } else if (part === 'dashboard') {
    host = env.VMLB_DASHBOARD_HOST || '0.0.0.0';
    port = env.VMLB_DASHBOARD_PORT || '8081';
    route = '/';
  } else if (part === 'worker') {
    host = env.VMLB_WORKER_METRICS_HOST || '0.0.0.0';
    port = env.VMLB_WORKER_METRICS_PORT || '0';
    route = '/metrics';
    if (port === '0') throw new Error('VMLB_WORKER_METRICS_PORT is not set: the worker serves nothing to check (set it, as compose.yaml does)');
  } else {
    throw new Error(`unknown part "${part}" (expected ${PARTS.join(', ')})`);
  }
  const h = loopbackFor(host);
  return `http://${h.includes(':') ? `[${h}]` : h}:${port}${route}`;
}

/** The part of this container: the command line of pid 1, and of its first child (tini's). */
export function detectPart(proc = '/proc') {
  const cmdline = (pid) => readFileSync(`${proc}/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
  const found = partOfCommand(cmdline(1));
  if (found) return found;
  let children = [];
  try {
    children = readFileSync(`${proc}/1/task/1/children`, 'utf8').trim().split(/\s+/).filter(Boolean);
  } catch {
    // No children file (kernel without CONFIG_PROC_CHILDREN): pid 1's command line only.
  }
  for (const c of children) {
    try {
      const p = partOfCommand(cmdline(c));
      if (p) return p;
    } catch {
      // The child ended meanwhile.
    }
  }
  throw new Error(`pid 1 (${cmdline(1).join(' ').slice(0, 120)}) is no vm-layer-builder part: name one (${PARTS.join(', ')})`);
}

/** Asks the part once: { ok, line }. */
export async function check(part, env) {
  const url = targetOf(part, env);
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(TIMEOUT_MS), redirect: 'manual' });
    const body = (await res.text()).replace(/\s+/g, ' ').trim().slice(0, 200);
    if (res.status === 200) return { ok: true, line: `healthy: ${part} ${url} answered 200` };
    return { ok: false, line: `unhealthy: ${part} ${url} answered ${res.status}${body ? `: ${body}` : ''}` };
  } catch (e) {
    const err = /** @type {Error & { cause?: { code?: string, message?: string } }} */ (e);
    const why = err.name === 'TimeoutError' ? `no answer within ${TIMEOUT_MS / 1000} s` : (err.cause?.code ?? err.cause?.message ?? err.message);
    return { ok: false, line: `unhealthy: ${part} ${url}: ${why}` };
  }
}

async function main() {
  let part;
  let result;
  try {
    part = process.argv[2] ?? detectPart();
    result = await check(part, process.env);
  } catch (e) {
    result = { ok: false, line: `unhealthy: ${/** @type {Error} */ (e).message}` };
  }
  process.stdout.write(`${result.line}\n`);
  process.exit(result.ok ? 0 : 1);
}

// Run as a program (not imported by test/deploy.test.ts).
if (process.argv[1] && import.meta.url === pathToFileURL(realpathSync(process.argv[1])).href) await main();
