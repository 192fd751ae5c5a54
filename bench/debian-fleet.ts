/**
 * The Debian example through the one-machine fleet (`npm run fleet`: Redis, s3rver, the
 * scheduler and two workers) against the same builds locally, side by side in one run:
 *
 * - cold: `vmlb build` into an empty store vs `vmlb submit` (which fetches each layer as it is
 *   pushed) + `vmlb pull BUILD -o FILE` into an empty client store, with an empty fleet;
 * - an edit of the last cached layer (05_config): `vmlb build` vs `vmlb submit` + `vmlb pull`
 *   into the client store that has the previous chain;
 * - the bytes that edit moved: pushed by workers, pulled by workers for parent chains
 *   (`pulledBytes` of the build record), and fetched by the client (its store's growth),
 *   against the image's size (the chain's blobs).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { appendFile, cp, readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { progress, REPO, VMLB, type BenchOptions, type Row } from './harness.js';
import { ratio, secs } from './numbers.js';
import { run } from './run-command.js';
import { withSandbox, type Sandbox } from './sandbox.js';
import { build } from './vmlb-run.js';

interface Fleet {
  env: Record<string, string>;
  stop(): Promise<void>;
}

/** `npm run fleet` with its own s3rver and state in `dir`, two workers; resolves once they run. */
async function startFleet(dir: string): Promise<Fleet> {
  const child: ChildProcess = spawn('npm', ['run', '-s', 'fleet'], {
    cwd: REPO,
    env: { ...process.env, VMLB_FLEET_DIR: dir, VMLB_FLEET_WORKERS: '2', VMLB_SERVER: '', VMLB_TOKEN: '', S3_ENDPOINT: '' },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<void>((resolve) => child.on('close', () => resolve()));
  const deadline = Date.now() + 120_000;
  while (!(/export VMLB_TOKEN=\S+\n/.test(out) && (err.match(/"msg":"worker started"/g) ?? []).length >= 2)) {
    if (Date.now() > deadline || child.exitCode !== null) throw new Error(`npm run fleet did not come up:\n${err.slice(-3000)}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  const env: Record<string, string> = {};
  for (const m of out.matchAll(/^export (VMLB_[A-Z0-9_]+)=(\S+)$/gm)) env[m[1]!] = m[2]!;
  return {
    env,
    async stop() {
      try {
        process.kill(-child.pid!, 'SIGINT');
      } catch {
        /* gone */
      }
      const t = setTimeout(() => child.pid && process.kill(-child.pid, 'SIGKILL'), 60_000);
      await exited;
      clearTimeout(t);
    },
  };
}

async function storeBytes(store: string): Promise<number> {
  let n = 0;
  for (const f of await readdir(path.join(store, 'layers')).catch(() => [] as string[])) {
    if (f.endsWith('.qcow2')) n += (await stat(path.join(store, 'layers', f))).size;
  }
  return n;
}

interface FleetRecord {
  id: string;
  state: string;
  layers: Array<{ status: string; bytes?: number; pulledBytes?: number }>;
}

async function submitAndPull(sb: Sandbox, fleet: Fleet, project: string, store: string, out: string): Promise<{ ms: number; submitMs: number; pullMs: number; record: FleetRecord; fetched: number }> {
  const env = { ...process.env, ...sb.env, ...fleet.env, VMLB_STORE: store, CI: '1' };
  const before = await storeBytes(store);
  const submit = await run([process.execPath, VMLB, 'submit', project, '--plain'], { env, label: 'vmlb submit' });
  const id = /as build (b[0-9a-z]+)/.exec(submit.stdout)?.[1];
  if (!id) throw new Error(`vmlb submit printed no build id:\n${submit.stdout.slice(-2000)}`);
  const pull = await run([process.execPath, VMLB, 'pull', id, '-o', out], { env, label: 'vmlb pull' });
  const res = await fetch(`${fleet.env.VMLB_SERVER}/v1/builds/${id}`, { headers: { authorization: `Bearer ${fleet.env.VMLB_TOKEN}` } });
  const record = (await res.json()) as FleetRecord;
  // What each layer took where (VMLB_BENCH_TIMELINE=1): to see where a fleet build's time went.
  if (process.env.VMLB_BENCH_TIMELINE) {
    process.stderr.write(`[timeline] ${id}: submit ${submit.ms} ms, pull ${pull.ms} ms\n${submit.stdout.slice(-4000)}\n`);
    for (const l of record.layers) process.stderr.write(`[timeline] ${JSON.stringify(l).slice(0, 400)}\n`);
  }
  return { ms: submit.ms + pull.ms, submitMs: submit.ms, pullMs: pull.ms, record, fetched: (await storeBytes(store)) - before };
}

const MiB = (n: number) => `${(n / 2 ** 20).toFixed(1)} MiB`;

export async function debianFleet(o: BenchOptions): Promise<Row[]> {
  void o;
  return withSandbox('debian-fleet', async (sb) => {
    const project = path.join(sb.dir, 'debian');
    await cp(path.join(REPO, 'examples/debian'), project, { recursive: true, filter: (s) => path.basename(s) !== 'build' });
    progress('debian-fleet: local cold build, empty store (a few minutes)');
    const localCold = await build(sb, project, 6);
    progress('debian-fleet: starting npm run fleet (two workers, its own s3rver)');
    const fleet = await startFleet(path.join(sb.dir, 'fleet'));
    try {
      const client = path.join(sb.dir, 'client-store');
      progress('debian-fleet: the same cold build through the fleet (submit + pull into an empty store)');
      const fleetCold = await submitAndPull(sb, fleet, project, client, path.join(sb.dir, 'fleet-cold.qcow2'));
      if (fleetCold.record.state !== 'done') throw new Error(`the fleet's cold build ended ${fleetCold.record.state}`);
      // A second local cold build after the fleet's, into another empty store: the machine's
      // load and the mirror's caches change between runs, so the fleet is compared with both.
      progress('debian-fleet: local cold build again, another empty store');
      const second = path.join(sb.dir, 'debian-2');
      await cp(project, second, { recursive: true, filter: (x) => path.basename(x) !== 'build' });
      const localCold2 = await build({ ...sb, env: { ...sb.env, VMLB_STORE: path.join(sb.dir, 'store-2') } }, second, 6);

      progress('debian-fleet: 05_config edited, locally');
      await appendFile(path.join(project, '05_config/files/issue'), 'edit for the fleet bench\n');
      const localEdit = await build(sb, project, 2);
      progress('debian-fleet: the same edit through the fleet (submit + pull into the store with the previous chain)');
      const fleetEdit = await submitAndPull(sb, fleet, project, client, path.join(sb.dir, 'fleet-edit.qcow2'));
      const pushed = fleetEdit.record.layers.filter((l) => l.status === 'done').reduce((n, l) => n + (l.bytes ?? 0), 0);
      const workerPulled = fleetEdit.record.layers.reduce((n, l) => n + (l.pulledBytes ?? 0), 0);
      const image = fleetEdit.record.layers.reduce((n, l) => n + (l.bytes ?? 0), 0);
      const moved = pushed + workerPulled + fleetEdit.fetched;
      const lc = (localCold.ms + localCold2.ms) / 2000;
      const fc = fleetCold.ms / 1000;
      const le = localEdit.ms / 1000;
      const fe = fleetEdit.ms / 1000;
      const title = 'Debian example through the fleet';
      return [
        {
          benchmark: title,
          what: 'cold: `vmlb submit` (fetching each layer as it is pushed) + `vmlb pull -o FILE` into an empty client store, through `npm run fleet` (2 workers, s3rver), vs `vmlb build` into an empty store, once before and once after the fleet\'s (their mean)',
          result: `fleet ${secs(fc)} (submit ${secs(fleetCold.submitMs / 1000)}, pull ${secs(fleetCold.pullMs / 1000)}); local ${secs(localCold.ms / 1000)} and ${secs(localCold2.ms / 1000)}`,
          target: '≤ 1.3× local',
          ratio: `${ratio(fc, lc)} local`,
        },
        {
          benchmark: title,
          what: 'edit of 05_config (the last cached layer): `vmlb submit` + `vmlb pull -o FILE` into the client store that has the previous chain, vs `vmlb build`; one run each',
          result: `fleet ${secs(fe)} (submit ${secs(fleetEdit.submitMs / 1000)}, pull ${secs(fleetEdit.pullMs / 1000)}); local ${secs(le)}`,
          target: '≤ 3× local and under 5 s',
          ratio: `${ratio(fe, le)} local`,
        },
        {
          benchmark: title,
          what: 'bytes that edit moved: pushed by workers + pulled by workers for parent chains (`pulledBytes`) + fetched by the client, vs the image (the chain\'s blobs)',
          result: `${MiB(moved)} (pushed ${MiB(pushed)}, workers pulled ${MiB(workerPulled)}, client fetched ${MiB(fleetEdit.fetched)}) of ${MiB(image)}`,
          target: 'under 5 % of the image',
          ratio: `${((100 * moved) / Math.max(1, image)).toFixed(1)} % of the image`,
        },
      ];
    } finally {
      await fleet.stop();
    }
  });
}
