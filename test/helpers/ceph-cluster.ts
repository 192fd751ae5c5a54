/**
 * A one-node Ceph 16.2 cluster for the tests' radosgw (test/helpers/ceph-rgw.ts): ceph-mon with
 * auth none and one memstore ceph-osd (RAM-backed, pool size 1), the recipe of
 * ../shared/TESTING.md. About 20 s to start; radosgw processes then start against it in a few
 * seconds each, so a vitest run starts it once (test/helpers/ceph-broker.ts) and each test file
 * runs its own radosgw on it.
 *
 * Every daemon runs in the foreground (`-f`) as a child process its starter waits on, through
 * `setpriv --pdeathsig KILL` (a daemonized one is re-parented to init and reaped slowly here,
 * and a child of a killed starter would outlive it). All state is in one temporary directory,
 * `vmlb-ceph-*`, which names its owner (owner.json, pid and start time) and every daemon started
 * in it (pids/NAME); `close()` stops the daemons and removes it, and the next start sweeps the
 * directory of an owner that is gone (its daemons killed, the directory removed).
 */
import { execa, type ResultPromise } from 'execa';
import { randomUUID } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { isRunning, processIdentity, selfIdentity, type ProcessIdentity } from '../../libs/layer-engine/src/host/process-identity.js';

export const CEPH_PACKAGES = ['radosgw', 'ceph-mon', 'ceph-osd', 'ceph-common'];
const DIR_PREFIX = 'vmlb-ceph-';

/** What a process needs to use a cluster (plain data: it travels from the broker to test files). */
export interface CephClusterInfo {
  dir: string;
  /** DIR/ceph.conf */
  conf: string;
  /** The keys of the user `vmlb`, made when the cluster started. */
  accessKey: string;
  secretKey: string;
}

export interface CephCluster extends CephClusterInfo {
  /** Stops the daemons (and any radosgw still recorded in the directory) and removes the directory. */
  close(): Promise<void>;
}

/** `n` distinct free ports on 127.0.0.1 (each held until all are chosen, so none repeats). */
export async function freePorts(n: number): Promise<number[]> {
  const servers = Array.from({ length: n }, () => createServer());
  for (const s of servers) await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const ports = servers.map((s) => (s.address() as AddressInfo).port);
  for (const s of servers) await new Promise((r) => s.close(r));
  return ports;
}

export async function freePort(): Promise<number> {
  return (await freePorts(1))[0]!;
}

/** Installs Ceph's Debian packages when a command of theirs is missing. */
export async function ensureCephInstalled(): Promise<void> {
  const have = await execa('sh', ['-c', 'command -v radosgw && command -v ceph-mon && command -v ceph-osd && command -v radosgw-admin && command -v ceph && command -v setpriv'], { reject: false });
  if (have.exitCode === 0) return;
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const install = () => execa('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...CEPH_PACKAGES, 'util-linux'], { env, reject: false });
  let r = await install();
  if (r.exitCode !== 0) {
    await execa('apt-get', ['update', '-qq'], { env, reject: false });
    r = await install();
  }
  if (r.exitCode !== 0) throw new Error(`apt-get install ${CEPH_PACKAGES.join(' ')} failed (exit ${r.exitCode}): ${String(r.stderr).slice(-2000)}`);
}

/** `ceph …`/`radosgw-admin …` against a cluster. */
export function cephEnv(info: CephClusterInfo): NodeJS.ProcessEnv {
  return { ...process.env, CEPH_CONF: info.conf };
}

export interface Daemon {
  name: string;
  child: ResultPromise;
  /** Whether it has ended. */
  readonly exited: boolean;
  /** SIGTERM, SIGKILL after `graceMs`, and waits for it (its record in the directory removed). */
  stop(graceMs?: number): Promise<void>;
  /** SIGKILL, and waits for it. */
  kill(): Promise<void>;
}

/**
 * Starts `cmd -f ARGS` as a child through `setpriv --pdeathsig KILL` (so it dies with this
 * process even when this process is SIGKILLed), and records its pid in DIR/pids/NAME for the
 * sweep. Its stdout is ignored, its stderr kept (for the error when it exits too soon).
 */
export async function spawnDaemon(info: CephClusterInfo, name: string, cmd: string, args: string[]): Promise<Daemon> {
  const child = execa('setpriv', ['--pdeathsig', 'KILL', '--', cmd, '-f', '-c', info.conf, ...args], {
    env: cephEnv(info),
    reject: false,
    stdin: 'ignore',
    stdout: 'ignore',
    stderr: 'pipe',
    cleanup: true,
    buffer: true,
  });
  const pidFile = path.join(info.dir, 'pids', name);
  await mkdir(path.dirname(pidFile), { recursive: true });
  if (child.pid) await writeFile(pidFile, `${child.pid}\n`);
  let exited = false;
  void child.then(() => (exited = true));
  const wait = async () => {
    await child;
    await rm(pidFile, { force: true });
  };
  return {
    name,
    child,
    get exited() {
      return exited;
    },
    async stop(graceMs = 5000) {
      if (!exited) {
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
        await child;
        clearTimeout(t);
      }
      await wait();
    },
    async kill() {
      if (!exited) child.kill('SIGKILL');
      await wait();
    },
  };
}

/** Polls `probe` until it says yes; fails at once when one of `daemons` exits, or after `seconds`. */
export async function waitForDaemons(what: string, seconds: number, daemons: Daemon[], probe: () => Promise<boolean>, log?: string): Promise<void> {
  const until = Date.now() + seconds * 1000;
  for (;;) {
    for (const d of daemons) {
      if (d.exited) {
        const r = await d.child;
        throw new Error(`${d.name} exited (${r.exitCode ?? r.signal}) while waiting for ${what}: ${String(r.stderr).slice(-1500)}`);
      }
    }
    if (await probe().catch(() => false)) return;
    if (Date.now() > until) {
      const tail = log ? await readFile(log, 'utf8').catch(() => '') : '';
      throw new Error(`Ceph: no ${what} after ${seconds} s${tail ? `; ${path.basename(log!)} ends: ${tail.slice(-1500)}` : ''}`);
    }
    await new Promise((r) => setTimeout(r, 300));
  }
}

/** The process a cluster directory belongs to (owner.json), or null. */
export async function readOwner(dir: string): Promise<ProcessIdentity | null> {
  try {
    const j = JSON.parse(await readFile(path.join(dir, 'owner.json'), 'utf8')) as ProcessIdentity;
    return typeof j.pid === 'number' && typeof j.startTime === 'string' ? j : null;
  } catch {
    return null;
  }
}

/**
 * Kills every daemon recorded in DIR/pids whose command line names DIR (a pid reused by another
 * process is left alone), and waits until they are gone.
 */
async function killRecorded(dir: string): Promise<string[]> {
  const killed: string[] = [];
  const names = await readdir(path.join(dir, 'pids')).catch(() => [] as string[]);
  const waiting: number[] = [];
  for (const name of names) {
    const pid = Number((await readFile(path.join(dir, 'pids', name), 'utf8').catch(() => '')).trim());
    if (!pid) continue;
    const cmdline = (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).replace(/\0/g, ' ');
    if (!cmdline.includes(dir) || !(await processIdentity(pid))) continue;
    try {
      process.kill(pid, 'SIGKILL');
      killed.push(`${name} (pid ${pid})`);
      waiting.push(pid);
    } catch {
      /* gone meanwhile */
    }
  }
  // Not our children (or not any more): wait until each is gone or a zombie.
  const until = Date.now() + 10_000;
  while (Date.now() < until && (await Promise.all(waiting.map((p) => processIdentity(p)))).some((x) => x !== null)) await new Promise((r) => setTimeout(r, 50));
  return killed;
}

/**
 * Removes the cluster directories of owners that are gone (a run that crashed or was killed):
 * their daemons killed first. Directories of running owners are left alone.
 */
export async function sweepStaleClusters(): Promise<string[]> {
  const tmp = os.tmpdir();
  const said: string[] = [];
  for (const name of (await readdir(tmp).catch(() => [] as string[])).filter((n) => n.startsWith(DIR_PREFIX))) {
    const dir = path.join(tmp, name);
    const owner = await readOwner(dir);
    if (owner && (await isRunning(owner))) continue;
    const killed = await killRecorded(dir);
    await rm(dir, { recursive: true, force: true });
    said.push(`removed the stale Ceph cluster ${dir}${killed.length ? ` (killed ${killed.join(', ')})` : ''}`);
  }
  return said;
}

/** Starts a cluster owned by this process: mon, memstore osd, and the user `vmlb`. */
export async function startCephCluster(o: { accessKey?: string; secretKey?: string } = {}): Promise<CephCluster> {
  await ensureCephInstalled();
  for (const line of await sweepStaleClusters()) console.warn(`ceph-cluster: ${line}`);
  const dir = await mkdtemp(path.join(os.tmpdir(), DIR_PREFIX));
  await writeFile(path.join(dir, 'owner.json'), JSON.stringify(await selfIdentity()) + '\n');
  const info: CephClusterInfo = {
    dir,
    conf: path.join(dir, 'ceph.conf'),
    accessKey: o.accessKey ?? 'VMLBTESTACCESSKEY01',
    secretKey: o.secretKey ?? 'vmlbTestSecretKey0123456789abcdefghijklmn',
  };
  const env = cephEnv(info);
  const run = (cmd: string, args: string[]) => execa(cmd, args, { env, timeout: 60_000 });
  const daemons: Daemon[] = [];

  const close = async () => {
    for (const d of daemons.reverse()) await d.stop();
    daemons.length = 0;
    // A radosgw a test file left (its own starter gone without stopping it).
    await killRecorded(dir);
    await rm(dir, { recursive: true, force: true });
  };

  try {
    const [monV2, monV1] = await freePorts(2);
    // The daemons' own ports: a range of 100 unlikely to be in use (the kernel's ephemeral
    // ports start at 32768).
    const bindMin = 20_000 + Math.floor(Math.random() * 120) * 100;
    for (const d of ['mon.a', 'osd.0', 'run', 'log', 'pids']) await mkdir(path.join(dir, d), { recursive: true });
    const fsid = randomUUID();
    const mon = `[v2:127.0.0.1:${monV2},v1:127.0.0.1:${monV1}]`;
    await writeFile(
      info.conf,
      `[global]
fsid = ${fsid}
mon host = ${mon}
mon initial members = a
public network = 127.0.0.0/8
ms bind port min = ${bindMin}
ms bind port max = ${bindMin + 99}
auth cluster required = none
auth service required = none
auth client required = none
auth allow insecure global id reclaim = true
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
run dir = ${dir}/run
admin socket = ${dir}/run/$name.asok
pid file = ${dir}/run/$name.pid
log file = ${dir}/log/$name.log
keyring = ${dir}/keyring
[mon.a]
mon data = ${dir}/mon.a
[osd]
osd data = ${dir}/osd.$id
osd objectstore = memstore
memstore device bytes = 8589934592
osd memory target = 1073741824
osd max object size = 134217728
`,
    );
    const keyring = path.join(dir, 'keyring');
    await run('ceph-authtool', ['--create-keyring', keyring, '--gen-key', '-n', 'mon.', '--cap', 'mon', 'allow *']);
    await run('ceph-authtool', [keyring, '--gen-key', '-n', 'client.admin', '--cap', 'mon', 'allow *', '--cap', 'osd', 'allow *', '--cap', 'mgr', 'allow *']);
    await run('monmaptool', ['--create', '--fsid', fsid, '--addv', 'a', mon, path.join(dir, 'monmap')]);
    await run('ceph-mon', ['--mkfs', '-i', 'a', '--monmap', path.join(dir, 'monmap'), '--keyring', keyring]);
    daemons.push(await spawnDaemon(info, 'mon.a', 'ceph-mon', ['-i', 'a']));
    await waitForDaemons('monitor', 30, daemons, async () => (await execa('ceph', ['-s', '--connect-timeout', '3'], { env, reject: false, timeout: 10_000 })).exitCode === 0);

    const osdUuid = randomUUID();
    const osdId = String((await run('ceph', ['osd', 'new', osdUuid])).stdout).trim();
    await run('ceph-osd', ['-i', osdId, '--mkfs', '--osd-uuid', osdUuid]);
    daemons.push(await spawnDaemon(info, `osd.${osdId}`, 'ceph-osd', ['-i', osdId]));
    await waitForDaemons('OSD up', 60, daemons, async () => /\b1 up\b/.test(String((await execa('ceph', ['osd', 'stat'], { env, reject: false, timeout: 10_000 })).stdout)));

    // The user the tests' clients sign with (radosgw-admin works on RADOS itself: no radosgw
    // needs to run; it also makes radosgw's own pools, which the first radosgw would).
    await run('radosgw-admin', ['user', 'create', '--uid=vmlb', '--display-name=vmlb', `--access-key=${info.accessKey}`, `--secret-key=${info.secretKey}`]);
    return { ...info, close };
  } catch (e) {
    await close();
    throw e;
  }
}
