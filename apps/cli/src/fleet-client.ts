import { InvalidArgumentError } from 'commander';
import type { BuildRecord } from '@vmlb/fleet';
import { VmlbError } from '@vmlb/layer-engine';
import type { Fetcher } from './chain-pull.js';
import type { Endpoint } from './fleet-endpoint.js';

/**
 * The scheduler's HTTP API as the fleet commands call it (docs/fleet.md), its answers typed by
 * @vmlb/fleet. A refusal becomes a VmlbError that says what to do; its code's exit status is
 * the engine's USAGE_CODES / OUTAGE_CODES (error-codes.ts), read by main.ts.
 */

/** How the API answers a refusal (apps/scheduler/src/http-error.ts). */
interface ApiError {
  error?: { code?: string; message?: string; entry?: string };
}

export async function request(ep: Endpoint, method: string, route: string, init: { body?: Buffer; headers?: Record<string, string>; signal?: AbortSignal } = {}): Promise<Response> {
  try {
    return await fetch(`${ep.server}${route}`, {
      method,
      headers: { authorization: `Bearer ${ep.token}`, ...init.headers },
      body: init.body,
      redirect: 'follow',
      signal: init.signal,
    });
  } catch (e) {
    if (init.signal?.aborted) throw e;
    const cause = (e as { cause?: { code?: string; message?: string } }).cause;
    throw new VmlbError('FLEET_UNREACHABLE', `cannot reach the scheduler at ${ep.server}: ${cause?.code ?? cause?.message ?? (e as Error).message}`, { retryable: true });
  }
}

/** Turns a refusal into a VmlbError that says what to do; passes a 2xx through. */
export async function check(res: Response, what: string): Promise<Response> {
  if (res.ok) return res;
  let body: ApiError = {};
  const text = await res.text().catch(() => '');
  try {
    body = JSON.parse(text) as ApiError;
  } catch {
    /* not JSON: use the status */
  }
  const message = body.error?.message ?? (text.trim() || res.statusText);
  switch (res.status) {
    case 401:
      throw new VmlbError('FLEET_AUTH', `${what}: the scheduler refused the token (401): check VMLB_TOKEN or --token`);
    case 403:
      throw new VmlbError('FLEET_AUTH', `${what}: ${message}`);
    case 404:
      throw new VmlbError('NO_SUCH_BUILD', `${what}: ${message}`);
    case 400:
    case 413:
    case 415:
      throw new VmlbError('FLEET_REFUSED', `${what}: the scheduler refused it: ${message}`);
    case 503:
      // The scheduler is up but cannot reach Redis or the shared store: an outage, not a bad build.
      throw new VmlbError('FLEET_UNAVAILABLE', `${what}: the scheduler answered 503: ${message}`, { retryable: true });
    default:
      throw new VmlbError('FLEET_ERROR', `${what}: the scheduler answered ${res.status}: ${message}`, { retryable: res.status >= 500 });
  }
}


/** Authenticated GETs of the scheduler's routes, for chain-pull.ts. */
export function fetcherFor(ep: Endpoint): Fetcher {
  return (route, init = {}) => request(ep, 'GET', route, init);
}

/** A build's record as the API shows it. */
export async function getRecord(ep: Endpoint, id: string, doing: string): Promise<BuildRecord> {
  return (await (await check(await request(ep, 'GET', `/v1/builds/${encodeURIComponent(id)}`), doing)).json()) as BuildRecord;
}

/** A BUILD argument: one that is no build id is a usage error (exit 2) before the scheduler is asked. */
export function buildIdArg(v: string): string {
  if (!/^b[0-9a-z]{8,40}$/.test(v)) throw new InvalidArgumentError(`"${v}" is not a build id (they look like b0mhx3k2p7a1b2c3d4e5; \`vmlb builds\` lists yours)`);
  return v;
}
