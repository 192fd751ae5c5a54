/**
 * The fleet end to end, as a user runs it: `npm run fleet` (scripts/fleet.sh: a private
 * redis-server, the scheduler and two real worker processes; S3 is this suite's S3 test server
 * (s3rver, or radosgw with VMLB_TEST_S3=radosgw), given
 * as S3_ENDPOINT like a MinIO), then `vmlb submit` with the two exported variables it prints,
 * `vmlb pull`, and Ctrl-C (SIGINT) stopping all of it.
 *
 * The pulled image must equal (qemu-img compare) what a local `vmlb build --flatten` makes of
 * the same layers, taken from the shared store the fleet filled (two builds of a create-disk
 * never give the same bytes: UUIDs and timestamps differ, so the layers must be the same ones).
 */
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startS3Server, type S3Server } from './helpers/s3-server.js';
import { BUSYBOX_BASE, REPO, leftovers, sandbox, vmlb, writeProject, type Sandbox } from './helpers/vmlb.js';
import { ensureBucket } from './helpers/fleet-api.js';
import { startDevFleet, type DevFleet } from './helpers/dev-fleet.js';

const WORKER_MAIN = path.join(REPO, 'apps/worker/src/main.ts');
const workerMissing = !existsSync(WORKER_MAIN);
if (workerMissing) console.warn(`fleet.test.ts skipped: ${WORKER_MAIN} does not exist yet`);

describe.skipIf(workerMissing)('a fleet on one machine', () => {
  let sb: Sandbox;
  let s3: S3Server;
  let fleet: DevFleet;
  let fleetDir: string;
  let sharedUrl: string;
  const submitEnv = () => fleet.exported;

  beforeAll(async () => {
    sb = await sandbox('fleet');
    s3 = await startS3Server();
    sharedUrl = `s3://vmlb-test/fleet-${Date.now().toString(36)}`;
    await ensureBucket({ ...s3.env, VMLB_SHARED: sharedUrl });
    fleetDir = path.join(sb.dir, 'fleet');
    fleet = await startDevFleet({ env: { ...s3.env, VMLB_SHARED: sharedUrl, VMLB_FLEET_DIR: fleetDir }, workers: 2 });
  });

  afterAll(async () => {
    await fleet?.stop();
    await s3?.close();
    await sb?.cleanup();
  });

  it('vmlb submit builds a busybox project with the local build\'s display; vmlb pull gets the image a local flatten of the same layers makes', async () => {
    const project = await writeProject(path.join(sb.dir, 'hello'), {
      '01_base': BUSYBOX_BASE,
      '02_hello': { kind: 'build-layer', script: 'echo hello from the fleet > /etc/hello; echo wrote hello', files: { 'motd': 'hi\n' } },
      '03_more': { kind: 'build-layer', script: 'cp /mnt/motd /etc/motd; ls /etc' , files: { 'motd': 'more\n' } },
    });
    const run = await vmlb(sb, ['submit', project, '--plain'], submitEnv());
    expect(run.exitCode, `${run.stdout}\n${run.stderr}\n${fleet.errors.slice(-3000)}`).toBe(0);
    expect(run.stdout).toMatch(/^3 layers: 0 cached, 3 to build$/m);
    expect(run.stdout).toMatch(/#1 \[1\/3\] 01_base create-disk building/);
    expect(run.stdout).toMatch(/#1 base ready/);
    expect(run.stdout).toMatch(/#2 wrote hello/);
    expect(run.stdout).toMatch(/#3 DONE/);
    expect(run.stdout).toMatch(/-- on worker dev-worker-\d/);
    expect(run.stdout).toMatch(/^built 3, cached 0 in /m);
    // A build's result is its chain: vmlb submit fetched each layer as it was pushed.
    expect(run.stdout).toContain(`its layers are in ${sb.store}: vmlb pull`);
    const id = /as build (b[0-9a-z]+)/.exec(run.stdout)![1]!;
    // The build on the dashboard `npm run fleet`'s scheduler serves.
    expect(run.stdout).toContain(`on the dashboard: ${fleet.exported.VMLB_SERVER}/#/builds/${id}`);
    const page = await fetch(`${fleet.exported.VMLB_SERVER}/`);
    expect(page.status).toBe(200);
    expect(await page.text()).toMatch(/<script[^>]+src="[^"]*assets\/app-[^"]+\.js"/);

    // The chain is local already: vmlb pull fetches nothing and writes a thin overlay on it.
    const pulled = path.join(sb.dir, 'fleet.qcow2');
    const pull = await vmlb(sb, ['pull', id, '-o', pulled], submitEnv());
    expect(pull.exitCode, pull.stderr).toBe(0);
    expect(pull.stdout).toMatch(/fleet\.qcow2: thin overlay on the local chain, [\d.]+ KiB; fetched 0 of 3 layers \(0 B\) in [\d.]+ s$/);
    // Into an empty store: all three layers, each checked; --flatten makes one standalone file.
    const fresh = path.join(sb.dir, 'fresh-store');
    const flat = path.join(sb.dir, 'fleet-flat.qcow2');
    const pullFresh = await vmlb(sb, ['pull', id, '-o', flat, '--flatten', '--store', fresh], submitEnv());
    expect(pullFresh.exitCode, pullFresh.stderr).toBe(0);
    expect(pullFresh.stdout).toMatch(/fleet-flat\.qcow2: flattened, [\d.]+ MiB; fetched 3 of 3 layers/);
    const info = JSON.parse(String((await execa('qemu-img', ['info', '--output=json', flat])).stdout)) as { 'backing-filename'?: string };
    expect(info['backing-filename']).toBeUndefined();
    // The fleet's own flattened image, made once when first asked for.
    const server = path.join(sb.dir, 'fleet-server.qcow2');
    const pullServer = await vmlb(sb, ['pull', id, '-o', server, '--server-image'], submitEnv());
    expect(pullServer.exitCode, pullServer.stderr).toBe(0);
    expect(pullServer.stderr).toMatch(/is being flattened in the fleet \(once\); waiting/);
    for (const other of [flat, server]) {
      const c = await execa('qemu-img', ['compare', pulled, other], { reject: false });
      expect(c.exitCode, `${c.stdout}${c.stderr}`).toBe(0);
    }

    // The same project locally, its layers from the shared store the fleet filled: all hits, flattened here.
    const local = path.join(sb.dir, 'local.qcow2');
    const lb = await vmlb(sb, ['build', project, '--flatten', '--json', '--cache', sharedUrl, '-o', local], { ...s3.env, VMLB_STORE: path.join(sb.dir, 'local-store') });
    expect(lb.exitCode, lb.stderr).toBe(0);
    expect(lb.events.flatMap((e) => (e.type === 'layer-cached' ? [`${e.name} ${e.source}`] : []))).toEqual(['01_base shared', '02_hello shared', '03_more shared']);
    const cmp = await execa('qemu-img', ['compare', pulled, local], { reject: false });
    expect(cmp.exitCode, `${cmp.stdout}${cmp.stderr}`).toBe(0);
    expect(String(cmp.stdout).trim()).toBe('Images are identical.');

    // Again: every layer a hit, the image there already: done at once.
    const again = await vmlb(sb, ['submit', project, '--plain'], submitEnv());
    expect(again.exitCode, again.stderr).toBe(0);
    expect(again.stdout).toMatch(/built 0, cached 3/);
    const list = await vmlb(sb, ['builds', '--json'], submitEnv());
    expect((JSON.parse(list.stdout) as Array<{ id: string; state: string }>).find((b) => b.id === id)?.state).toBe('done');

    // An edit of the last layer: the pull fetches that one layer, nothing else.
    await writeFile(path.join(project, '03_more', 'motd'), 'edited\n');
    const edit = await vmlb(sb, ['submit', project, '--plain', '--no-pull'], submitEnv());
    expect(edit.exitCode, edit.stderr).toBe(0);
    expect(edit.stdout).toMatch(/built 1, cached 2/);
    const editId = /as build (b[0-9a-z]+)/.exec(edit.stdout)![1]!;
    const pullEdit = await vmlb(sb, ['pull', editId, '-o', path.join(sb.dir, 'edit.qcow2')], submitEnv());
    expect(pullEdit.exitCode, pullEdit.stderr).toBe(0);
    expect(pullEdit.stdout).toMatch(/fetched 1 of 3 layers/);
  });

  it('a failing layer fails the build: vmlb submit shows its log and exits 1', async () => {
    const project = await writeProject(path.join(sb.dir, 'broken'), {
      '01_base': BUSYBOX_BASE,
      '02_broken': { kind: 'build-layer', script: 'echo about to fail; exit 3' },
      '03_never': { kind: 'build-layer', script: 'echo never' },
    });
    const run = await vmlb(sb, ['submit', project, '--plain'], submitEnv());
    expect(run.exitCode, `${run.stdout}\n${run.stderr}`).toBe(1);
    expect(run.stdout).toMatch(/01_base CACHED \(shared/);
    expect(run.stdout).toMatch(/#2 about to fail/);
    expect(run.stdout).toMatch(/#2 ERROR exit 3/);
    expect(run.stdout).not.toMatch(/never/);
    // The cause once, in one line: no repeated words, no worker's local path, no log in it.
    const id = /as build (b[0-9a-z]+)/.exec(run.stdout)![1]!;
    expect(run.stdout.split('\n').at(-1)).toBe('error: layer 02_broken exited with status 3');
    expect(run.stdout).not.toMatch(/failed\.log|last lines of its log/);
    expect(run.stderr).toBe(`vmlb: build ${id} failed: layer 02_broken exited with status 3`);
  });

  it('Ctrl-C stops the whole fleet and leaves nothing behind', async () => {
    fleet.signal('SIGINT');
    await fleet.proc;
    expect(fleet.errors).toMatch(/fleet: SIGINT: stopping the fleet/);
    expect(fleet.errors).toMatch(/fleet: stopped\n/);
    // No process of this fleet is left: none names its folder, none has a store in it.
    const ps = await execa('ps', ['-eo', 'pid,args']);
    expect(String(ps.stdout).split('\n').filter((l) => l.includes(fleetDir))).toEqual([]);
    const strays: string[] = [];
    for (const pid of await readdir('/proc')) {
      if (!/^\d+$/.test(pid)) continue;
      const environ = await readFile(`/proc/${pid}/environ`, 'utf8').catch(() => '');
      if (environ.includes(fleetDir) && Number(pid) !== process.pid) strays.push(pid);
    }
    expect(strays).toEqual([]);
    expect(await leftovers(sb)).toEqual([]);
  });
});
