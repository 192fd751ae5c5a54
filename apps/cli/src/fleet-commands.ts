import { Command, InvalidArgumentError, Option } from 'commander';
import { createWriteStream } from 'node:fs';
import { lstat, mkdir, readdir, readFile, readlink, rename, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import * as tar from 'tar-stream';
import { LocalStore, OUTPUT_DIR, VmlbError, defaultStoreDir, formatBytes, loadProject, type BuildEvent } from '@vmlb/layer-engine';
import { chooseMode, createDisplay } from './display.js';
import { pullChain, writeChainImage, type Fetcher } from './chain-pull.js';

/**
 * The fleet commands of `vmlb`: `submit` (send a project to the scheduler and show its build
 * with the same display as a local build), `builds` (list yours), `pull` (download an image)
 * and `cancel`. The scheduler and the token come from --server/--token, else VMLB_SERVER /
 * VMLB_TOKEN, else ~/.config/vmlb/config.json ({ "server": "…", "token": "…" }).
 *
 * Errors are VmlbErrors; the codes in FLEET_USAGE_CODES are usage or authentication problems
 * (exit 2), the rest failures (exit 1).
 */

export const FLEET_USAGE_CODES = ['FLEET_USAGE', 'FLEET_AUTH', 'FLEET_REFUSED', 'NO_SUCH_BUILD'];
/** Codes for "cannot reach the scheduler or what it needs" (exit 3): an outage, not a failed build. */
export const FLEET_OUTAGE_CODES = ['FLEET_UNREACHABLE', 'FLEET_UNAVAILABLE'];

export interface Endpoint {
  server: string;
  token: string;
}

export interface ConnOpts {
  server?: string;
  token?: string;
}

// ---------------------------------------------------------------------------------------------
// Where the scheduler is, and the token

export function configFile(env: NodeJS.ProcessEnv = process.env): string {
  const base = env.XDG_CONFIG_HOME || path.join(os.homedir(), '.config');
  return path.join(base, 'vmlb', 'config.json');
}

export async function endpointFrom(o: ConnOpts): Promise<Endpoint> {
  let file: { server?: unknown; token?: unknown } = {};
  const where = configFile();
  if (!o.server || !o.token) {
    try {
      file = JSON.parse(await readFile(where, 'utf8')) as typeof file;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw new VmlbError('FLEET_USAGE', `cannot read ${where}: ${(e as Error).message}`);
    }
  }
  // An empty variable counts as unset, so the config file still applies.
  const server = o.server || (typeof file.server === 'string' ? file.server : undefined);
  const token = o.token || (typeof file.token === 'string' ? file.token : undefined);
  const missing = [!server && '--server (or VMLB_SERVER)', !token && '--token (or VMLB_TOKEN)'].filter(Boolean);
  if (missing.length > 0) {
    throw new VmlbError('FLEET_USAGE', `which scheduler? give ${missing.join(' and ')}, or put { "server": "…", "token": "…" } in ${where} (\`npm run fleet\` prints both for a local fleet)`);
  }
  let url: URL;
  try {
    url = new URL(server!);
  } catch {
    throw new VmlbError('FLEET_USAGE', `--server ${server}: not a URL (e.g. http://127.0.0.1:8080)`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new VmlbError('FLEET_USAGE', `--server ${server}: must be an http:// or https:// URL`);
  return { server: url.href.replace(/\/+$/, ''), token: token! };
}

const storeOption = () => new Option('--store <dir>', 'the local store (layers cache)').env('VMLB_STORE').default(undefined, '~/.cache/vmlb');

function storeFrom(o: { store?: string }): LocalStore {
  return new LocalStore(o.store ? path.resolve(o.store) : defaultStoreDir());
}

/** Authenticated GETs of the scheduler's routes, for chain-pull.ts. */
function fetcherFor(ep: Endpoint): Fetcher {
  return (route, init = {}) => request(ep, 'GET', route, init);
}

// ---------------------------------------------------------------------------------------------
// HTTP

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

// ---------------------------------------------------------------------------------------------
// Packing a project

/**
 * The project as a .tar.gz, in memory. Left out at the top: `build/` (outputs) and dot-entries
 * (.git and the like), which the engine ignores there too. Inside layer folders everything
 * goes, dot-files included: they are part of each layer's key, and the scheduler must compute
 * the keys a local build would. Entries are sorted and carry no times, owners or host
 * details, so the same project packs to the same bytes (and the scheduler stores it once).
 */
export async function packProject(dir: string): Promise<Buffer> {
  const root = path.resolve(dir);
  const pack = tar.pack();
  const gzip = createGzip({ level: 6 });
  const chunks: Buffer[] = [];
  gzip.on('data', (c: Buffer) => chunks.push(c));
  const finished = new Promise<void>((resolve, reject) => {
    gzip.on('end', resolve);
    gzip.on('error', reject);
    pack.on('error', reject);
  });
  pack.pipe(gzip);

  const mtime = new Date(0);
  const add = (header: tar.Header | Parameters<typeof pack.entry>[0], content?: Buffer) =>
    new Promise<void>((resolve, reject) => {
      const cb = (err?: Error | null) => (err ? reject(err) : resolve());
      if (content) pack.entry(header, content, cb);
      else pack.entry(header, cb);
    });

  const walk = async (rel: string): Promise<void> => {
    const names = (await readdir(path.join(root, rel))).sort();
    for (const name of names) {
      if (rel === '' && (name.startsWith('.') || name === OUTPUT_DIR)) continue;
      const relPath = rel ? `${rel}/${name}` : name;
      const abs = path.join(root, relPath);
      const st = await lstat(abs);
      const common = { name: relPath, mtime, uid: 0, gid: 0, uname: '', gname: '' };
      if (st.isDirectory()) {
        await add({ ...common, type: 'directory', mode: 0o755 });
        await walk(relPath);
      } else if (st.isSymbolicLink()) {
        await add({ ...common, type: 'symlink', linkname: await readlink(abs), mode: 0o777 });
      } else if (st.isFile()) {
        const content = await readFile(abs);
        await add({ ...common, type: 'file', size: content.length, mode: st.mode & 0o100 ? 0o755 : 0o644 }, content);
      } else {
        throw new VmlbError('FLEET_USAGE', `${relPath}: not a file, folder or symlink (a device, FIFO or socket cannot be sent)`);
      }
    }
  };
  try {
    await walk('');
    pack.finalize();
  } catch (e) {
    pack.destroy(e as Error);
    throw e;
  }
  await finished;
  return Buffer.concat(chunks);
}

// ---------------------------------------------------------------------------------------------
// Server-sent events

interface SseMessage {
  event: string;
  data: string;
  id?: string;
}

async function* readSse(body: ReadableStream<Uint8Array>): AsyncGenerator<SseMessage> {
  const decoder = new TextDecoder();
  let buf = '';
  let event = 'message';
  let data: string[] = [];
  let id: string | undefined;
  for await (const chunk of body as unknown as AsyncIterable<Uint8Array>) {
    buf += decoder.decode(chunk, { stream: true });
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl).replace(/\r$/, '');
      buf = buf.slice(nl + 1);
      if (line === '') {
        if (data.length > 0) yield { event, data: data.join('\n'), ...(id !== undefined ? { id } : {}) };
        event = 'message';
        data = [];
        id = undefined;
      } else if (!line.startsWith(':')) {
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
        if (field === 'data') data.push(value);
        else if (field === 'event') event = value;
        else if (field === 'id') id = value;
      }
    }
  }
}

export interface BuildRecordLite {
  id: string;
  team: string;
  state: string;
  error?: string;
  /** What the scheduler adds when it answers, e.g. that no worker of the build's pool is live. */
  warning?: string;
  createdAt: string;
  finishedAt?: string;
  image: { key: string; path: string; bytes: number } | null;
  layers: Array<{ index: number; name: string; key: string; status: string }>;
  projectName?: string;
  gitBranch?: string;
  gitCommit?: string;
  gitDirty?: boolean;
  submitter?: string;
}

/** How long a follower keeps trying to reach a scheduler that went away, before it gives up (exit 3). */
export const RECONNECT_FOR_MS = 30 * 60_000;
/** The longest wait between two tries. */
const RECONNECT_MAX_DELAY_MS = 10_000;

/**
 * Follows a build's events until its final record, feeding each BuildEvent to `onEvent`. When
 * the scheduler goes away (restarted, unreachable, answering 5xx) it says so once, tries again
 * with a growing delay (up to 10 s) for as long as RECONNECT_FOR_MS, and resumes after the
 * last event seen (Last-Event-ID); the build goes on in the fleet meanwhile. A build that is
 * gone (404) or a refused token ends it at once.
 */
export async function followBuild(ep: Endpoint, id: string, onEvent: (e: BuildEvent) => void, signal: AbortSignal, reconnectForMs = RECONNECT_FOR_MS): Promise<BuildRecordLite> {
  let lastId: string | undefined;
  let failures = 0;
  let downSince: number | undefined;
  for (;;) {
    let lastError: unknown;
    try {
      const res = await check(
        await request(ep, 'GET', `/v1/builds/${encodeURIComponent(id)}/events`, {
          headers: { accept: 'text/event-stream', ...(lastId ? { 'last-event-id': lastId } : {}) },
          signal,
        }),
        `following build ${id}`,
      );
      if (!res.body) throw new VmlbError('FLEET_ERROR', `following build ${id}: the scheduler sent no event stream`);
      // Reached once the stream is open, not at its first event: a resumed stream (Last-Event-ID)
      // sends nothing until the build moves on, which can be minutes.
      if (downSince !== undefined) {
        onEvent({ type: 'notice', at: Date.now(), message: `reached the scheduler again after ${Math.round((Date.now() - downSince) / 1000)} s; following build ${id} from where it was` });
        downSince = undefined;
      }
      for await (const m of readSse(res.body)) {
        failures = 0;
        if (m.id) lastId = m.id;
        if (m.event === 'end') return JSON.parse(m.data) as BuildRecordLite;
        if (m.event === 'message') onEvent(JSON.parse(m.data) as BuildEvent);
      }
    } catch (e) {
      if (signal.aborted || (e instanceof VmlbError && !e.retryable)) throw e;
      lastError = e;
    }
    failures++;
    if (downSince === undefined) {
      downSince = Date.now();
      const why = lastError instanceof Error ? lastError.message : 'the event stream ended before the build did';
      onEvent({ type: 'notice', at: Date.now(), message: `lost the scheduler (${why}); reconnecting — build ${id} goes on in the fleet meanwhile` });
    }
    if (Date.now() - downSince > reconnectForMs) {
      throw new VmlbError('FLEET_UNREACHABLE', `following build ${id}: the scheduler at ${ep.server} did not answer for ${Math.round(reconnectForMs / 60_000)} min; the build may still go on (vmlb builds)`, { retryable: true });
    }
    await new Promise((r) => setTimeout(r, Math.min(500 * 2 ** (failures - 1), RECONNECT_MAX_DELAY_MS)));
  }
}

// ---------------------------------------------------------------------------------------------
// Commands

export const serverOption = () => new Option('--server <url>', 'the scheduler, e.g. http://127.0.0.1:8080').env('VMLB_SERVER');
export const tokenOption = () => new Option('--token <token>', 'your team\'s token (prefer the variable: a flag shows in ps)').env('VMLB_TOKEN');

export function buildIdArg(v: string): string {
  if (!/^b[0-9a-z]{8,40}$/.test(v)) throw new InvalidArgumentError(`"${v}" is not a build id (they look like b0mhx3k2p7a1b2c3d4e5; \`vmlb builds\` lists yours)`);
  return v;
}

/** Ctrl-C while following: the build goes on in the fleet; say how to get back to it. */
function detachOnInterrupt(ac: AbortController, id: () => string | undefined): () => void {
  const onSignal = () => {
    const b = id();
    process.stderr.write(
      b ? `\nvmlb: stopped following; build ${b} goes on in the fleet (vmlb builds; vmlb pull ${b} -o FILE; vmlb cancel ${b})\n` : '\nvmlb: interrupted\n',
    );
    ac.abort();
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  return () => {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  };
}

/**
 * Runs `follow` with SIGINT and SIGTERM aborting its signal (detachOnInterrupt: the build goes
 * on in the fleet): then the exit status is 130 and the result undefined. `cleanup` runs in any
 * case, before the signal handlers go.
 */
export async function untilInterrupted<T>(buildId: () => string | undefined, follow: (signal: AbortSignal) => Promise<T>, cleanup: () => void = () => undefined): Promise<T | undefined> {
  const ac = new AbortController();
  const undo = detachOnInterrupt(ac, buildId);
  try {
    return await follow(ac.signal);
  } catch (e) {
    if (ac.signal.aborted) {
      process.exitCode = 130;
      return undefined;
    }
    throw e;
  } finally {
    cleanup();
    undo();
  }
}

/** A build's final states: it changes no more. */
export const FINAL_STATES: readonly string[] = ['done', 'failed', 'cancelled'];

/** The error (exit 1) of a followed build that ended other than done. */
export function failedBuild(r: BuildRecordLite): VmlbError {
  return new VmlbError('BUILD_FAILED', `build ${r.id} ${r.state}${r.error ? `: ${r.error.split('\n')[0]}` : ''}`);
}

interface ListedBuild {
  id: string;
  team: string;
  pool?: string;
  state: string;
  createdAt: string;
  finishedAt?: string;
  layers: number;
  hits: number;
  built: number;
  /** Cache lookups (docs/metrics.md): hits + built + failed for good. */
  lookups?: number;
  error?: string;
  projectName?: string;
  gitBranch?: string;
  gitCommit?: string;
  gitDirty?: boolean;
  submitter?: string;
}

/** `name@branch commit`, `-dirty` after the commit when the work tree had changes; `-` for none. */
export function projectLabel(b: Pick<ListedBuild, 'projectName' | 'gitBranch' | 'gitCommit' | 'gitDirty'>): string {
  const name = b.projectName ?? '';
  const at = b.gitBranch ? `@${b.gitBranch}` : '';
  const commit = b.gitCommit ? ` ${b.gitCommit.slice(0, 8)}${b.gitDirty ? '-dirty' : ''}` : b.gitDirty ? ' dirty' : '';
  return `${name}${at}${commit}`.trim() || '-';
}

/**
 * What the fleet's history records of a submission (apps/scheduler/src/submission-meta.ts): the
 * project's name (--name, else its folder's), the git commit and branch of its folder when it is
 * in a git work tree (none when git is missing or it is not) and whether the folder had changes
 * git has not committed (`git status --porcelain -- .`: modified, staged or untracked files under
 * it, ignored ones aside), and who submitted it (VMLB_SUBMITTER, else user@host; the scheduler
 * records the token's name instead when the teams file names the token). Percent-encoded, so
 * any UTF-8 goes through a header.
 */
async function submissionHeaders(projectDir: string, name: string | undefined): Promise<Record<string, string>> {
  const git = async (...args: string[]): Promise<string | undefined> => {
    const { execFile } = await import('node:child_process');
    return new Promise((resolve) => {
      execFile('git', ['-C', projectDir, ...args], { timeout: 5000 }, (err, stdout) => resolve(err ? undefined : stdout.trim() || undefined));
    });
  };
  const [commit, branch] = [await git('rev-parse', '--verify', '-q', 'HEAD'), await git('symbolic-ref', '--short', '-q', 'HEAD')];
  // Clean is an empty answer, which git() reads as none: ask whether it answered at all.
  const status = commit ? await git('status', '--porcelain', '--untracked-files=normal', '--', '.').then((out) => out ?? '') : undefined;
  let who = process.env.VMLB_SUBMITTER;
  if (!who) {
    try {
      who = `${os.userInfo().username}@${os.hostname()}`;
    } catch {
      who = os.hostname();
    }
  }
  const out: Record<string, string> = {};
  const put = (h: string, v: string | undefined) => {
    if (v) out[h] = encodeURIComponent(v.slice(0, 200));
  };
  put('x-vmlb-project-name', name ?? path.basename(projectDir));
  put('x-vmlb-git-commit', commit && /^[0-9a-f]{4,64}$/.test(commit) ? commit : undefined);
  put('x-vmlb-git-branch', branch);
  if (status !== undefined) out['x-vmlb-git-dirty'] = status === '' ? '0' : '1';
  put('x-vmlb-submitter', who);
  return out;
}

function ago(iso: string): string {
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 90) return `${Math.round(s)}s ago`;
  if (s < 5400) return `${Math.round(s / 60)}m ago`;
  if (s < 48 * 3600) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86400)}d ago`;
}

function duration(b: { createdAt: string; finishedAt?: string }): string {
  const end = b.finishedAt ? Date.parse(b.finishedAt) : Date.now();
  const s = Math.max(0, Math.round((end - Date.parse(b.createdAt)) / 1000));
  return s < 60 ? `${s}s` : `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
}

export function registerFleetCommands(program: Command): void {
  program
    .command('submit')
    .description('send the image project in DIR to the fleet\'s scheduler and follow its build (the same display as vmlb build)')
    .argument('[dir]', 'the image project', '.')
    .addOption(serverOption())
    .addOption(tokenOption())
    .option('--detach', 'print the build id and return at once; do not follow the build')
    .option('--flatten', 'have the fleet make one flattened image of the build too (for the dashboard and API download)')
    .option('--name <name>', "the project's name in the fleet's history (default: the folder's name)")
    .option('--no-pull', "do not fetch the build's layers into the local store as they are pushed")
    .addOption(storeOption())
    .option('--json', 'print build events as JSON lines (for machines)')
    .option('--plain', 'plain line output, no live redraw (the default when stdout is not a terminal)')
    .action(async (dir: string, o: ConnOpts & { detach?: boolean; json?: boolean; plain?: boolean; flatten?: boolean; pull?: boolean; store?: string; name?: string }) => {
      const ep = await endpointFrom(o);
      const projectDir = path.resolve(dir);
      // The scheduler checks it again; checking here first answers a broken project at once.
      await loadProject(projectDir);
      const body = await packProject(projectDir);
      const res = await check(
        await request(ep, 'POST', `/v1/builds${o.flatten ? '?flatten=1' : ''}`, { body, headers: { 'content-type': 'application/gzip', ...(await submissionHeaders(projectDir, o.name)) } }),
        `submitting ${path.relative(process.cwd(), projectDir) || '.'}`,
      );
      const submitted = (await res.json()) as BuildRecordLite;
      // E.g. no worker of the build's pool is live: one line on stderr (stdout stays the display, or the id).
      if (submitted.warning) process.stderr.write(`vmlb: warning: ${submitted.warning}\n`);
      if (o.detach) {
        process.stdout.write(o.json ? `${JSON.stringify(submitted)}\n` : `${submitted.id}\n`);
        return;
      }
      const display = createDisplay(chooseMode({ json: o.json, plain: o.plain }, process.stdout), process.stdout);
      // Each layer is fetched into the local store as soon as the fleet has it (one at a time,
      // in order), so the chain is local when the build ends and `vmlb pull` only writes the file.
      const store = o.pull === false ? null : storeFrom(o);
      const final = await untilInterrupted(
        () => submitted.id,
        async (signal) => {
          let pulling: Promise<unknown> = Promise.resolve();
          let pullProblem: string | undefined;
          const pullUpTo = (index: number) => {
            if (!store || pullProblem) return;
            pulling = pulling.then(() =>
              pullChain(fetcherFor(ep), submitted.id, store, { upTo: index, signal }).catch((e: Error) => {
                if (!signal.aborted) pullProblem = e.message;
              }),
            );
          };
          display.onEvent({ type: 'notice', at: Date.now(), message: `submitted to ${ep.server} as build ${submitted.id} (${formatBytes(body.length)} uploaded); on the dashboard: ${ep.server.replace(/\/+$/, '')}/#/builds/${submitted.id}` });
          const ended = await followBuild(ep, submitted.id, (e) => {
            display.onEvent(e);
            if (e.type === 'layer-done' || e.type === 'layer-cached') pullUpTo(e.index);
          }, signal);
          if (store && ended.state === 'done') {
            pullUpTo(ended.layers.length - 1);
            await pulling;
            if (pullProblem) display.onEvent({ type: 'notice', at: Date.now(), message: `could not fetch the build's layers into ${store.root} (vmlb pull ${submitted.id} tries again): ${pullProblem}` });
            else display.onEvent({ type: 'notice', at: Date.now(), message: `its layers are in ${store.root}: vmlb pull ${submitted.id} -o FILE writes the image at once` });
          }
          return ended;
        },
        () => display.close(),
      );
      if (final && final.state !== 'done') throw failedBuild(final);
    });

  program
    .command('builds')
    .description('list your team\'s builds in the fleet, newest first')
    .addOption(serverOption())
    .addOption(tokenOption())
    .addOption(new Option('--state <state>', 'only builds in this state').choices(['active', 'queued', 'building', 'done', 'failed', 'cancelled']))
    .option('--team <team>', 'another team\'s builds (admin tokens only)')
    .option('--pool <pool>', 'only builds of this pool (the pool a build ran in)')
    .option('--search <text>', 'only builds whose project name, git branch, commit or submitter holds this text')
    .option('--project <name>', 'only builds of this project name')
    .option('--branch <branch>', 'only builds of this git branch')
    .option('--commit <sha>', 'only builds of this git commit (or a prefix of it)')
    .option('--submitter <who>', 'only builds this submitter sent (the token\'s name, when the teams file names it)')
    .option('--dirty', 'only builds of a work tree with uncommitted changes')
    .option('--clean', 'only builds of a clean git work tree')
    .option('--since <time>', 'only builds submitted since this ISO time (e.g. 2026-12-01)')
    .option('--limit <n>', 'at most this many', '20')
    .option('--json', 'print the list as JSON')
    .action(async (o: ConnOpts & { state?: string; team?: string; pool?: string; limit: string; json?: boolean; search?: string; project?: string; branch?: string; commit?: string; submitter?: string; since?: string; dirty?: boolean; clean?: boolean }) => {
      if (o.dirty && o.clean) throw new VmlbError('FLEET_USAGE', 'give --dirty or --clean, not both');
      const ep = await endpointFrom(o);
      const q = new URLSearchParams({ limit: o.limit });
      if (o.state) q.set('state', o.state);
      if (o.team) q.set('team', o.team);
      if (o.pool) q.set('pool', o.pool);
      if (o.search) q.set('q', o.search);
      for (const k of ['project', 'branch', 'commit', 'submitter', 'since'] as const) if (o[k]) q.set(k, o[k]!);
      if (o.dirty || o.clean) q.set('dirty', o.dirty ? '1' : '0');
      const res = await check(await request(ep, 'GET', `/v1/builds?${q}`), 'listing builds');
      const listed = (await res.json()) as { builds: Array<ListedBuild> };
      // A summary from before pools names none: it is pool default's.
      const builds = listed.builds.map((b) => ({ ...b, pool: b.pool ?? 'default' }));
      if (o.json) {
        process.stdout.write(JSON.stringify(builds, null, 2) + '\n');
        return;
      }
      if (builds.length === 0) {
        process.stdout.write('no builds\n');
        return;
      }
      const rows = [
        ['BUILD', 'TEAM', 'POOL', 'PROJECT', 'SUBMITTER', 'STATE', 'LAYERS', 'CREATED', 'TOOK'],
        ...builds.map((b) => [b.id, b.team, b.pool, projectLabel(b), b.submitter ?? '-', b.state, `${b.layers} (${b.hits} cached, ${b.built} built)`, ago(b.createdAt), duration(b)]),
      ];
      const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
      for (const r of rows) process.stdout.write(r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ') + '\n');
      // The hit rate of the builds listed, counted as the metrics and the dashboard count it (docs/metrics.md).
      const hits = builds.reduce((n, b) => n + b.hits, 0);
      const lookups = builds.reduce((n, b) => n + (b.lookups ?? b.layers), 0);
      process.stdout.write(`cache: ${hits} hits of ${lookups} lookups${lookups ? ` (${((100 * hits) / lookups).toFixed(1)} %)` : ''} in these ${builds.length} builds\n`);
    });

  program
    .command('pull')
    .description("fetch a finished fleet build's layers the local store lacks and write its image (a thin overlay on the local chain, or --flatten)")
    .argument('<build>', 'the build id (vmlb builds lists them)', buildIdArg)
    .option('-o, --output <file>', 'where to write it (default: BUILD.qcow2)')
    .option('--flatten', 'write one standalone qcow2 instead of a thin overlay on the local chain')
    .option('--server-image', "download the image the fleet flattens (once per chain) instead of fetching the layers")
    .option('--follow', 'a build still running: fetch each layer as soon as it is pushed, and write the image when the build is done')
    .addOption(storeOption())
    .addOption(serverOption())
    .addOption(tokenOption())
    .action(async (id: string, o: ConnOpts & { output?: string; flatten?: boolean; serverImage?: boolean; follow?: boolean; store?: string }) => {
      const ep = await endpointFrom(o);
      const out = path.resolve(o.output ?? `${id}.qcow2`);
      if (!o.serverImage) {
        let record = (await (await check(await request(ep, 'GET', `/v1/builds/${id}`), `pulling build ${id}`)).json()) as BuildRecordLite;
        if (o.follow && !FINAL_STATES.includes(record.state)) {
          // Each layer as soon as the fleet has it, one at a time in order; the rest at the end.
          const store = storeFrom(o);
          const ac = new AbortController();
          let pulling: Promise<unknown> = Promise.resolve();
          const upTo = (index: number) => (pulling = pulling.then(() => pullChain(fetcherFor(ep), id, store, { upTo: index, signal: ac.signal }).catch(() => undefined)));
          record = await followBuild(ep, id, (e) => (e.type === 'layer-done' || e.type === 'layer-cached') && upTo(e.index), ac.signal);
          await pulling;
        }
        if (record.state !== 'done') throw new VmlbError('BUILD_FAILED', `pulling build ${id}: it is ${record.state}${record.error ? `: ${record.error.split('\n')[0]}` : ''}; only a finished build has an image`);
        const store = storeFrom(o);
        const started = performance.now();
        const got = await pullChain(fetcherFor(ep), id, store);
        if (got.keys.length !== record.layers.length) throw new VmlbError('FLEET_ERROR', `pulling build ${id}: the shared store has ${got.keys.length} of its ${record.layers.length} layers (a # noshare layer stays on its worker: use --server-image)`);
        const bytes = await writeChainImage(store, got.keys, out, { flatten: o.flatten });
        const moved = got.pulled.reduce((n, l) => n + l.bytes, 0);
        process.stdout.write(
          `${path.relative(process.cwd(), out) || out}: ${o.flatten ? 'flattened' : 'thin overlay on the local chain'}, ${formatBytes(bytes)}; fetched ${got.pulled.length} of ${got.keys.length} layers (${formatBytes(moved)}) in ${((performance.now() - started) / 1000).toFixed(1)} s\n`,
        );
        return;
      }
      let res = await check(await request(ep, 'GET', `/v1/builds/${id}/image`), `pulling build ${id}`);
      // A chain build's image is flattened when first asked for: wait for it.
      for (let waited = 0; res.status === 202; waited++) {
        if (waited === 0) process.stderr.write(`vmlb: build ${id}'s image is being flattened in the fleet (once); waiting\n`);
        await new Promise((r) => setTimeout(r, 1000));
        res = await check(await request(ep, 'GET', `/v1/builds/${id}/image`), `pulling build ${id}`);
      }
      if (!res.body) throw new VmlbError('FLEET_ERROR', `pulling build ${id}: the scheduler sent no image`);
      await mkdir(path.dirname(out), { recursive: true });
      const tmp = `${out}.part-${process.pid}`;
      try {
        await pipeline(Readable.fromWeb(res.body as import('node:stream/web').ReadableStream), createWriteStream(tmp));
        const expected = Number(res.headers.get('content-length') ?? NaN);
        const got = (await lstat(tmp)).size;
        if (Number.isFinite(expected) && got !== expected) throw new VmlbError('FLEET_ERROR', `pulling build ${id}: got ${got} bytes of ${expected}; try again`);
        await rename(tmp, out);
        process.stdout.write(`${path.relative(process.cwd(), out) || out}: ${formatBytes(got)}\n`);
      } finally {
        await rm(tmp, { force: true });
      }
    });

  program
    .command('cancel')
    .description('cancel a queued or running fleet build')
    .argument('<build>', 'the build id', buildIdArg)
    .addOption(serverOption())
    .addOption(tokenOption())
    .option('--json', 'print the build\'s record as JSON')
    .action(async (id: string, o: ConnOpts & { json?: boolean }) => {
      const ep = await endpointFrom(o);
      const res = await check(await request(ep, 'POST', `/v1/builds/${id}/cancel`), `cancelling build ${id}`);
      const r = (await res.json()) as BuildRecordLite;
      process.stdout.write(o.json ? JSON.stringify(r, null, 2) + '\n' : `build ${id} ${r.state}\n`);
    });
}
