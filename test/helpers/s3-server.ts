/**
 * The S3 harness: a private s3rver in a child process (test/fixtures/s3rver-launcher.mjs) on a
 * free 127.0.0.1 port, its folder in a temporary directory. `stop()` SIGKILLs it (an outage),
 * `restart()` starts it again on the same port and folder.
 *
 * With S3_ENDPOINT set in the environment the suite uses that server instead (a real MinIO,
 * credentials from S3_ACCESS_KEY/S3_SECRET_KEY): then stop/restart are undefined and the
 * tests that need them skip themselves.
 */
import { execa, type ResultPromise } from 'execa';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

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
  /** Requests the launcher reported (multipart initiations); empty for an external server. */
  events: LauncherEvent[];
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

export async function startS3Server(): Promise<S3Server> {
  if (process.env.S3_ENDPOINT) return externalServer();

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
    events,
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
    events: [],
    async close() {},
  };
}
