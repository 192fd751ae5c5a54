import { execa, type ResultPromise } from 'execa';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { chmod, chown, mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import pg from 'pg';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { freePort } from '@vmlb/fleet';

/**
 * A private PostgreSQL server for `npm run fleet`, the test harness and the benchmarks: `initdb`
 * in a folder of its own, as a user that is not root (PostgreSQL refuses to run as root; Debian's
 * `postgres` user, else `nobody`), listening on 127.0.0.1 on a free port with a random password
 * (scram-sha-256), run as a child that is waited on and stopped by its pid (SIGINT: a fast
 * shutdown; SIGKILL past 10 s). `setpriv --pdeathsig KILL` makes it die with the process that
 * started it, even a SIGKILLed one; its backends follow the postmaster.
 *
 * The binaries are Debian's `postgresql` package's (/usr/lib/postgresql/<version>/bin, newest).
 */

export interface PrivatePostgres {
  /** postgres://vmlb:PASSWORD@127.0.0.1:PORT/ — add a database name. */
  baseUrl: string;
  /** The URL of database `name`. */
  url(name: string): string;
  port: number;
  dir: string;
  pid: number | undefined;
  /** Creates database `name` unless it exists; returns its URL. */
  ensureDatabase(name: string): Promise<string>;
  /** Stops the server by its pid (the data folder stays; start() runs it again on the same port). */
  stop(): Promise<void>;
  start(): Promise<void>;
  /** Stops it and removes its folder (unless `keep` was given). */
  close(): Promise<void>;
}

export interface PrivatePostgresOptions {
  /** Where its data lives (kept across runs: `npm run fleet` with VMLB_FLEET_DIR). @default a new temporary folder, removed by close() */
  dir?: string;
  port?: number;
  /** No fsync (tests, benchmarks: a crash of the machine may lose the last writes). @default false */
  fast?: boolean;
  /** Lines of its log go here. @default ignored */
  onLine?: (line: string) => void;
}

const USER = 'vmlb';

/** The newest Debian PostgreSQL's bin folder. */
export function postgresBinDir(): string {
  const root = '/usr/lib/postgresql';
  const versions = existsSync(root) ? readdirSync(root).filter((v) => /^\d+$/.test(v)).sort((a, b) => Number(b) - Number(a)) : [];
  for (const v of versions) if (existsSync(path.join(root, v, 'bin', 'postgres'))) return path.join(root, v, 'bin');
  throw new Error('PostgreSQL is not installed (apt-get install postgresql): no /usr/lib/postgresql/<version>/bin/postgres');
}

/** The uid/gid a private server runs as when we are root: Debian's postgres user, else nobody. */
function serverUser(): { uid: number; gid: number; name: string } | null {
  if (process.getuid?.() !== 0) return null;
  for (const name of ['postgres', 'nobody']) {
    try {
      const uid = Number(execFileSync('id', ['-u', name], { encoding: 'utf8' }).trim());
      const gid = Number(execFileSync('id', ['-g', name], { encoding: 'utf8' }).trim());
      return { uid, gid, name };
    } catch {
      /* next */
    }
  }
  throw new Error('no user to run PostgreSQL as (it refuses root): create one, e.g. apt-get install postgresql creates postgres');
}

/** A private server's folder, initialized (initdb) unless it was already, and how to run it. */
export interface PreparedPostgres {
  dir: string;
  password: string;
  /** postgres://vmlb:PASSWORD@127.0.0.1:PORT/ */
  baseUrl: string;
  port: number;
  /** The server, as the user it runs as, with its parent-death signal: `cmd` and `args`. */
  cmd: string;
  args: string[];
}

/**
 * The server's user must reach its folder: a folder above it that others may not enter (a
 * mkdtemp folder is 0700) gets the search bit for others (o+x: enter, not list).
 */
async function letTraverse(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  for (let d = path.dirname(path.resolve(dir)); d !== path.dirname(d); d = path.dirname(d)) {
    const st = await stat(d);
    if (!(st.mode & 0o001)) await chmod(d, (st.mode & 0o7777) | 0o001);
  }
}

/** initdb in `dir` (once: a folder that has a cluster keeps it, and its password). */
export async function preparePostgres(o: { dir: string; port: number; fast?: boolean }): Promise<PreparedPostgres> {
  const bin = postgresBinDir();
  const { dir, port } = o;
  const data = path.join(dir, 'data');
  const user = serverUser();
  const as = user ? ['setpriv', `--reuid=${user.uid}`, `--regid=${user.gid}`, '--clear-groups', '--pdeathsig', 'KILL', '--'] : ['setpriv', '--pdeathsig', 'KILL', '--'];
  const passFile = path.join(dir, 'password');
  let password: string;
  if (user) await letTraverse(dir);
  if (!existsSync(path.join(data, 'PG_VERSION'))) {
    await rm(data, { recursive: true, force: true });
    await mkdir(data, { recursive: true });
    password = randomBytes(12).toString('hex');
    await writeFile(passFile, password, { mode: 0o600 });
    if (user) {
      await chown(dir, user.uid, user.gid);
      await chown(data, user.uid, user.gid);
      await chown(passFile, user.uid, user.gid);
    }
    const init = await execa(as[0]!, [...as.slice(1), path.join(bin, 'initdb'), '-D', data, '-U', USER, '--auth=scram-sha-256', `--pwfile=${passFile}`, '-E', 'UTF8', '--locale=C.UTF-8', ...(o.fast ? ['--no-sync'] : [])], { reject: false, all: true });
    if (init.exitCode !== 0) throw new Error(`initdb in ${data} failed: ${String(init.all).trim().split('\n').slice(-3).join(' ')}`);
  } else {
    password = (await readFile(passFile, 'utf8')).trim();
  }
  const settings = ['-c', 'listen_addresses=127.0.0.1', '-c', `unix_socket_directories=${dir}`, '-c', 'max_connections=200', '-c', 'shared_buffers=128MB'];
  if (o.fast) settings.push('-c', 'fsync=off', '-c', 'synchronous_commit=off', '-c', 'full_page_writes=off');
  return {
    dir,
    password,
    port,
    baseUrl: `postgres://${USER}:${password}@127.0.0.1:${port}/`,
    cmd: as[0]!,
    args: [...as.slice(1), path.join(bin, 'postgres'), '-D', data, '-p', String(port), ...settings],
  };
}

/** Until a server at baseUrl takes logins (listening comes first: "the database system is starting up"). */
export async function waitForPostgres(baseUrl: string, timeoutMs = 30_000, gone?: () => boolean): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const failed = await tryLogin(baseUrl);
    if (!failed) return;
    if (gone?.()) throw new Error(`PostgreSQL exited before it took logins at ${new URL(baseUrl).host}`);
    if (Date.now() > deadline) throw new Error(`PostgreSQL at ${new URL(baseUrl).host} did not take logins within ${timeoutMs / 1000} s: ${failed.message}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Whether a server at baseUrl takes logins now (one try). */
export async function postgresReady(baseUrl: string): Promise<boolean> {
  return (await tryLogin(baseUrl)) === null;
}

/** One login to database postgres: null when it worked, else why not. */
async function tryLogin(baseUrl: string): Promise<Error | null> {
  const client = new pg.Client({ connectionString: `${baseUrl}postgres`, connectionTimeoutMillis: 2000 });
  try {
    await client.connect();
    return null;
  } catch (e) {
    return e as Error;
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** Creates database `name` on the server at baseUrl unless it exists; returns its URL. */
export async function ensureDatabase(baseUrl: string, name: string): Promise<string> {
  if (!/^[a-z_][a-z0-9_]{0,62}$/.test(name)) throw new Error(`not a database name: ${name}`);
  const client = new pg.Client({ connectionString: `${baseUrl}postgres` });
  await client.connect();
  try {
    const r = await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [name]);
    if (r.rowCount === 0) {
      await client.query(`CREATE DATABASE ${name}`).catch((e: { code?: string }) => {
        if (e.code !== '42P04') throw e; // created meanwhile
      });
    }
  } finally {
    await client.end();
  }
  return `${baseUrl}${name}`;
}

export async function startPrivatePostgres(opts: PrivatePostgresOptions = {}): Promise<PrivatePostgres> {
  const owned = !opts.dir;
  const dir = opts.dir ?? (await mkdtemp(path.join(os.tmpdir(), 'vmlb-pg-')));
  const port = opts.port ?? (await freePort());
  const prepared = await preparePostgres({ dir, port, fast: opts.fast });
  const { baseUrl } = prepared;
  let child: ResultPromise | undefined;

  const start = async () => {
    child = execa(prepared.cmd, prepared.args, { reject: false, cleanup: true, all: true, buffer: false });
    const c = child;
    if (opts.onLine) c.all?.on('data', (b: Buffer) => String(b).split('\n').filter(Boolean).forEach((l) => opts.onLine!(l)));
    else c.all?.resume();
    let exited = false;
    void c.then(() => (exited = true));
    await waitForPostgres(baseUrl, 30_000, () => exited);
  };
  const stop = async () => {
    const c = child;
    child = undefined;
    if (!c || c.exitCode !== null) return;
    c.kill('SIGINT');
    const timer = setTimeout(() => c.kill('SIGKILL'), 10_000);
    await c.catch(() => undefined);
    clearTimeout(timer);
  };
  await start();

  const created = new Set<string>();
  return {
    baseUrl,
    url: (name) => `${baseUrl}${name}`,
    port,
    dir,
    get pid() {
      return child?.pid;
    },
    async ensureDatabase(name) {
      if (!created.has(name)) await ensureDatabase(baseUrl, name);
      created.add(name);
      return `${baseUrl}${name}`;
    },
    stop,
    start,
    async close() {
      await stop();
      if (owned) await rm(dir, { recursive: true, force: true });
    },
  };
}
