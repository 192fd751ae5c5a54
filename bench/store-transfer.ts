/** store-transfer: SharedStore putFile/getFile of 512 MiB vs the bare minio client vs cp. */
import { randomBytes } from 'node:crypto';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { Client } from 'minio';
import { s3ConfigFrom } from '../libs/layer-engine/src/store/s3-config.js';
import { SharedStore } from '../libs/layer-engine/src/store/shared-store.js';
import { withServices } from './fleet-services.js';
import { progress, type BenchOptions, type Row } from './harness.js';
import { median } from './numbers.js';
import { checkInterrupted, run } from './run-command.js';
import { withSandbox } from './sandbox.js';

export async function storeTransfer(o: BenchOptions): Promise<Row[]> {
  const mib = 512;
  const reps = o.quick ? 1 : 3;
  const bytes = mib * 1024 * 1024;
  const mbs = (ms: number) => bytes / 1e6 / (ms / 1000);
  return withSandbox('store-transfer', (sb) =>
    withServices({ s3: true }, async ({ s3 }) => {
      const src = path.join(sb.dir, 'blob.bin');
      progress(`store-transfer: writing ${mib} MiB of random bytes (not measured)`);
      await run(['bash', '-c', `head -c ${bytes} /dev/urandom > '${src}' && sync '${src}'`]);
      const sharedUrl = `s3://vmlb-bench/st-${randomBytes(3).toString('hex')}`;
      const cfg = s3ConfigFrom(sharedUrl, s3!.env);
      const store = new SharedStore(cfg);
      const bare = new Client({ endPoint: cfg.host, port: cfg.port, useSSL: cfg.useSSL, accessKey: cfg.accessKey, secretKey: cfg.secretKey, region: cfg.region, pathStyle: cfg.pathStyle });
      const t = { storePut: [] as number[], storeGet: [] as number[], barePut: [] as number[], bareGet: [] as number[], cp: [] as number[] };
      const time = async (into: number[], fn: () => Promise<unknown>) => {
        checkInterrupted();
        const s = performance.now();
        await fn();
        into.push(performance.now() - s);
      };
      try {
        await store.ensureBucket();
        for (let r = 0; r < reps; r++) {
          progress(`store-transfer: round ${r + 1}/${reps}`);
          // Taking turns, so the machine's load falls on all of them alike.
          const dst = (n: string) => path.join(sb.dir, `${n}-${r}.bin`);
          await time(t.storePut, () => store.putFile(`bench/store-${r}.bin`, src));
          await time(t.barePut, () => bare.fPutObject(cfg.bucket, `${cfg.prefix}bench/bare-${r}.bin`, src, {}));
          await time(t.storeGet, async () => {
            const got = await store.getFile(`bench/store-${r}.bin`, dst('store'));
            if (got?.size !== bytes) throw new Error(`getFile got ${got?.size} bytes, not ${bytes}`);
            await run(['sync', dst('store')]);
          });
          await time(t.bareGet, async () => {
            await bare.fGetObject(cfg.bucket, `${cfg.prefix}bench/bare-${r}.bin`, dst('bare'));
            await run(['sync', dst('bare')]);
          });
          await time(t.cp, () => run(['bash', '-c', `cp '${src}' '${dst('cp')}' && sync '${dst('cp')}'`]));
          for (const f of ['store', 'bare', 'cp']) if ((await stat(dst(f))).size !== bytes) throw new Error(`${dst(f)}: wrong size`);
          await run(['rm', '-f', dst('store'), dst('bare'), dst('cp')]);
        }
      } finally {
        store.close();
      }
      const m = (xs: number[]) => mbs(median(xs));
      const range = (xs: number[]) => (xs.length > 1 ? ` (${mbs(Math.max(...xs)).toFixed(0)}–${mbs(Math.min(...xs)).toFixed(0)})` : '');
      const how = `${mib} MiB of random bytes on the same s3rver (loopback; s3rver's CPU is its limit), ${reps === 1 ? 'one run' : `median of ${reps}`}`;
      return [
        {
          benchmark: 'store-transfer (push)',
          what: `SharedStore.putFile (the layer push's upload path: a file stream hashed on the way, multipart) vs the bare minio client's fPutObject; ${how}`,
          result: `${m(t.storePut).toFixed(0)} MB/s${range(t.storePut)} vs minio ${m(t.barePut).toFixed(0)} MB/s${range(t.barePut)}`,
          target: '≥ 0.8× bare minio',
          ratio: `${(m(t.storePut) / m(t.barePut)).toFixed(2)}× minio; ${(m(t.storePut) / m(t.cp)).toFixed(2)}× cp`,
        },
        {
          benchmark: 'store-transfer (pull)',
          what: `SharedStore.getFile (the layer pull's download path: stream hashed into a temp file, renamed) + sync vs the bare minio client's fGetObject + sync; ${how}`,
          result: `${m(t.storeGet).toFixed(0)} MB/s${range(t.storeGet)} vs minio ${m(t.bareGet).toFixed(0)} MB/s${range(t.bareGet)}`,
          target: '≥ 0.8× bare minio',
          ratio: `${(m(t.storeGet) / m(t.bareGet)).toFixed(2)}× minio; ${(m(t.storeGet) / m(t.cp)).toFixed(2)}× cp`,
        },
        {
          benchmark: 'store-transfer (cp)',
          what: `cp of the same file + sync, on the same disk: the local-disk reference the two ratios above are also given against`,
          result: `${m(t.cp).toFixed(0)} MB/s${range(t.cp)}`,
          target: '',
          ratio: '1.00×',
        },
      ];
    }),
  );
}
