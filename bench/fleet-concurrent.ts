/**
 * fleet-concurrent: three identical builds at once vs one, and three branches of one project,
 * through two real workers (VMLB_BENCH_TIMELINE=1 prints each build's events, timed from its submit).
 */
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { s3ConfigFrom } from '../libs/layer-engine/src/store/s3-config.js';
import { SharedStore } from '../libs/layer-engine/src/store/shared-store.js';
import type { FleetEvent } from '../libs/fleet/src/build-record.js';
import { readEvents } from '../libs/fleet/src/event-stream.js';
import { layerQueueOf, redisKeys } from '../libs/fleet/src/names.js';
import { poolS3Config } from '../libs/fleet/src/pools.js';
import { submitProject, type SubmittedBuild } from '../test/helpers/fleet-submit.js';
import { startProc, withServices } from './fleet-services.js';
import { REPO, progress, type BenchOptions, type Row } from './harness.js';
import { median, secs } from './numbers.js';
import { busyboxBase, numbered, writeProject, type LayerDef } from './project-files.js';
import { checkInterrupted } from './run-command.js';
import { withSandbox, type Sandbox } from './sandbox.js';

const FLEET_WORKER = path.join(REPO, 'apps/worker/src/main.ts');

function concurrentProject(tag: string): Array<[string, LayerDef]> {
  const names = numbered(['base', 'x', 'y']);
  const base = busyboxBase('64M');
  return [
    [names[0]!, { ...base, script: `${base.script}\n# ${tag}` }],
    [names[1]!, { kind: 'build-layer', script: 'sleep 1; echo x > /etc/x' }],
    [names[2]!, { kind: 'build-layer', script: 'echo y > /etc/y' }],
  ];
}

/** Three identical builds at once vs one, in pool `pool` (its queues, its workers, its namespace). */
export async function fleetConcurrent(o: BenchOptions, pool = 'default'): Promise<Row[]> {
  void o;
  const label = pool === 'default' ? '' : `, pool ${pool}`;
  return withSandbox(`fleet-concurrent-${pool}`, (sb: Sandbox) =>
    withServices({ redis: true, s3: true }, async ({ redis, s3, procs }) => {
      const sharedUrl = `s3://vmlb-bench/fc-${randomBytes(3).toString('hex')}`;
      await new SharedStore(s3ConfigFrom(sharedUrl, s3!.env)).ensureBucket();
      const shared = new SharedStore(poolS3Config(s3ConfigFrom(sharedUrl, s3!.env), pool));
      const connection = new Redis(redis!.url, { maxRetriesPerRequest: null });
      // A build's result is its chain (no flatten job, as `vmlb submit` does by default): done when its last layer job is.
      const layerQueue = new Queue(layerQueueOf(pool), { connection });
      try {
        await shared.ensureBucket();
        for (const name of ['a', 'b']) {
          procs.push(
            startProc([process.execPath, '--import', 'tsx', FLEET_WORKER], {
              ...process.env,
              ...s3!.env,
              REDIS_URL: redis!.url,
              VMLB_SHARED: sharedUrl,
              VMLB_STORE: path.join(sb.dir, `store-${name}`),
              VMLB_RUN_DIR: path.join(sb.dir, `run-${name}`),
              VMLB_WORKER_ID: `bench-${name}`,
              VMLB_WORKER_SLOTS: '2',
              VMLB_WORKER_POOL: pool,
            }),
          );
        }
        const deadline = Date.now() + 60_000;
        while (!((await connection.exists(redisKeys.worker('bench-a'))) && (await connection.exists(redisKeys.worker('bench-b'))))) {
          if (Date.now() > deadline) throw new Error(`the two workers did not register within 60 s:\n${procs.flatMap((p) => p.stderr.slice(-10)).join('\n')}`);
          checkInterrupted();
          await new Promise((r) => setTimeout(r, 100));
        }

        const finished = async (b: SubmittedBuild) => {
          const until = Date.now() + 180_000;
          for (;;) {
            const state = await (await layerQueue.getJob(b.layerJobIds[b.layerJobIds.length - 1]!))?.getState();
            if (state === 'completed') return;
            if (state === 'failed') throw new Error(`build ${b.buildId} failed:\n${procs.flatMap((p) => p.stderr.slice(-10)).join('\n')}`);
            if (Date.now() > until) throw new Error(`build ${b.buildId} did not finish within 180 s`);
            checkInterrupted();
            await new Promise((r) => setTimeout(r, 50));
          }
        };
        const buildings = async (b: SubmittedBuild) =>
          (await readEvents(connection, b.buildId, '0', { count: 100_000 })).map((e) => e.event as FleetEvent).filter((e) => e.type === 'job' && e.status === 'building').length;
        /** `branches`: each copy is its own branch of the project (its last layer differs); else identical copies. */
        type Measured = { s: number; built: number; layers: number };
        const measure = async (tag: string, copies: number, branches = false): Promise<Measured> => {
          const projects = await Promise.all(
            Array.from({ length: branches ? copies : 1 }, async (_, i) => {
              const layers = concurrentProject(tag);
              if (branches) layers[2] = [layers[2]![0], { kind: 'build-layer', script: `echo branch ${i} > /etc/y` }];
              return writeProject(path.join(sb.dir, branches ? `${tag}-${i}` : tag), layers);
            }),
          );
          progress(`fleet-concurrent: ${copies} build(s) of a fresh 3-layer project${branches ? ' (branches)' : ''}`);
          const t0 = performance.now();
          const t0Wall = Date.now();
          const builds = await Promise.all(Array.from({ length: copies }, (_, i) => submitProject(projects[branches ? i : 0]!, { redisUrl: redis!.url, shared, pool, flatten: false })));
          await Promise.all(builds.map(finished));
          const s = (performance.now() - t0) / 1000;
          const built = (await Promise.all(builds.map(buildings))).reduce((a, b) => a + b, 0);
          if (process.env.VMLB_BENCH_TIMELINE) {
            for (const b of builds) {
              for (const e of await readEvents(connection, b.buildId, '0', { count: 100_000 })) {
                const ev = e.event as FleetEvent & { at?: number };
                process.stderr.write(`[timeline] ${tag} ${b.buildId.slice(0, 6)} +${(((ev.at ?? 0) - t0Wall) / 1000).toFixed(3)} ${JSON.stringify(ev).slice(0, 160)}\n`);
              }
            }
          }
          return { s, built, layers: builds[0]!.chain.length };
        };
        // A first build warms the workers up (busybox base, the engine's first run): not measured.
        await measure('warm', 1);
        // In turns, REPS times (fresh projects each time): medians, so that one slow moment of
        // this 2-core machine does not make the ratio.
        const REPS = 3;
        const runs = { one: [] as Measured[], three: [] as Measured[], branched: [] as Measured[] };
        for (let r = 0; r < REPS; r++) {
          runs.one.push(await measure(`one-${r}`, 1));
          runs.three.push(await measure(`three-${r}`, 3));
          runs.branched.push(await measure(`branches-${r}`, 3, true));
        }
        const mid = (xs: Measured[]) => ({ ...xs[0]!, s: median(xs.map((x) => x.s)), built: Math.max(...xs.map((x) => x.built)) });
        const [one, three, branched] = [mid(runs.one), mid(runs.three), mid(runs.branched)];
        const what = (n: number) => `${n === 1 ? 'one build' : `${n} identical builds submitted at once`} of a fresh 3-layer busybox project (layer 2 sleeps 1 s), through 2 real worker processes (2 slots each), project upload to its last layer in the shared store (its chain: no flatten job); layer builds = \`building\` events`;
        return [
          { benchmark: `fleet-concurrent (1 build${label})`, what: `${what(1)}; median of 3, in turns with the two rows below`, result: `${secs(one.s)}, ${one.built} layer builds`, target: `${one.layers} layer builds`, ratio: '1.00×' },
          {
            benchmark: `fleet-concurrent (3 builds${label})`,
            what: what(3),
            result: `${secs(three.s)}, ${three.built} layer builds`,
            target: `${three.layers} layer builds (each layer once); wall ≈ one build`,
            ratio: `${(three.s / one.s).toFixed(2)}× the wall time of one; ${(three.built / three.layers).toFixed(2)}× the layer builds needed`,
          },
          {
            benchmark: `fleet-concurrent (3 branches${label})`,
            what: 'three teams\' branches of one fresh 3-layer project submitted at once (the same two lower layers, each its own last layer), same fleet',
            result: `${secs(branched.s)}, ${branched.built} layer builds`,
            target: `${branched.layers + 2} layer builds (each shared layer once); wall ≤ 1.2× one build`,
            ratio: `${(branched.s / one.s).toFixed(2)}× the wall time of one; ${(branched.built / (branched.layers + 2)).toFixed(2)}× the layer builds needed`,
          },
        ];
      } finally {
        await layerQueue.close();
        connection.disconnect();
        shared.close();
      }
    }),
  );
}
