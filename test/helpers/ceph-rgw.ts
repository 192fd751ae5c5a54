/**
 * A real S3 server for the tests: a one-node Ceph 16.2 cluster (ceph-mon with auth none, one
 * memstore ceph-osd, pool size 1) and radosgw (beast) on 127.0.0.1, the recipe of
 * ../shared/real-s3/ceph-rgw.sh. Every daemon runs in the foreground (`-f`) as a child process
 * this helper waits on (a daemonized one is re-parented to init and reaped slowly here); all
 * state is in a temporary directory; `close()` stops the daemons by their pids and removes it.
 * Installs the Debian packages first when they are missing (apt-get, as scripts/setup.sh does).
 * About 25 s to start.
 */
import { execa, type ResultPromise } from 'execa';
import { randomUUID } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';

export const CEPH_PACKAGES = ['radosgw', 'ceph-mon', 'ceph-osd', 'ceph-common'];

export interface CephRgw {
  /** e.g. http://127.0.0.1:41234 */
  endpoint: string;
  port: number;
  accessKey: string;
  secretKey: string;
  region: string;
  /** The variables the engine reads, for a `vmlb … s3://…` child. */
  env: Record<string, string>;
  /** `radosgw-admin ARGS` against this cluster (e.g. `user create`); its stdout. */
  radosgwAdmin(args: string[]): Promise<string>;
  close(): Promise<void>;
}

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address() as AddressInfo;
  await new Promise((r) => s.close(r));
  return port;
}

/** Installs Ceph's Debian packages when a command of theirs is missing. */
export async function ensureCephInstalled(): Promise<void> {
  const have = await execa('sh', ['-c', 'command -v radosgw && command -v ceph-mon && command -v ceph-osd && command -v radosgw-admin && command -v ceph'], { reject: false });
  if (have.exitCode === 0) return;
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const install = () => execa('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...CEPH_PACKAGES], { env, reject: false });
  let r = await install();
  if (r.exitCode !== 0) {
    await execa('apt-get', ['update', '-qq'], { env, reject: false });
    r = await install();
  }
  if (r.exitCode !== 0) throw new Error(`apt-get install ${CEPH_PACKAGES.join(' ')} failed (exit ${r.exitCode}): ${String(r.stderr).slice(-2000)}`);
}

export async function startCephRgw(o: { accessKey?: string; secretKey?: string } = {}): Promise<CephRgw> {
  await ensureCephInstalled();
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vmlb-ceph-'));
  const daemons: Array<{ name: string; child: ResultPromise }> = [];
  const accessKey = o.accessKey ?? 'VMLBTESTACCESSKEY01';
  const secretKey = o.secretKey ?? 'vmlbTestSecretKey0123456789abcdefghijklmn';
  const conf = path.join(dir, 'ceph.conf');
  const env = { ...process.env, CEPH_CONF: conf };
  const run = (cmd: string, args: string[], opts: { input?: string } = {}) => execa(cmd, args, { env, timeout: 60_000, ...opts });

  const stop = async () => {
    for (const d of daemons.reverse()) {
      if (d.child.exitCode !== undefined && d.child.exitCode !== null) continue;
      d.child.kill('SIGTERM');
      const done = await Promise.race([d.child.then(() => true), new Promise((r) => setTimeout(() => r(false), 5000))]);
      if (!done) {
        d.child.kill('SIGKILL');
        await d.child;
      }
    }
    daemons.length = 0;
    await rm(dir, { recursive: true, force: true });
  };

  const spawn = (name: string, cmd: string, args: string[]) => {
    const child = execa(cmd, ['-f', ...args], { env, reject: false, stdin: 'ignore', stdout: 'ignore', stderr: 'pipe', cleanup: true, buffer: true });
    daemons.push({ name, child });
    return child;
  };

  const waitFor = async (what: string, seconds: number, probe: () => Promise<boolean>) => {
    const until = Date.now() + seconds * 1000;
    for (;;) {
      for (const d of daemons) {
        if (d.child.exitCode !== undefined && d.child.exitCode !== null) {
          const r = await d.child;
          throw new Error(`${d.name} exited (${r.exitCode ?? r.signal}) while waiting for ${what}: ${String(r.stderr).slice(-1500)}`);
        }
      }
      if (await probe().catch(() => false)) return;
      if (Date.now() > until) {
        const log = await readFile(path.join(dir, 'log', 'rgw.log'), 'utf8').catch(() => '');
        throw new Error(`Ceph: no ${what} after ${seconds} s${log ? `; rgw.log ends: ${log.slice(-1500)}` : ''}`);
      }
      await new Promise((r) => setTimeout(r, 300));
    }
  };

  try {
    const [monV2, monV1, rgwPort] = [await freePort(), await freePort(), await freePort()];
    // The daemons' own ports: a range of 100 unlikely to be in use (the kernel's ephemeral
    // ports start at 32768).
    const bindMin = 20_000 + Math.floor(Math.random() * 120) * 100;
    for (const d of ['mon.a', 'osd.0', 'run', 'log', 'rgw']) await mkdir(path.join(dir, d), { recursive: true });
    const fsid = randomUUID();
    const mon = `[v2:127.0.0.1:${monV2},v1:127.0.0.1:${monV1}]`;
    await writeFile(
      conf,
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
memstore device bytes = 4294967296
osd memory target = 1073741824
osd max object size = 134217728
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:${rgwPort}
rgw data = ${dir}/rgw
rgw dns name = 127.0.0.1
# radosgw defaults to ms_mon_client_mode=secure, which auth none cannot do
ms mon client mode = crc secure
log file = ${dir}/log/rgw.log
`,
    );
    const keyring = path.join(dir, 'keyring');
    await run('ceph-authtool', ['--create-keyring', keyring, '--gen-key', '-n', 'mon.', '--cap', 'mon', 'allow *']);
    await run('ceph-authtool', [keyring, '--gen-key', '-n', 'client.admin', '--cap', 'mon', 'allow *', '--cap', 'osd', 'allow *', '--cap', 'mgr', 'allow *']);
    await run('monmaptool', ['--create', '--fsid', fsid, '--addv', 'a', mon, path.join(dir, 'monmap')]);
    await run('ceph-mon', ['--mkfs', '-i', 'a', '--monmap', path.join(dir, 'monmap'), '--keyring', keyring]);
    spawn('ceph-mon', 'ceph-mon', ['-i', 'a']);
    await waitFor('monitor', 30, async () => (await execa('ceph', ['-s', '--connect-timeout', '3'], { env, reject: false, timeout: 10_000 })).exitCode === 0);

    const osdUuid = randomUUID();
    const osdId = String((await run('ceph', ['osd', 'new', osdUuid])).stdout).trim();
    await run('ceph-osd', ['-i', osdId, '--mkfs', '--osd-uuid', osdUuid]);
    spawn('ceph-osd', 'ceph-osd', ['-i', osdId]);
    await waitFor('OSD up', 60, async () => /\b1 up\b/.test(String((await execa('ceph', ['osd', 'stat'], { env, reject: false, timeout: 10_000 })).stdout)));

    spawn('radosgw', 'radosgw', ['-n', 'client.rgw.a']);
    await waitFor('radosgw answering HTTP', 90, async () => (await fetch(`http://127.0.0.1:${rgwPort}/`)).status > 0);
    await run('radosgw-admin', ['user', 'create', '--uid=vmlb', '--display-name=vmlb', `--access-key=${accessKey}`, `--secret-key=${secretKey}`]);

    const endpoint = `http://127.0.0.1:${rgwPort}`;
    const region = 'us-east-1';
    return {
      endpoint,
      port: rgwPort,
      accessKey,
      secretKey,
      region,
      env: { S3_ENDPOINT: endpoint, S3_ACCESS_KEY: accessKey, S3_SECRET_KEY: secretKey, S3_REGION: region },
      radosgwAdmin: async (args) => String((await run('radosgw-admin', args)).stdout),
      close: stop,
    };
  } catch (e) {
    await stop();
    throw e;
  }
}
