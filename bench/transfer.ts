/**
 * `transfer-load`: a 650 MiB blob pushed and pulled through the shared store (SharedStore's
 * putFile/getFile: the layer push's multipart upload and the pull's resumable download) on a
 * quiet machine and with two busy loops (`sh -c 'while :; do :; done'`, one per core here)
 * running, against s3rver (the dev fleet's server) and Ceph radosgw (a real S3 server). Before
 * the fix a push under load failed with "ETIMEDOUT: no data for 60000 ms" within seconds.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { s3ConfigFrom } from '../libs/layer-engine/src/s3-config.js';
import { SharedStore, type SharedStoreEvent } from '../libs/layer-engine/src/shared-store.js';
import { startCephRgw } from '../test/helpers/ceph-rgw.js';
import { startS3Server } from '../test/helpers/s3-server.js';
import { checkInterrupted, median, progress, run, withSandbox, type BenchOptions, type Row } from './harness.js';

const MIB = 650;
const BYTES = MIB * 1024 * 1024;

/** Two busy loops until `stop()`. */
function busyLoops(n: number): { stop: () => Promise<void> } {
  const kids: ChildProcess[] = Array.from({ length: n }, () => spawn('sh', ['-c', 'while :; do :; done'], { stdio: 'ignore' }));
  const kill = () => kids.forEach((k) => k.kill('SIGKILL'));
  process.once('exit', kill);
  return {
    async stop() {
      process.off('exit', kill);
      await Promise.all(kids.map((k) => (k.exitCode !== null || k.signalCode !== null ? undefined : new Promise<void>((r) => { k.once('exit', () => r()); k.kill('SIGKILL'); }))));
    },
  };
}

interface Times {
  push: number[];
  pull: number[];
  retries: number;
}

async function rounds(env: Record<string, string>, src: string, dir: string, reps: number, loaded: boolean): Promise<Times> {
  const t: Times = { push: [], pull: [], retries: 0 };
  const onEvent = (e: SharedStoreEvent) => {
    if (e.type === 'retry') {
      t.retries++;
      progress(`transfer-load: retry: ${e.what}: ${e.error}`);
    }
  };
  const store = new SharedStore(s3ConfigFrom(`s3://vmlb-bench/tl-${randomBytes(3).toString('hex')}`, env), { onEvent });
  try {
    await store.ensureBucket();
    for (let r = 0; r < reps; r++) {
      checkInterrupted();
      const load = loaded ? busyLoops(2) : null;
      try {
        let s = performance.now();
        await store.putFile(`bench/blob-${r}.bin`, src);
        t.push.push((performance.now() - s) / 1000);
        const dst = path.join(dir, `got-${r}.bin`);
        s = performance.now();
        const got = await store.getFile(`bench/blob-${r}.bin`, dst);
        t.pull.push((performance.now() - s) / 1000);
        if (got?.size !== BYTES) throw new Error(`getFile got ${got?.size} bytes, not ${BYTES}`);
        await rm(dst, { force: true });
      } finally {
        await load?.stop();
      }
    }
  } finally {
    store.close();
  }
  return t;
}

async function transferLoad(o: BenchOptions): Promise<Row[]> {
  const reps = o.quick ? 1 : 2;
  return withSandbox('transfer-load', async (sb) => {
    const src = path.join(sb.dir, 'blob.bin');
    progress(`transfer-load: writing ${MIB} MiB of random bytes (not measured)`);
    await run(['bash', '-c', `head -c ${BYTES} /dev/urandom > '${src}' && sync '${src}'`]);
    const rows: Row[] = [];
    const mbs = (xs: number[]) => BYTES / 1e6 / median(xs);
    const fmt = (xs: number[]) => `${median(xs).toFixed(1)} s (${mbs(xs).toFixed(0)} MB/s)${xs.length > 1 ? ` [${Math.min(...xs).toFixed(1)}–${Math.max(...xs).toFixed(1)} s]` : ''}`;
    for (const server of ['s3rver', 'radosgw'] as const) {
      checkInterrupted();
      progress(`transfer-load: starting ${server}`);
      const s = server === 's3rver' ? await startS3Server() : await startCephRgw();
      try {
        progress(`transfer-load: ${server}, quiet machine`);
        const quiet = await rounds(s.env, src, sb.dir, reps, false);
        progress(`transfer-load: ${server}, two busy loops`);
        const loaded = await rounds(s.env, src, sb.dir, reps, true);
        const how = `${MIB} MiB of random bytes, ${server} on loopback, ${reps === 1 ? 'one run' : `median of ${reps}`} each`;
        for (const dir of ['push', 'pull'] as const) {
          rows.push({
            benchmark: `transfer-load (${dir}, ${server})`,
            what: `SharedStore.${dir === 'push' ? 'putFile (multipart, 32 MiB parts, 2 in flight, each retried alone)' : 'getFile (resumable ranged download, hashed)'} with two \`while :; do :; done\` loops running vs on a quiet machine; ${how}; retries under load ${loaded.retries}, quiet ${quiet.retries}`,
            result: `loaded ${fmt(loaded[dir])} vs quiet ${fmt(quiet[dir])}`,
            target: 'completes under load, no retry',
            ratio: `${(median(loaded[dir]) / median(quiet[dir])).toFixed(2)}× quiet time`,
          });
        }
      } finally {
        await s.close();
      }
    }
    return rows;
  });
}

export const TRANSFER_BENCHMARKS = [
  { name: 'transfer-load', title: `shared-store push and pull of ${MIB} MiB under CPU load (two busy loops) vs quiet, s3rver and radosgw`, run: transferLoad },
];
