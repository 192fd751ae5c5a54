/**
 * The S3 harness. Which server a test file gets:
 *
 *  - by default, a private s3rver in a child process (test/fixtures/s3rver-launcher.mjs) on a
 *    free 127.0.0.1 port, its folder in a temporary directory. `stop()` SIGKILLs it (an outage),
 *    `restart()` starts it again on the same port and folder;
 *  - with VMLB_TEST_S3=radosgw (`npm run test:radosgw`), a radosgw of its own on the run's one
 *    Ceph cluster (test/helpers/ceph-rgw.ts): `stop()` SIGKILLs the radosgw, `restart()` starts it
 *    again on the same port against the same cluster (the objects survive);
 *  - with S3_ENDPOINT set in the environment, that server (a real MinIO, credentials from
 *    S3_ACCESS_KEY/S3_SECRET_KEY): then stop/restart are undefined and the tests that need them
 *    skip themselves.
 */
import { execa, type ResultPromise } from 'execa';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startCephRgw } from './ceph-rgw.js';

const LAUNCHER = fileURLToPath(new URL('../fixtures/s3rver-launcher.mjs', import.meta.url));

export interface LauncherEvent {
  event: string;
  path: string;
}

export interface S3Server {
  /** e.g. http://127.0.0.1:41234 */
  endpoint: string;
  accessKey: string;
  secretKey: string;
  region: string;
  /** The variables the engine reads, for a `vmlb … --cache s3://…` child. */
  env: Record<string, string>;
  /** Which server it is. */
  kind: 's3rver' | 'radosgw' | 'external';
  /**
   * The objects (`/BUCKET/KEY`) whose multipart uploads the server saw initiated, in order (the
   * s3rver launcher's report, radosgw's ops log); null for an external server, where nothing
   * can be observed.
   */
  multipartInitiations(): Promise<string[] | null>;
  /**
   * The variables of `env` with this secret key (and an access key that goes with it): keys the
   * server takes for the same account, so the same buckets. s3rver checks no signature (any
   * secret is taken); radosgw gets a second key pair for its user. Undefined for an external
   * server.
   */
  withSecret?: (secretKey: string) => Promise<Record<string, string>>;
  /** SIGKILLs the server (an outage). Undefined for an external server. */
  stop?: () => Promise<void>;
  /** Starts it again on the same port and folder. Undefined for an external server. */
  restart?: () => Promise<void>;
  /** Stops it for good and removes its folder. */
  close(): Promise<void>;
}

/** Why stop/restart tests are skipped, or null when the suite runs its own server. */
export const EXTERNAL_S3_REASON = process.env.S3_ENDPOINT
  ? `S3_ENDPOINT is set (${process.env.S3_ENDPOINT}): the suite uses that server and cannot stop or restart it`
  : null;

/** Which server startS3Server() gives: VMLB_TEST_S3 (s3rver, radosgw), or external with S3_ENDPOINT. */
export function s3Kind(): S3Server['kind'] {
  if (process.env.S3_ENDPOINT) return 'external';
  const want = process.env.VMLB_TEST_S3 || 's3rver';
  if (want !== 's3rver' && want !== 'radosgw') throw new Error(`VMLB_TEST_S3="${want}" is not s3rver or radosgw`);
  return want;
}

export async function startS3Server(): Promise<S3Server> {
  const kind = s3Kind();
  if (kind === 'external') return externalServer();
  if (kind === 'radosgw') return radosgwServer();

  const directory = await mkdtemp(path.join(os.tmpdir(), 'vmlb-s3rver-'));
  const events: LauncherEvent[] = [];
  let child: ResultPromise | null = null;
  let port = 0;

  const start = async () => {
    const c = execa(process.execPath, [LAUNCHER, JSON.stringify({ port, directory })], {
      reject: false,
      stdin: 'ignore',
      buffer: false,
      cleanup: true,
    });
    child = c;
    port = await new Promise<number>((resolve, reject) => {
      let buf = '';
      let stderr = '';
      let listening = false;
      c.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
      c.stdout!.on('data', (d: Buffer) => {
        buf += d.toString();
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (!line.startsWith('{')) continue;
          const j = JSON.parse(line) as { port?: number } & Partial<LauncherEvent>;
          if (j.port !== undefined && !listening) {
            listening = true;
            resolve(j.port);
          } else if (j.event) {
            events.push({ event: j.event, path: j.path ?? '' });
          }
        }
      });
      void c.then((r) => {
        if (!listening) reject(new Error(`s3rver exited before listening (${r.exitCode ?? r.signal}): ${stderr}`));
      });
    });
  };

  const stop = async () => {
    const c = child;
    child = null;
    if (!c) return;
    c.kill('SIGKILL');
    await c;
  };

  await start();
  const endpoint = `http://127.0.0.1:${port}`;
  const creds = { accessKey: 'S3RVER', secretKey: 'S3RVER', region: 'us-east-1' };
  return {
    endpoint,
    ...creds,
    env: { S3_ENDPOINT: endpoint, S3_ACCESS_KEY: creds.accessKey, S3_SECRET_KEY: creds.secretKey, S3_REGION: creds.region },
    kind: 's3rver',
    multipartInitiations: async () => events.filter((e) => e.event === 'multipart-initiate').map((e) => e.path),
    // s3rver does not check signatures.
    withSecret: async (secretKey) => ({ S3_ENDPOINT: endpoint, S3_ACCESS_KEY: creds.accessKey, S3_SECRET_KEY: secretKey, S3_REGION: creds.region }),
    stop,
    restart: async () => {
      await stop();
      await start();
    },
    async close() {
      await stop();
      await rm(directory, { recursive: true, force: true });
    },
  };
}

function externalServer(): S3Server {
  const env = process.env;
  const accessKey = env.S3_ACCESS_KEY ?? env.AWS_ACCESS_KEY_ID ?? '';
  const secretKey = env.S3_SECRET_KEY ?? env.AWS_SECRET_ACCESS_KEY ?? '';
  const region = env.S3_REGION || 'us-east-1';
  return {
    endpoint: env.S3_ENDPOINT!,
    accessKey,
    secretKey,
    region,
    env: { S3_ENDPOINT: env.S3_ENDPOINT!, S3_ACCESS_KEY: accessKey, S3_SECRET_KEY: secretKey, S3_REGION: region },
    kind: 'external',
    multipartInitiations: async () => null,
    async close() {},
  };
}

async function radosgwServer(): Promise<S3Server> {
  const rgw = await startCephRgw();
  return {
    endpoint: rgw.endpoint,
    accessKey: rgw.accessKey,
    secretKey: rgw.secretKey,
    region: rgw.region,
    env: rgw.env,
    kind: 'radosgw',
    // The ops log's uri is `POST /BUCKET/KEY?uploads… HTTP/1.1`.
    multipartInitiations: async () =>
      (await rgw.opsLog()).filter((op) => op.operation === 'init_multipart').map((op) => decodeURIComponent(op.uri.split(' ')[1]!.split('?')[0]!)),
    withSecret: async (secretKey) => ({ ...rgw.env, S3_ACCESS_KEY: await rgw.addKey(secretKey), S3_SECRET_KEY: secretKey }),
    stop: () => rgw.stop(),
    restart: () => rgw.restart(),
    close: () => rgw.close(),
  };
}
