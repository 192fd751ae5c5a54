/**
 * A real S3 server for the tests: Ceph's radosgw (beast, on a free 127.0.0.1 port) on a one-node
 * Ceph cluster (test/helpers/ceph-cluster.ts). In a vitest run the cluster is the run's one
 * shared cluster (test/helpers/ceph-broker.ts, started on the first file that asks, stopped at
 * the end of the run); elsewhere (bench/) `startCephRgw()` starts a cluster of its own, which
 * `close()` stops. Each call starts its own radosgw process, a child of the caller (foreground,
 * `setpriv --pdeathsig KILL`), so a test can stop it for an outage and start it again on the same
 * port against the same cluster: the objects survive, as they are in the cluster.
 *
 * Its ops log (rgw_ops_log_file_path: one JSON record per request, written by radosgw itself)
 * is what a test reads to see which requests the server handled (`opsLog()`).
 */
import { execa } from 'execa';
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { isRunning } from '../../libs/layer-engine/src/host/process-identity.js';
import { cephEnv, freePort, readOwner, spawnDaemon, startCephCluster, waitForDaemons, type CephClusterInfo, type Daemon } from './ceph-cluster.js';

export { CEPH_PACKAGES, ensureCephInstalled } from './ceph-cluster.js';

/** One request as radosgw's ops log records it (the fields the tests read; there are more). */
export interface RgwOp {
  /** e.g. `init_multipart`, `put_obj`, `complete_multipart`, `get_obj`, `list_bucket`. */
  operation: string;
  bucket: string;
  object: string;
  /** e.g. `POST /vmlb-test/k/layers/x.qcow2.zst?uploads HTTP/1.1` */
  uri: string;
  http_status: string;
  error_code?: string;
  time: string;
}

export interface CephRgw {
  /** e.g. http://127.0.0.1:41234 */
  endpoint: string;
  port: number;
  accessKey: string;
  secretKey: string;
  region: string;
  /** The variables the engine reads, for a `vmlb … s3://…` child. */
  env: Record<string, string>;
  /** The radosgw user the keys above are of (`vmlb`, the cluster's, unless keys of its own were asked for). */
  uid: string;
  /** `radosgw-admin ARGS` against this cluster (e.g. `user create`); its stdout. */
  radosgwAdmin(args: string[]): Promise<string>;
  /** Gives the user another S3 key pair with this secret (and a new access key); its access key. */
  addKey(secretKey: string): Promise<string>;
  /** Every request this radosgw handled so far (all its runs), from its ops log. */
  opsLog(): Promise<RgwOp[]>;
  /** SIGKILLs the radosgw (an outage); the cluster and its objects stay. */
  stop(): Promise<void>;
  /** Starts the radosgw again on the same port against the same cluster (stopping it first if it runs). */
  restart(): Promise<void>;
  /** Stops the radosgw (and the cluster, when it is this caller's own). */
  close(): Promise<void>;
}

interface ClusterLease {
  info: CephClusterInfo;
  release(): Promise<void>;
}

/** The vitest run's shared cluster (VMLB_CEPH_BROKER, set by ceph-broker.ts), or one of this caller's own. */
async function leaseCluster(): Promise<ClusterLease> {
  const broker = process.env.VMLB_CEPH_BROKER;
  if (broker) {
    const r = await fetch(`${broker}/cluster`, { method: 'POST', signal: AbortSignal.timeout(170_000) });
    const body = await r.text();
    if (!r.ok) throw new Error(`the run's Ceph cluster (${broker}) could not start: ${body}`);
    return { info: JSON.parse(body) as CephClusterInfo, release: async () => {} };
  }
  const own = await startCephCluster();
  return { info: own, release: () => own.close() };
}

export async function startCephRgw(o: { accessKey?: string; secretKey?: string } = {}): Promise<CephRgw> {
  const lease = await leaseCluster();
  const { info } = lease;
  const id = randomBytes(4).toString('hex');
  const name = `client.rgw.${id}`;
  const rgwDir = path.join(info.dir, `rgw.${id}`);
  const log = path.join(rgwDir, 'rgw.log');
  const opsLogFile = path.join(rgwDir, 'ops.log');
  const env = cephEnv(info);
  const radosgwAdmin = async (args: string[]) => String((await execa('radosgw-admin', args, { env, timeout: 60_000 })).stdout);
  let daemon: Daemon | null = null;
  let port = 0;

  const start = async () => {
    const args = [
      '-n',
      name,
      `--rgw_frontends=beast endpoint=127.0.0.1:${port}`,
      `--rgw_data=${rgwDir}`,
      '--rgw_dns_name=127.0.0.1',
      // radosgw defaults to ms_mon_client_mode=secure, which auth none cannot do
      '--ms_mon_client_mode=crc secure',
      `--log_file=${log}`,
      `--admin_socket=${path.join(rgwDir, 'rgw.asok')}`,
      '--rgw_enable_ops_log=true',
      '--rgw_ops_log_rados=false',
      `--rgw_ops_log_file_path=${opsLogFile}`,
    ];
    const d = await spawnDaemon(info, `rgw.${id}`, 'radosgw', args);
    daemon = d;
    try {
      await waitForDaemons('radosgw answering HTTP', 90, [d], async () => (await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(2000) })).status > 0, log);
    } catch (e) {
      await d.kill();
      daemon = null;
      throw e;
    }
  };
  const stop = async () => {
    const d = daemon;
    daemon = null;
    await d?.kill();
  };

  // A radosgw does not outlive the cluster's owner (a killed vitest run whose file goes on as an
  // orphan): without its mon it would hang every request rather than exit.
  const owner = await readOwner(info.dir);
  const watchdog = setInterval(() => {
    if (!owner || !daemon) return;
    void isRunning(owner).then(async (alive) => {
      if (!alive) await stop();
    });
  }, 1000);
  watchdog.unref();

  try {
    await mkdir(rgwDir, { recursive: true });
    port = await freePort();
    await start();
    let accessKey = info.accessKey;
    let secretKey = info.secretKey;
    let uid = 'vmlb';
    if ((o.accessKey && o.accessKey !== accessKey) || (o.secretKey && o.secretKey !== secretKey)) {
      // Keys of its own: a user of its own on the shared cluster.
      accessKey = o.accessKey ?? `VMLB${randomBytes(8).toString('hex').toUpperCase()}`;
      secretKey = o.secretKey ?? randomBytes(20).toString('hex');
      uid = `vmlb-${id}`;
      await radosgwAdmin(['user', 'create', `--uid=${uid}`, `--display-name=${uid}`, `--access-key=${accessKey}`, `--secret-key=${secretKey}`]);
    }
    const endpoint = `http://127.0.0.1:${port}`;
    const region = 'us-east-1';
    return {
      endpoint,
      port,
      accessKey,
      secretKey,
      region,
      env: { S3_ENDPOINT: endpoint, S3_ACCESS_KEY: accessKey, S3_SECRET_KEY: secretKey, S3_REGION: region },
      uid,
      radosgwAdmin,
      async addKey(secret) {
        const access = `VMLB${randomBytes(8).toString('hex').toUpperCase()}`;
        await radosgwAdmin(['key', 'create', `--uid=${uid}`, '--key-type=s3', `--access-key=${access}`, `--secret-key=${secret}`]);
        return access;
      },
      async opsLog() {
        const text = await readFile(opsLogFile, 'utf8').catch(() => '');
        // One JSON object per line; the last may be half written.
        return text.split('\n').flatMap((l) => {
          try {
            return l.startsWith('{') ? [JSON.parse(l) as RgwOp] : [];
          } catch {
            return [];
          }
        });
      },
      stop,
      async restart() {
        await stop();
        await start();
      },
      async close() {
        clearInterval(watchdog);
        await stop();
        await rm(rgwDir, { recursive: true, force: true });
        await lease.release();
      },
    };
  } catch (e) {
    clearInterval(watchdog);
    await stop();
    await rm(rgwDir, { recursive: true, force: true });
    await lease.release();
    throw e;
  }
}
