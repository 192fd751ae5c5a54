/**
 * `transfer-load`: a 650 MiB blob pushed and pulled through the shared store (SharedStore's
 * putFile/getFile: the layer push's multipart upload and the pull's resumable download) on a
 * quiet machine and with two busy loops (`sh -c 'while :; do :; done'`, one per core here)
 * running, against s3rver (the dev fleet's server) and Ceph radosgw (a real S3 server). Before
 * the fix a push under load failed with "ETIMEDOUT: no data for 60000 ms" within seconds.
 *
 * `transfer-compression`: the Debian example's base layer (`vmlb build --last 01_base`, a
 * ~650 MiB qcow2) and its small `05_config` layer pushed (SharedStore.push) and pulled
 * (SharedStore.pull, into a store holding the parents) as they are (`compression: 'none'`, the
 * layout before compression) and as zstd streams (the default), interleaved run by run, against
 * s3rver and radosgw: seconds, the bytes on the wire (the object's size) and the ratio.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { cp, link, mkdir, readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { LocalStore } from '../libs/layer-engine/src/store/local-store.js';
import { s3ConfigFrom } from '../libs/layer-engine/src/store/s3-config.js';
import type { SharedStoreEvent } from '../libs/layer-engine/src/store/s3-bucket.js';
import { DEFAULT_ZSTD_LEVEL } from '../libs/layer-engine/src/store/shared-compression.js';
import { SharedStore } from '../libs/layer-engine/src/store/shared-store.js';
import { startCephRgw } from '../test/helpers/ceph-rgw.js';
import { startS3Server } from '../test/helpers/s3-server.js';
import { progress, REPO, type BenchOptions, type Row } from './harness.js';
import { median } from './numbers.js';
import { checkInterrupted, run } from './run-command.js';
import { withSandbox, type Sandbox } from './sandbox.js';
import { build } from './vmlb-run.js';

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

/** A local store at `dir` holding (as hard links) the layers of `from` below `key`: a pull's starting point. */
async function storeWithParents(from: LocalStore, key: string, dir: string): Promise<LocalStore> {
  await rm(dir, { recursive: true, force: true });
  await mkdir(path.join(dir, 'layers'), { recursive: true });
  const to = new LocalStore(dir);
  await to.init();
  for (let p = (await from.getManifest(key))!.parent; p; p = (await from.getManifest(p))!.parent) {
    for (const ext of ['qcow2', 'json', 'log']) {
      await link(path.join(from.root, 'layers', `${p}.${ext}`), path.join(dir, 'layers', `${p}.${ext}`)).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== 'ENOENT') throw e;
      });
    }
  }
  return to;
}

async function transferCompression(o: BenchOptions): Promise<Row[]> {
  const reps = o.quick ? 1 : 3;
  return withSandbox('transfer-compression', async (sb: Sandbox) => {
    const project = path.join(sb.dir, 'debian');
    await cp(path.join(REPO, 'examples/debian'), project, { recursive: true, filter: (f) => path.basename(f) !== 'build' });
    progress('transfer-compression: building examples/debian up to 05_config (not measured; a few minutes)');
    await build(sb, project, 5, ['--last', '05_config']);
    const local = new LocalStore(sb.store);
    const byName = new Map<string, string>();
    for (const f of await readdir(path.join(sb.store, 'layers'))) {
      const m = /^([0-9a-f]{64})\.json$/.exec(f);
      if (m) byName.set((await local.getManifest(m[1]!))!.name, m[1]!);
    }
    const layers = [{ name: '01_base', key: byName.get('01_base')! }, { name: '05_config', key: byName.get('05_config')! }];
    const modes = [
      { label: 'raw', compression: 'none' },
      { label: `zstd -${DEFAULT_ZSTD_LEVEL}`, compression: `zstd:${DEFAULT_ZSTD_LEVEL}` },
    ] as const;
    const rows: Row[] = [];
    for (const server of ['s3rver', 'radosgw'] as const) {
      checkInterrupted();
      progress(`transfer-compression: starting ${server}`);
      const s = server === 's3rver' ? await startS3Server() : await startCephRgw();
      try {
        for (const layer of layers) {
          const blob = (await local.getManifest(layer.key))!.blob.size;
          const times = new Map<string, { push: number[]; pull: number[]; wire: number }>(modes.map((m) => [m.label, { push: [], pull: [], wire: 0 }]));
          const prefix = `s3://vmlb-bench/tc-${randomBytes(3).toString('hex')}`;
          // The parents once, as they are (not measured).
          const setup = new SharedStore(s3ConfigFrom(prefix, s.env), { compression: 'none' });
          try {
            await setup.ensureBucket();
            const chain: string[] = [];
            for (let p = (await local.getManifest(layer.key))!.parent; p; p = (await local.getManifest(p))!.parent) chain.unshift(p);
            for (const p of chain) await setup.push(local, p);
          } finally {
            setup.close();
          }
          for (let r = 0; r < reps; r++) {
            for (const mode of modes) {
              checkInterrupted();
              progress(`transfer-compression: ${server}, ${layer.name}, ${mode.label} (${r + 1}/${reps})`);
              const store = new SharedStore(s3ConfigFrom(prefix, s.env), { compression: mode.compression });
              const into = await storeWithParents(local, layer.key, path.join(sb.dir, 'into'));
              try {
                let t = performance.now();
                const pushed = await store.push(local, layer.key, { replace: true });
                const push = (performance.now() - t) / 1000;
                if (!pushed.pushed) throw new Error(`${layer.name} was not pushed (${pushed.reason})`);
                t = performance.now();
                await store.pull(into, layer.key);
                const pull = (performance.now() - t) / 1000;
                const x = times.get(mode.label)!;
                x.push.push(push);
                x.pull.push(pull);
                x.wire = pushed.wireBytes;
              } finally {
                store.close();
                await rm(into.root, { recursive: true, force: true });
              }
            }
          }
          const total = (label: string) => median(times.get(label)!.push) + median(times.get(label)!.pull);
          const mib = (b: number) => `${(b / 1048576).toFixed(b < 10 << 20 ? 2 : 0)} MiB`;
          for (const mode of modes) {
            const x = times.get(mode.label)!;
            rows.push({
              benchmark: `transfer-compression (${layer.name}, ${mode.label}, ${server})`,
              what: `SharedStore.push + pull of the Debian example's ${layer.name} layer (${mib(blob)} qcow2) ${mode.label === 'raw' ? 'as it is (VMLB_SHARED_COMPRESSION=none)' : 'as a zstd stream (the default)'}, ${server} on loopback; ${reps === 1 ? 'one run' : `median of ${reps}, interleaved with the other mode`}; sha256 verified on the decompressed bytes`,
              result: `${total(mode.label).toFixed(2)} s (push ${median(x.push).toFixed(2)} s, pull ${median(x.pull).toFixed(2)} s); ${mib(x.wire)} on the wire (${((x.wire / blob) * 100).toFixed(0)}% of the blob)`,
              target: 'compressed faster end to end than raw',
              ratio: mode.label === 'raw' ? '1.00× raw' : `${(total(mode.label) / total('raw')).toFixed(2)}× raw time, ${(x.wire / blob).toFixed(2)}× the bytes`,
            });
          }
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
  { name: 'transfer-compression', title: 'shared-store push + pull of the Debian base layer and a small layer, raw vs zstd, s3rver and radosgw', run: transferCompression },
];
