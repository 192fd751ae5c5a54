/**
 * The scheduler's side of the fleet tests: teams with known tokens, an in-process scheduler on
 * a free loopback port over the suite's Redis and S3, a small HTTP client for its API, and a
 * .tar.gz builder for hand-made (hostile) uploads.
 */
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { createGzip } from 'node:zlib';
import * as tar from 'tar-stream';
import { fleetConfigFrom, type FleetConfig } from '../../libs/fleet/src/index.js';
import { SharedStore, s3ConfigFrom } from '../../libs/layer-engine/src/index.js';
import { withTestDatabase } from './postgres.js';
import { createScheduler, sha256Hex, Teams, type Logger, type Scheduler, type SchedulerOptions } from '../../apps/scheduler/src/index.js';

export const TOKENS = { web: 'tok-web-0123456789', data: 'tok-data-0123456789', ops: 'tok-ops-0123456789' } as const;

export function teamsJson(): string {
  return JSON.stringify([
    { team: 'web', tokenSha256: sha256Hex(TOKENS.web) },
    { team: 'data', tokenSha256: sha256Hex(TOKENS.data) },
    { team: 'ops', tokenSha256: sha256Hex(TOKENS.ops), admin: true },
  ]);
}

export async function writeTeamsFile(dir: string): Promise<string> {
  const file = path.join(dir, `teams-${randomBytes(3).toString('hex')}.json`);
  await writeFile(file, teamsJson());
  return file;
}

/** The fleet environment for the suite's services, with its own prefix in the bucket. */
export function fleetEnv(redisUrl: string, s3env: Record<string, string>, shared: string, extra: Record<string, string> = {}): Record<string, string> {
  return { ...s3env, REDIS_URL: redisUrl, VMLB_SHARED: shared, ...extra };
}

export async function ensureBucket(env: Record<string, string>): Promise<void> {
  const s = new SharedStore(s3ConfigFrom(env.VMLB_SHARED, env));
  try {
    await s.ensureBucket();
  } finally {
    s.close();
  }
}

/** A logger that keeps the lines, for a failing test to show. */
export function memoryLogger(): Logger & { lines: string[] } {
  const lines: string[] = [];
  const put = (level: string) => (msg: string, f?: Record<string, unknown>) => void lines.push(`${level} ${msg} ${f ? JSON.stringify(f) : ''}`);
  return { lines, info: put('info'), warn: put('warn'), error: put('error') };
}

export interface RunningScheduler {
  url: string;
  scheduler: Scheduler;
  config: FleetConfig;
  log: ReturnType<typeof memoryLogger>;
  close(): Promise<void>;
}

export async function startScheduler(env: Record<string, string>, opts: Partial<SchedulerOptions> = {}): Promise<RunningScheduler> {
  const config = { ...fleetConfigFrom(await withTestDatabase(env)), schedulerHost: '127.0.0.1', schedulerPort: 0 };
  const log = memoryLogger();
  const scheduler = await createScheduler({ config, teams: Teams.parse(teamsJson(), 'test teams'), log, follower: { blockMs: 200, checkEveryMs: 500 }, ...opts });
  const url = await scheduler.listen();
  return { url, scheduler, config, log, close: () => scheduler.close() };
}

export interface Api {
  (method: string, route: string, o?: { token?: string | null; body?: Buffer; headers?: Record<string, string> }): Promise<Response>;
  json<T = any>(method: string, route: string, o?: { token?: string | null; body?: Buffer; headers?: Record<string, string> }): Promise<{ status: number; body: T }>;
}

export function apiFor(base: () => string, defaultToken: string): Api {
  const call = (async (method, route, o = {}) => {
    const token = o.token === undefined ? defaultToken : o.token;
    return fetch(`${base()}${route}`, {
      method,
      headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(o.body ? { 'content-type': 'application/gzip' } : {}), ...o.headers },
      body: o.body,
      redirect: 'manual',
    });
  }) as Api;
  call.json = async (method, route, o) => {
    const res = await call(method, route, o);
    const text = await res.text();
    return { status: res.status, body: text ? JSON.parse(text) : null };
  };
  return call;
}

export type TarEntry =
  | { name: string; type?: 'file'; content?: string; mode?: number }
  | { name: string; type: 'directory' }
  | { name: string; type: 'symlink' | 'link'; linkname: string }
  | { name: string; type: 'character-device' | 'block-device' | 'fifo' };

/** A .tar.gz of exactly these entries (names as given: nothing is cleaned). */
export async function tarGz(entries: TarEntry[]): Promise<Buffer> {
  const pack = tar.pack();
  const gz = createGzip();
  const chunks: Buffer[] = [];
  gz.on('data', (c: Buffer) => chunks.push(c));
  const ended = new Promise<void>((resolve, reject) => {
    gz.on('end', resolve);
    gz.on('error', reject);
  });
  pack.pipe(gz);
  for (const e of entries) {
    await new Promise<void>((resolve, reject) => {
      const cb = (err?: Error | null) => (err ? reject(err) : resolve());
      const type = e.type ?? 'file';
      if (type === 'file') {
        const f = e as { content?: string; mode?: number };
        pack.entry({ name: e.name, type: 'file', mode: f.mode ?? 0o755 }, f.content ?? '', cb);
      } else if (type === 'symlink' || type === 'link') {
        pack.entry({ name: e.name, type, linkname: (e as { linkname: string }).linkname }, cb);
      } else if (type === 'directory') {
        pack.entry({ name: e.name, type: 'directory', mode: 0o755 }, cb);
      } else {
        pack.entry({ name: e.name, type, devmajor: 1, devminor: 3, mode: 0o666 }, cb);
      }
    });
  }
  pack.finalize();
  await ended;
  return Buffer.concat(chunks);
}

/** A minimal valid project: one create-disk layer (never built by these tests). */
export const MINIMAL_LAYER: TarEntry = { name: '01_base/create-disk', content: '#!/bin/sh\n# disk-size 64M\necho base\n' };

export async function waitFor<T>(what: string, fn: () => Promise<T | undefined | null | false>, timeoutMs = 20_000, everyMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** Reads an SSE response to its end: the data events (BuildEvents) and the final record. */
export async function readEvents(res: Response): Promise<{ events: Array<{ type: string } & Record<string, unknown>>; end: any; ids: string[] }> {
  const text = await res.text();
  const events: Array<{ type: string } & Record<string, unknown>> = [];
  const ids: string[] = [];
  let end: unknown = null;
  for (const block of text.split('\n\n')) {
    const lines = block.split('\n').filter((l) => l && !l.startsWith(':'));
    if (lines.length === 0) continue;
    const event = lines.find((l) => l.startsWith('event: '))?.slice(7) ?? 'message';
    const id = lines.find((l) => l.startsWith('id: '))?.slice(4);
    const data = lines.filter((l) => l.startsWith('data: ')).map((l) => l.slice(6)).join('\n');
    if (id) ids.push(id);
    if (event === 'end') end = JSON.parse(data);
    else events.push(JSON.parse(data));
  }
  return { events, end, ids };
}
