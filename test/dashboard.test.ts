/**
 * The web dashboard in a real browser (Debian's Chromium, headless, driven by playwright-core)
 * over the real fleet: a private redis-server and S3 test server (s3rver, or radosgw with
 * VMLB_TEST_S3=radosgw), the scheduler serving the dashboard,
 * a real worker process building real layers, and the standalone `vmlb-dashboard` server
 * proxying the API. Builds are submitted through the API while the browser watches:
 *
 *   the token form → the builds list, live → a build's time line and logs, live → a second,
 *   all-hit build moves the cache hit rate → the fleet → what each team (and the admin) sees →
 *   pools: a team of pool a (which trusts pool platform) builds on its pool's worker with a
 *   hit shared from platform, the pool column and filter, the fleet page's section per pool
 *   with its queue counts (a pool whose jobs wait with no worker) → a bad token → one build
 *   followed through the proxy, with its event stream → a build cancelled from its page while
 *   a layer runs.
 *
 * Tests run in order and share the builds. A screenshot of each page goes to
 * test-results/dashboard/.
 */
import { execa, type ResultPromise } from 'execa';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import type { Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { ensureDashboardBundle, launchDashboardBrowser, signIn, type DashboardBrowser } from './helpers/dashboard-browser.js';
import { TOKENS, apiFor, startScheduler, tarGz, waitFor, type RunningScheduler, type TarEntry } from './helpers/fleet-api.js';
import { sha256Hex, Teams } from '../apps/scheduler/src/index.js';
import { redisConnection, redisKeys } from '../libs/fleet/src/index.js';
import { freePort, type RedisServer } from './helpers/redis-server.js';
import type { S3Server } from './helpers/s3-server.js';
import { BUSYBOX_BASE, REPO, vmlb, type Sandbox } from './helpers/vmlb.js';
import { startFleetServices, type FleetServices } from './helpers/fleet-services.js';
import { startWorkerProcess, workerLogs, type WorkerProcess } from './helpers/worker-process.js';

const DASHBOARD_MAIN = path.join(REPO, 'apps/web-dashboard/src/main.ts');
/** Generous: two cores shared with other test runs. Never a claim about speed. */
const SLOW = 120_000;

let services: FleetServices;
let sb: Sandbox;
let redis: RedisServer;
let s3: S3Server;
let sched: RunningScheduler;
let worker: WorkerProcess;
/** One worker per pool besides pool default's `worker`. */
const poolWorkers = new Map<string, WorkerProcess>();
let standalone: ResultPromise | undefined;
let standaloneUrl = '';
let standaloneLog = '';
let ui: DashboardBrowser;
/** Where the scheduler serves the dashboard (the same origin as its API). */
let appUrl = '';

const api = apiFor(() => sched.url, TOKENS.web);

/**
 * The fleet-api teams (web, data, ops: pool default) and two pools (test/pools.test.ts): team
 * app in pool a, which trusts pool platform for reading, and team base in pool platform.
 */
const POOL_TOKENS = { app: 'tok-dash-app-0123456789', base: 'tok-dash-base-0123456789' } as const;
const TEAMS = {
  teams: [
    { team: 'web', tokenSha256: sha256Hex(TOKENS.web) },
    { team: 'data', tokenSha256: sha256Hex(TOKENS.data) },
    { team: 'ops', tokenSha256: sha256Hex(TOKENS.ops), admin: true },
    { team: 'app', tokenSha256: sha256Hex(POOL_TOKENS.app), pool: 'a' },
    { team: 'base', tokenSha256: sha256Hex(POOL_TOKENS.base), pool: 'platform' },
  ],
  pools: { a: { reads: ['platform'] } },
};
const startPoolWorker = (pool: string) => {
  const w = startWorkerProcess({ name: `dash-${pool}`, dir: sb.dir, redisUrl: redis.url, sharedUrl: services.sharedUrl, s3env: s3.env, shortLocks: false, env: { VMLB_WORKER_POOL: pool } });
  poolWorkers.set(pool, w);
  return w;
};

/** A busybox base, then build-layers that print and sleep, so "building" lasts long enough to see. */
function project(tag: string, lastLayer = 'echo "world from the dashboard test"; sleep 4; echo "03 finished"'): Promise<Buffer> {
  const entries: TarEntry[] = [
    { name: '01_base/create-disk', content: `#!/bin/sh\n${BUSYBOX_BASE.script}\n` },
    { name: '02_hello/build-layer', content: `#!/bin/sh\necho "hello from the dashboard test (${tag})"\nsleep 2\necho "02 finished"\n` },
    { name: '03_world/build-layer', content: `#!/bin/sh\n${lastLayer}\n` },
  ];
  return tarGz(entries);
}

/** `flatten`: the build makes its image too (`vmlb submit --flatten`); without, its result is its chain. */
async function submit(body: Buffer, token: string, o: { flatten?: boolean } = {}): Promise<string> {
  const r = await api.json<{ id: string; state: string }>(`POST`, `/v1/builds${o.flatten ? '?flatten=1' : ''}`, { body, token });
  expect(r.status, JSON.stringify(r.body)).toBe(201);
  return r.body.id;
}

async function buildState(id: string): Promise<string> {
  return (await api.json<{ state: string }>('GET', `/v1/builds/${id}`, { token: TOKENS.ops })).body.state;
}

/** Marks the document; a reload (or a navigation that loads the page again) loses the mark. */
const markDocument = (page: Page) => page.evaluate('window.__vmlbMark = 42');
const stillSameDocument = (page: Page) => page.evaluate('window.__vmlbMark === 42');
const hashIs = (page: Page, hash: string) => page.waitForFunction(`location.hash === ${JSON.stringify(hash)}`);

const row = (page: Page, build: string) => page.locator(`tr[data-build="${build}"]`);
const layerRow = (page: Page, index: number) => page.locator(`.timeline [data-layer="${index}"]`);

beforeAll(async () => {
  await ensureDashboardBundle();

  services = await startFleetServices('dashboard');
  ({ sb, redis, s3 } = services);
  const { sharedUrl, env } = services;
  const workDir = path.join(sb.dir, 'scheduler-work');
  await mkdir(workDir, { recursive: true });
  sched = await startScheduler(env, { workDir, teams: Teams.parse(JSON.stringify(TEAMS), 'dashboard test teams') });
  appUrl = sched.url;

  // Production job locks: nothing is killed here, and a loaded machine must not make a job look stalled.
  worker = startWorkerProcess({ name: 'dash', dir: sb.dir, redisUrl: redis.url, sharedUrl, s3env: s3.env, shortLocks: false });
  for (const pool of ['a', 'platform']) startPoolWorker(pool);

  const port = await freePort();
  standalone = execa(process.execPath, ['--import', 'tsx', DASHBOARD_MAIN], {
    cwd: REPO,
    env: { VMLB_SERVER: sched.url, VMLB_DASHBOARD_HOST: '127.0.0.1', VMLB_DASHBOARD_PORT: String(port) },
    reject: false,
    stdin: 'ignore',
    buffer: false,
  });
  standalone.stderr!.on('data', (b: Buffer) => (standaloneLog += b.toString()));
  standalone.stdout!.resume();
  standaloneUrl = `http://127.0.0.1:${port}`;

  ui = await launchDashboardBrowser();
  await waitFor('vmlb-dashboard to listen', async () => /"dashboard listening"/.test(standaloneLog) || standalone!.exitCode !== null, 60_000, 100);
  expect(standaloneLog).toMatch(/"dashboard listening"/);
  await waitFor('the workers to register', async () => {
    const f = await api.json<{ workers: Array<{ id: string }> }>('GET', '/v1/fleet', { token: TOKENS.ops });
    return [worker, ...poolWorkers.values()].every((x) => f.body?.workers?.some((w) => w.id === x.id));
  }, 60_000, 200);
});

afterEach((ctx) => {
  if (ctx.task.result?.state === 'fail') {
    console.error(`scheduler log:\n${sched?.log.lines.slice(-30).join('\n')}\n${worker ? workerLogs([worker, ...poolWorkers.values()]) : ''}\nvmlb-dashboard:\n${standaloneLog.slice(-2000)}`);
  }
});

afterAll(async () => {
  await ui?.close().catch(() => undefined);
  if (standalone && standalone.exitCode === null) {
    standalone.kill('SIGTERM');
    await standalone;
  }
  await worker?.stop();
  for (const w of poolWorkers.values()) await w.stop();
  await sched?.close();
  await services?.close();
});

describe('the web dashboard, in Chromium, over a real fleet', () => {
  let webPage: Page;
  let buildPage: Page;
  let first = '';
  let again = '';
  let dataBuild = '';

  it('serves the app: index.html never cached, hashed assets for a year', async () => {
    const res = await fetch(`${appUrl}/`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/html/);
    expect(res.headers.get('cache-control')).toBe('no-cache');
    expect(res.headers.get('content-security-policy')).toContain("script-src 'self'");
    const html = await res.text();
    const js = /src="(\/assets\/app-[A-Z0-9]+\.js)"/.exec(html)?.[1];
    expect(js, html).toBeTruthy();
    const asset = await fetch(`${appUrl}${js}`);
    expect(asset.status).toBe(200);
    expect(asset.headers.get('cache-control')).toMatch(/immutable/);
    // The API beside it still wants its token.
    expect((await fetch(`${appUrl}/v1/builds`)).status).toBe(401);
  });

  it('asks for a token, then lists the team\'s build as it starts', async () => {
    first = await submit(await project('first'), TOKENS.web, { flatten: true });
    ({ page: webPage } = await ui.newPage());
    await webPage.goto(appUrl);
    await webPage.locator('[data-testid=token-form]').waitFor();
    await ui.screenshot(webPage, '01-sign-in');
    await webPage.locator('#token').fill(TOKENS.web);
    await webPage.getByRole('button', { name: 'Sign in' }).click();
    await webPage.locator('[data-testid=whoami]', { hasText: 'web' }).waitFor();
    await markDocument(webPage);

    await row(webPage, first).waitFor();
    const state = await row(webPage, first).getAttribute('data-state');
    // Not done yet: the worker has three layers to build.
    expect(['queued', 'building']).toContain(state);
    await expect(row(webPage, first).locator('.badge').textContent()).resolves.toBe(state);
    await expect(row(webPage, first).textContent()).resolves.toContain('3 layers');
    await expect(row(webPage, first).locator('.pool-cell').textContent()).resolves.toBe('default');
    await expect(webPage.locator('[data-testid=whoami-pool]').textContent()).resolves.toMatch(/pool\s*default/);
    await ui.screenshot(webPage, '02-builds-running');
  });

  it('shows the build\'s layers on a time line, one becoming building then done, with its worker, seconds, bytes and log', async () => {
    // A second tab of the same browser (signed in already: the token is kept), while the
    // first one stays on the list.
    buildPage = await webPage.context().newPage();
    await buildPage.goto(`${appUrl}/#/builds/${first}`);
    await buildPage.locator('[data-testid=timeline]').waitFor();
    await expect(buildPage.locator('.timeline [data-layer]:not([data-layer=flatten])').count()).resolves.toBe(3);
    await expect(buildPage.locator('.timeline .tl-layer-name').allTextContents()).resolves.toEqual(['01_base', '02_hello', '03_world']);

    // The last layer: queued while the others build, then building on the worker, then done.
    await layerRow(buildPage, 2).and(buildPage.locator('[data-status=building]')).waitFor({ timeout: SLOW });
    await expect(layerRow(buildPage, 2).locator('.tl-worker').textContent()).resolves.toBe(worker.id);
    await expect(layerRow(buildPage, 2).locator('.tl-seg.seg-building').count()).resolves.toBe(1);
    // The log panel follows the layer that builds, from the event stream.
    await buildPage.locator('[data-testid=log][data-layer="2"]', { hasText: 'world from the dashboard test' }).waitFor({ timeout: SLOW });
    await ui.screenshot(buildPage, '03-build-building');

    await layerRow(buildPage, 2).and(buildPage.locator('[data-status=done]')).waitFor({ timeout: SLOW });
    for (const i of [0, 1, 2]) {
      const r = layerRow(buildPage, i);
      await expect(r.getAttribute('data-status')).resolves.toBe('done');
      await expect(r.locator('.tl-worker').textContent()).resolves.toBe(worker.id);
      await expect(r.locator('.tl-seconds').textContent()).resolves.toMatch(/^\d+(\.\d+)?s$|^\d+m\d\ds$/);
      // The layer's bytes, and what its worker pulled for its parent chain.
      await expect(r.locator('.tl-bytes').textContent()).resolves.toMatch(/^\d+(\.\d+)? (B|KiB|MiB)(pulled \d+(\.\d+)? (B|KiB|MiB))?$/);
      await expect(r.locator('.tl-seg.seg-done').count()).resolves.toBe(1);
    }
    // Another layer's log, picked by hand: its echo output.
    await buildPage.getByRole('tab', { name: '02_hello' }).click();
    await buildPage.locator('[data-testid=log][data-layer="1"]', { hasText: 'hello from the dashboard test (first)' }).waitFor();
    await expect(buildPage.locator('[data-testid=log]').textContent()).resolves.toContain('02 finished');

    await buildPage.locator(`[data-build="${first}"][data-state=done]`).waitFor({ timeout: SLOW });
    await expect(buildPage.locator('[data-testid=build-layers]').textContent()).resolves.toBe('3 · 0 cached · 3 built');
    await expect(buildPage.locator('[data-testid=build-image]').textContent()).resolves.toMatch(/\d (KiB|MiB)vmlb pull b/);
    await ui.screenshot(buildPage, '04-build-done');
  });

  it('the list moved the build to done by itself: no reload', async () => {
    await row(webPage, first).and(webPage.locator('[data-state=done]')).waitFor({ timeout: SLOW });
    await expect(row(webPage, first).locator('.badge').textContent()).resolves.toBe('done');
    await expect(row(webPage, first).textContent()).resolves.toContain('0 cached · 3 built');
    expect(await stillSameDocument(webPage)).toBe(true);
    await ui.screenshot(webPage, '05-builds-done');
  });

  it('the same project again is all hits, and the hit rate on the cache page moves from 0% to 50% live', async () => {
    await webPage.goto(`${appUrl}/#/cache`);
    await markDocument(webPage);
    const rate = webPage.locator('[data-testid=stat-hit-rate] .stat-value');
    await rate.filter({ hasText: /^0\.0%$/ }).waitFor({ timeout: SLOW });
    await expect(webPage.locator('[data-testid=stat-lookups] .stat-value').textContent()).resolves.toBe('3');
    await webPage.locator('[data-testid=hit-rate-chart] canvas').first().waitFor();
    // A fleet minutes old: the window fits it (15 minutes since its first build), not a sliver of 6 hours.
    await expect(webPage.locator('[data-testid=range]').getAttribute('data-hours')).resolves.toBe('0.25');
    await expect(webPage.locator('[data-testid=range] a.on').textContent()).resolves.toBe('Fit');
    await expect(webPage.locator('[data-testid=stat-hit-rate] .stat-label').textContent()).resolves.toBe('Hit rate · last 15 min');
    // The legend names a bucket by its time: the latest one at rest, the one under the cursor on hover.
    const bucketTime = webPage.locator('[data-testid=hit-rate-chart] .u-legend .u-series').first().locator('.u-value');
    await expect(bucketTime.textContent()).resolves.toMatch(/^\S+ \d+ \d\d:\d\d–\d\d:\d\d$|^\d+ \S+ \d\d:\d\d–\d\d:\d\d$/);
    const over = webPage.locator('[data-testid=hit-rate-chart] .u-over');
    const box = (await over.boundingBox())!;
    await webPage.mouse.move(box.x + box.width * 0.3, box.y + box.height / 2);
    await expect(bucketTime.textContent()).resolves.toMatch(/\d\d:\d\d–\d\d:\d\d$/);
    await expect(bucketTime.textContent()).resolves.not.toBe('—');
    await webPage.mouse.move(0, 0);

    again = await submit(await project('first'), TOKENS.web);
    await rate.filter({ hasText: /^50\.0%$/ }).waitFor({ timeout: SLOW });
    await expect(webPage.locator('[data-testid=stat-hits] .stat-value').textContent()).resolves.toBe('3');
    await expect(webPage.locator('[data-testid=teams-table] tr[data-team=web] .rate').textContent()).resolves.toBe('50.0%');
    expect(await stillSameDocument(webPage)).toBe(true);
    await ui.screenshot(webPage, '06-cache');

    // That build: every layer cached, shown at the start of the time line; a hit's log is the
    // one from when the layer was built.
    await buildPage.goto(`${appUrl}/#/builds/${again}`);
    await buildPage.locator(`[data-build="${again}"][data-state=done]`).waitFor({ timeout: SLOW });
    await expect(buildPage.locator('.timeline .tl-row[data-status=hit]').count()).resolves.toBe(3);
    await expect(buildPage.locator('.timeline .tl-hit').count()).resolves.toBe(3);
    await expect(buildPage.locator('[data-testid=build-layers]').textContent()).resolves.toBe('3 · 3 cached · 0 built');
    await buildPage.getByRole('tab', { name: '02_hello' }).click();
    await buildPage.locator('[data-testid=log][data-layer="1"]', { hasText: 'hello from the dashboard test (first)' }).waitFor();
    await ui.screenshot(buildPage, '07-build-all-hits');
  });

  it('the fleet page shows the worker, its slots, its heartbeat and the queue depth', async () => {
    await webPage.goto(`${appUrl}/#/fleet`);
    const w = webPage.locator(`tr[data-worker="${worker.id}"]`);
    await w.waitFor();
    await expect(w.getAttribute('data-live')).resolves.toBe('true');
    await expect(w.textContent()).resolves.toMatch(/0 \/ 2 busy/);
    await expect(w.textContent()).resolves.toMatch(/fuse/);
    await expect(w.textContent()).resolves.toMatch(/\d+ s ago/);
    await expect(webPage.locator('[data-testid=stat-queued] .stat-value').textContent()).resolves.toBe('0');
    await expect(webPage.locator('[data-testid=stat-slots] .stat-value').textContent()).resolves.toBe('0 / 2');
    // BullMQ's counts, as the API gives them (all builds are over: they no longer change).
    const fleet = (await api.json<{ queues: Record<'layers' | 'flatten', Record<string, number>> }>('GET', '/v1/fleet')).body;
    expect(fleet.queues.layers.completed).toBeGreaterThan(0);
    for (const q of ['layers', 'flatten'] as const) {
      for (const state of ['waiting', 'active', 'completed', 'failed']) {
        await expect(webPage.locator(`[data-queue=${q}] [data-state=${state}]`).textContent()).resolves.toBe(String(fleet.queues[q][state] ?? 0));
      }
    }
    await ui.screenshot(webPage, '08-fleet');
  });

  it('a team sees only its own builds; the admin sees every team\'s and filters by team and state', async () => {
    dataBuild = await submit(await project('first'), TOKENS.data);
    await waitFor('the data team\'s build to finish', async () => (await buildState(dataBuild)) === 'done', SLOW, 200);

    await webPage.goto(`${appUrl}/#/builds`);
    await row(webPage, again).waitFor();
    await expect(row(webPage, dataBuild).count()).resolves.toBe(0);
    await expect(webPage.locator('tr[data-build]').count()).resolves.toBe(2);
    // Another team's build, asked for by id: as if it did not exist.
    await webPage.goto(`${appUrl}/#/builds/${dataBuild}`);
    await webPage.getByRole('alert').filter({ hasText: `there is no build ${dataBuild}` }).waitFor();
    // Another team's list: refused, with the server's reason.
    await webPage.goto(`${appUrl}/#/builds?team=data`);
    await webPage.getByRole('alert').filter({ hasText: 'only an admin token' }).waitFor();

    const { page: admin } = await ui.newPage();
    await signIn(admin, appUrl, TOKENS.ops, 'ops');
    await expect(admin.locator('[data-testid=whoami]').textContent()).resolves.toMatch(/ops\s*admin/);
    for (const id of [first, again, dataBuild]) await row(admin, id).waitFor();
    await admin.locator('[data-testid=team-filter]').selectOption('data');
    await hashIs(admin, '#/builds?team=data');
    await row(admin, dataBuild).waitFor();
    await row(admin, first).waitFor({ state: 'detached' });
    await expect(admin.locator('tr[data-build]').count()).resolves.toBe(1);
    await expect(row(admin, dataBuild).textContent()).resolves.toContain('data');
    await admin.locator('[data-testid=team-filter]').selectOption('web');
    await row(admin, first).waitFor();
    await expect(admin.locator('tr[data-build]').count()).resolves.toBe(2);
    await admin.locator('[data-testid=state-filter] a', { hasText: 'Failed' }).click();
    await admin.locator('.empty', { hasText: 'No builds in state failed for team web' }).waitFor();
    await admin.locator('[data-testid=state-filter] a', { hasText: 'Done' }).click();
    await hashIs(admin, '#/builds?team=web&state=done');
    await row(admin, first).waitFor();
    await expect(admin.locator('tr[data-build]').count()).resolves.toBe(2);
    await admin.locator('[data-testid=team-filter]').selectOption('');
    await row(admin, dataBuild).waitFor();
    await expect(admin.locator('tr[data-build]').count()).resolves.toBe(3);
    await ui.screenshot(admin, '09-admin-builds');
    // The admin's cache page: every team.
    await admin.goto(`${appUrl}/#/cache`);
    await admin.locator('[data-testid=teams-table] tr[data-team=data] .rate', { hasText: '100.0%' }).waitFor({ timeout: SLOW });
    await expect(admin.locator('[data-testid=stat-hit-rate] .stat-value').textContent()).resolves.toBe('66.7%');
  });

  let appBuild = '';

  it('pools: team app (pool a, trusting platform) builds on pool a\'s worker with its base shared from platform; its list and build page show the pool and `shared: platform`', async () => {
    const base: TarEntry = { name: '01_base/create-disk', content: `#!/bin/sh\n${BUSYBOX_BASE.script}\n` };
    const baseBuild = await submit(await tarGz([base]), POOL_TOKENS.base);
    await waitFor('the platform team\'s base to build', async () => (await buildState(baseBuild)) === 'done', SLOW, 200);
    appBuild = await submit(await project('pool a'), POOL_TOKENS.app);

    const { page } = await ui.newPage();
    await signIn(page, appUrl, POOL_TOKENS.app, 'app');
    await expect(page.locator('[data-testid=whoami-pool]').textContent()).resolves.toMatch(/pool\s*a$/);
    // A team's own pool is the only one it sees: no menu, its name.
    await expect(page.locator('[data-testid=pool-filter]').textContent()).resolves.toBe('Poola');
    await expect(page.locator('[data-testid=pool-filter] select').count()).resolves.toBe(0);
    await row(page, appBuild).waitFor();
    await expect(page.locator('tr[data-build]').count()).resolves.toBe(1);
    await expect(row(page, appBuild).locator('.pool-cell').textContent()).resolves.toBe('a');
    await expect(page.locator('.builds-table th').allTextContents()).resolves.toEqual(['Build', 'Team', 'Pool', 'State', 'Layers', 'Created', 'Duration']);

    await page.goto(`${appUrl}/#/builds/${appBuild}`);
    await page.locator(`[data-build="${appBuild}"][data-state=done]`).waitFor({ timeout: SLOW });
    await expect(page.locator('[data-testid=build-pool]').textContent()).resolves.toBe('ahits shared from platform');
    // The base: a hit found in the trusted pool, said so; the other two built by pool a's own worker.
    await expect(layerRow(page, 0).getAttribute('data-status')).resolves.toBe('hit');
    await expect(layerRow(page, 0).locator('.tl-worker').textContent()).resolves.toBe('shared: platform');
    await expect(layerRow(page, 0).locator('.tl-shared').getAttribute('data-pool')).resolves.toBe('platform');
    await expect(layerRow(page, 0).getAttribute('title')).resolves.toMatch(/cached \(shared: platform\)/);
    for (const i of [1, 2]) await expect(layerRow(page, i).locator('.tl-worker').textContent()).resolves.toBe(poolWorkers.get('a')!.id);
    // Pool a's worker pulled the platform base for layer 1 and had it for layer 2: the page says how much, per layer.
    await expect(layerRow(page, 1).locator('[data-testid=layer-pulled]').textContent()).resolves.toMatch(/^pulled [\d.]+ MiB$/);
    await expect(layerRow(page, 2).locator('[data-testid=layer-pulled]').textContent()).resolves.toBe('pulled 0 B');
    await expect(page.locator('[data-testid=build-layers]').textContent()).resolves.toBe('3 · 1 cached · 2 built');
    await ui.screenshot(page, '14-pool-build-shared');

    // vmlb builds says the same: a POOL column, and `pool` in --json; an admin lists one pool with --pool.
    const cli = (args: string[], token: string) => vmlb(sb, ['builds', ...args], { VMLB_SERVER: sched.url, VMLB_TOKEN: token });
    const mine = await cli([], POOL_TOKENS.app);
    expect(mine.exitCode, mine.stderr).toBe(0);
    expect(mine.stdout).toMatch(/^BUILD\s+TEAM\s+POOL\s+PROJECT\s+SUBMITTER\s+STATE\s+LAYERS\s+CREATED\s+TOOK\n/);
    expect(mine.stdout).toMatch(new RegExp(`^${appBuild}\\s+app\\s+a\\s+\\S+\\s+\\S+\\s+done\\s+3 \\(1 cached, 2 built\\)`, 'm'));
    expect(JSON.parse((await cli(['--json'], POOL_TOKENS.app)).stdout)).toEqual([expect.objectContaining({ id: appBuild, team: 'app', pool: 'a' })]);
    const platform = JSON.parse((await cli(['--json', '--pool', 'platform'], TOKENS.ops)).stdout) as Array<{ team: string; pool: string }>;
    expect(platform.map((b) => [b.team, b.pool])).toEqual([['base', 'platform']]);

    // A build of pool default's own (all its layers found in its own namespace) says no such thing.
    const { page: web } = await ui.newPage();
    await signIn(web, appUrl, TOKENS.web, 'web');
    await web.goto(`${appUrl}/#/builds/${again}`);
    await web.locator(`[data-build="${again}"][data-state=done]`).waitFor({ timeout: SLOW });
    await expect(web.locator('[data-testid=build-pool]').textContent()).resolves.toBe('default');
    await expect(web.locator('.timeline .tl-shared').count()).resolves.toBe(0);
    await expect(layerRow(web, 0).locator('.tl-worker').textContent()).resolves.toBe('shared store');
  });

  it('the admin\'s builds list: a pool column, and a pool filter (with the team and state filters)', async () => {
    const { page: admin } = await ui.newPage();
    await signIn(admin, appUrl, TOKENS.ops, 'ops');
    await row(admin, appBuild).waitFor();
    await expect(row(admin, appBuild).locator('.pool-cell').textContent()).resolves.toBe('a');
    await expect(row(admin, first).locator('.pool-cell').textContent()).resolves.toBe('default');
    const pools = admin.locator('[data-testid=pool-filter]');
    await expect(pools.locator('option').allTextContents()).resolves.toEqual(['All pools', 'a', 'default', 'platform']);
    const all = await admin.locator('tr[data-build]').count();

    await pools.selectOption('a');
    await hashIs(admin, '#/builds?pool=a');
    await row(admin, first).waitFor({ state: 'detached' });
    // The filtered list replaces the rows once its answer is in.
    await row(admin, appBuild).waitFor();
    await expect(admin.locator('tr[data-build]').count()).resolves.toBe(1);
    await expect(row(admin, appBuild).count()).resolves.toBe(1);
    await expect(admin.locator('.page-sub').textContent()).resolves.toMatch(/every team · pool a · 1 build/);

    await pools.selectOption('platform');
    await hashIs(admin, '#/builds?pool=platform');
    await row(admin, appBuild).waitFor({ state: 'detached' });
    await expect.poll(() => admin.locator('tr[data-build] .pool-cell').allTextContents()).toEqual(['platform']);

    // With a team: pool default and team data is data's one build; pool a and team data is none.
    await pools.selectOption('default');
    await admin.locator('[data-testid=team-filter]').selectOption('data');
    await hashIs(admin, '#/builds?team=data&pool=default');
    await row(admin, dataBuild).waitFor();
    await expect(admin.locator('tr[data-build]').count()).resolves.toBe(1);
    await pools.selectOption('a');
    await admin.locator('.empty', { hasText: 'No builds for team data in pool a' }).waitFor();
    await admin.locator('[data-testid=state-filter] a', { hasText: 'Done' }).click();
    await hashIs(admin, '#/builds?team=data&pool=a&state=done');
    await admin.locator('[data-testid=team-filter]').selectOption('');
    await row(admin, appBuild).waitFor();
    await expect(admin.locator('tr[data-build]').count()).resolves.toBe(1);
    await ui.screenshot(admin, '15-admin-builds-pool-a');
    await pools.selectOption('');
    await admin.locator('[data-testid=state-filter] a', { hasText: 'All' }).click();
    await hashIs(admin, '#/builds');
    await expect.poll(() => admin.locator('tr[data-build]').count()).toBe(all);

    // The API behind it.
    const ops = apiFor(() => sched.url, TOKENS.ops);
    const inA = (await ops.json<{ builds: Array<{ id: string; pool: string }> }>('GET', '/v1/builds?pool=a')).body.builds;
    expect(inA.map((b) => [b.id, b.pool])).toEqual([[appBuild, 'a']]);
    expect((await ops.json('GET', '/v1/builds?pool=no%20such')).status).toBe(400);
    expect((await api.json<{ builds: unknown[] }>('GET', '/v1/builds?pool=a')).body.builds).toEqual([]);
  });

  it('the fleet page groups the workers by pool, a section each with its queue counts; a pool whose jobs wait with no worker says so', async () => {
    const ops = apiFor(() => sched.url, TOKENS.ops);
    type PoolCounts = { pool: string; layers: Record<string, number>; flatten: Record<string, number>; queued: number };
    const { page: admin } = await ui.newPage();
    await signIn(admin, appUrl, TOKENS.ops, 'ops');
    await admin.goto(`${appUrl}/#/fleet`);
    const section = (pool: string) => admin.locator(`[data-testid=pool-section][data-pool="${pool}"]`);
    await section('platform').waitFor();
    await expect(admin.locator('[data-testid=pool-section]').evaluateAll((els) => els.map((e) => e.getAttribute('data-pool')))).resolves.toEqual(['a', 'default', 'platform']);
    // Each pool's worker in its own section, and only there.
    for (const [pool, w] of [['a', poolWorkers.get('a')!], ['default', worker], ['platform', poolWorkers.get('platform')!]] as const) {
      await expect(section(pool).locator('tr[data-worker]').evaluateAll((els) => els.map((e) => e.getAttribute('data-worker')))).resolves.toEqual([w.id]);
    }
    // Each section's queue counts are its pool's, as the API's `pools` gives them (all builds are over: they no longer change).
    const fleet = (await ops.json<{ pools: PoolCounts[] }>('GET', '/v1/fleet')).body;
    expect(fleet.pools.find((p) => p.pool === 'a')!.layers.completed).toBe(2);
    for (const p of fleet.pools) {
      for (const q of ['layers', 'flatten'] as const) {
        for (const state of ['waiting', 'active', 'completed', 'failed']) {
          await expect(section(p.pool).locator(`[data-queue=${q}] [data-state=${state}]`).textContent()).resolves.toBe(String(p[q][state] ?? 0));
        }
      }
      await expect(section(p.pool).locator('[data-testid=pool-queued]').textContent()).resolves.toBe(`${p.queued} queued`);
    }
    await expect(section('a').locator('[data-testid=pool-summary]').textContent()).resolves.toMatch(/1 live worker · 0 \/ 2 busy · 0 queued/);
    await ui.screenshot(admin, '16-fleet-by-pool');

    // Team app sees its own pool alone.
    const { page: app } = await ui.newPage();
    await signIn(app, appUrl, POOL_TOKENS.app, 'app');
    await app.goto(`${appUrl}/#/fleet`);
    await app.locator('[data-testid=pool-section][data-pool=a]').waitFor();
    await expect(app.locator('[data-testid=pool-section]').count()).resolves.toBe(1);
    await expect(app.locator('tr[data-worker]').evaluateAll((els) => els.map((e) => e.getAttribute('data-worker')))).resolves.toEqual([poolWorkers.get('a')!.id]);

    // Pool a without its worker: it stopped cleanly, so it is listed as stopped (it does not
    // vanish, nor count as not answering); a new build's job waits in pool a's queue (pool
    // default's idle worker never takes it), the section says so live, and the build says that
    // no worker of its pool is live, in the list and on its page, until one registers again.
    const aWorker = poolWorkers.get('a')!.id;
    expect((await poolWorkers.get('a')!.stop()).exitCode).toBe(0);
    poolWorkers.delete('a');
    const stoppedRow = section('a').locator(`tr[data-worker="${aWorker}"]`);
    await stoppedRow.and(admin.locator('[data-status=stopped]')).waitFor({ timeout: SLOW });
    await expect(stoppedRow.locator('.badge').textContent()).resolves.toBe('stopped');
    await expect(stoppedRow.locator('[data-testid=worker-slots]').textContent()).resolves.toBe('2 slots · stopped');
    await expect(stoppedRow.textContent()).resolves.toMatch(/stopped \d+ s ago/);
    await expect(admin.locator('[data-testid=fleet-summary]').textContent()).resolves.toBe('2 live workers · 1 stopped · 3 pools');
    await expect(admin.locator('[data-testid=stat-workers] .stat-value').textContent()).resolves.toBe('2');
    await expect(admin.locator('[data-testid=stat-workers] .stat-sub').textContent()).resolves.toBe('1 stopped');
    const waiting = await submit(await project('pool a, no worker', 'echo "built once a worker came"'), POOL_TOKENS.app);
    onTestFinished(async () => {
      await apiFor(() => sched.url, POOL_TOKENS.app).json('POST', `/v1/builds/${waiting}/cancel`);
    });
    const starved = section('a').locator('[data-testid=pool-starved]');
    await starved.waitFor({ timeout: SLOW });
    await expect(starved.textContent()).resolves.toMatch(/1 job of pool a waits, and no worker of the pool is live: only workers started with VMLB_WORKER_POOL=a take them/);
    await expect(section('a').locator('[data-testid=pool-queued]').textContent()).resolves.toBe('1 queued');
    await expect(section('a').locator('[data-queue=layers] [data-state=waiting]').textContent()).resolves.toBe('1');
    await expect(section('a').locator('[data-queue=flatten] [data-state=waiting-children]').textContent()).resolves.toBe('0');
    await expect(section('default').locator('[data-testid=pool-queued]').textContent()).resolves.toBe('0 queued');
    await expect(section('default').locator('[data-testid=pool-starved]').count()).resolves.toBe(0);
    await ui.screenshot(admin, '17-fleet-pool-without-worker');

    const NO_WORKER = 'no worker of pool a is live: the build waits until one registers';
    await app.goto(`${appUrl}/#/builds`);
    const listed = row(app, waiting).locator('[data-testid=build-warning]');
    await listed.waitFor({ timeout: SLOW });
    await expect(listed.textContent()).resolves.toBe(NO_WORKER);
    await expect(row(app, waiting).locator('[data-testid=build-warning]').count()).resolves.toBe(1);
    await expect(row(app, appBuild).locator('[data-testid=build-warning]').count()).resolves.toBe(0);
    await ui.screenshot(app, '18-builds-no-worker');
    const { page: waitPage } = await ui.newPage();
    await signIn(waitPage, appUrl, POOL_TOKENS.app, 'app');
    await waitPage.goto(`${appUrl}/#/builds/${waiting}`);
    const note = waitPage.locator('[data-testid=build-warning]');
    await note.waitFor({ timeout: SLOW });
    await expect(note.textContent()).resolves.toBe(`Waiting${NO_WORKER}`);
    await ui.screenshot(waitPage, '19-build-no-worker');

    // The worker comes back: the warnings go, by themselves, and the build runs.
    startPoolWorker('a');
    await note.waitFor({ state: 'detached', timeout: SLOW });
    await listed.waitFor({ state: 'detached', timeout: SLOW });
    await waitPage.locator(`[data-build="${waiting}"][data-state=done]`).waitFor({ timeout: SLOW });
    await section('a').locator('[data-testid=pool-queued]', { hasText: '0 queued' }).waitFor({ timeout: SLOW });
    await expect(starved.count()).resolves.toBe(0);
    await stoppedRow.and(admin.locator('[data-status=idle]')).waitFor({ timeout: SLOW });

    // A worker whose heartbeat stopped (as a SIGKILLed one leaves it: its line in the seen list,
    // its registration expired): not answering, no busy numbers, and the counts agree.
    const dead = 'w-dash-dead';
    const beat = new Date(Date.now() - 60_000).toISOString();
    const r = redisConnection(redis.url, 'dashboard-test');
    try {
      await r.hset(redisKeys.workersSeen, dead, JSON.stringify({ id: dead, host: 'gone', pid: 1, backend: 'fuse', pool: 'default', slots: 2, busy: 2, cachedBytes: 0, version: 'test', startedAt: beat, lastHeartbeat: beat, state: 'running' }));
      const deadRow = section('default').locator(`tr[data-worker="${dead}"]`);
      await deadRow.waitFor({ timeout: SLOW });
      await expect(deadRow.getAttribute('data-status')).resolves.toBe('dead');
      await expect(deadRow.locator('.badge').textContent()).resolves.toBe('not answering');
      await expect(deadRow.locator('[data-testid=worker-slots]').textContent()).resolves.toBe('2 slots · not answering');
      await expect(deadRow.textContent()).resolves.not.toMatch(/busy/);
      await expect(admin.locator('[data-testid=fleet-summary]').textContent()).resolves.toBe('3 live workers · 1 not answering · 3 pools');
      await expect(admin.locator('[data-testid=stat-workers] .stat-value').textContent()).resolves.toBe('3');
      await expect(admin.locator('[data-testid=stat-workers] .stat-sub').textContent()).resolves.toBe('1 not answering');
      // Busy slots are the live workers' only.
      await expect(admin.locator('[data-testid=stat-slots] .stat-value').textContent()).resolves.toBe('0 / 6');
      await ui.screenshot(admin, '20-fleet-not-answering');
    } finally {
      await r.hdel(redisKeys.workersSeen, dead);
      r.disconnect();
    }
  });

  it('a bad token is refused in words for people; sign out forgets the token', async () => {
    const { page } = await ui.newPage();
    await page.goto(appUrl);
    await page.locator('#token').fill('not-a-real-token');
    await page.getByRole('button', { name: 'Sign in' }).click();
    const error = page.locator('[data-testid=signin-error]');
    await error.waitFor();
    await expect(error.textContent()).resolves.toBe('That token is not valid for this fleet.');
    await expect(page.evaluate('localStorage.length')).resolves.toBe(0);
    await ui.screenshot(page, '10-bad-token');

    await webPage.getByRole('button', { name: 'Sign out' }).click();
    await webPage.locator('[data-testid=token-form]').waitFor();
    await webPage.reload();
    await webPage.locator('[data-testid=token-form]').waitFor();
  });

  it('a failed build says why once, in one line, in the list and on its page; its log is the layer\'s', async () => {
    const { page } = await ui.newPage();
    await signIn(page, appUrl, TOKENS.web, 'web');
    // Layers 01 and 02 are hits; 03 fails with status 3.
    const failed = await submit(await project('first', 'echo "about to fail (dashboard)"; echo "on stderr" >&2; exit 3'), TOKENS.web);
    await waitFor('the failing build to fail', async () => (await buildState(failed)) === 'failed', SLOW, 200);
    const WHY = 'layer 03_world exited with status 3';
    const record = (await api.json<{ error: string; layers: Array<{ status: string; logTail?: string }> }>('GET', `/v1/builds/${failed}`)).body;
    expect(record.error).toBe(WHY);
    expect(record.layers.map((l) => l.status)).toEqual(['hit', 'hit', 'failed']);
    expect(record.layers[2]!.logTail).toContain('about to fail (dashboard)');

    await row(page, failed).waitFor({ timeout: SLOW });
    const cell = row(page, failed).locator('[data-testid=build-error]');
    await expect(cell.textContent()).resolves.toBe(WHY);
    await expect(cell.getAttribute('title')).resolves.toBe(WHY);
    // Shown whole: nothing of it is cut off (it wraps when the column is narrow).
    await expect(cell.evaluate((el) => el.scrollWidth <= el.clientWidth && (globalThis as unknown as { getComputedStyle(e: unknown): { textOverflow: string } }).getComputedStyle(el).textOverflow !== "ellipsis")).resolves.toBe(true);
    await ui.screenshot(page, '21-builds-failed');

    await page.goto(`${appUrl}/#/builds/${failed}`);
    await page.locator(`[data-build="${failed}"][data-state=failed]`).waitFor({ timeout: SLOW });
    await expect(page.locator('[data-testid=build-error] .error-message').textContent()).resolves.toBe(WHY);
    // The log is the layer's, from the shared store, not in the message.
    await page.locator('[data-testid=log][data-layer="2"]', { hasText: 'about to fail (dashboard)' }).waitFor({ timeout: SLOW });
    await page.locator('.activity li', { hasText: '03_world: exited with status 3' }).waitFor({ timeout: SLOW });
    await page.locator('.activity li', { hasText: `build failed: ${WHY}` }).waitFor({ timeout: SLOW });
    const text = (await page.locator('main').textContent()) ?? '';
    expect(text).not.toMatch(/failed\.log|last lines of its log|03_world failed: layer/);
    expect(text).not.toContain(path.join(sb.dir, 'store-dash'));
    await ui.screenshot(page, '22-build-failed');
  });

  it('through the standalone vmlb-dashboard server (a proxy to the scheduler), a build is followed live from its event stream', async () => {
    const health = await fetch(`${standaloneUrl}/healthz`);
    expect(health.status).toBe(200);
    const { page } = await ui.newPage();
    await signIn(page, standaloneUrl, TOKENS.web, 'web');
    // Layers 01 and 02 are hits; 03 changed, so it is built.
    const proxied = await submit(await project('first', 'echo "through the proxy"; sleep 4; echo "proxy layer finished"'), TOKENS.web);
    await page.goto(`${standaloneUrl}/#/builds/${proxied}`);
    await markDocument(page);
    await page.locator('.timeline').waitFor();
    await expect(page.locator('.timeline .tl-row[data-status=hit]').count()).resolves.toBe(2);

    // The stream's events arrive while the layer builds, not all at once at its end: the
    // activity list (fed only by the event stream) says it started while the bar still runs,
    // and its output is in the log before it is done.
    await page.locator('.activity li', { hasText: '03_world: started' }).waitFor({ timeout: SLOW });
    await page.locator('[data-testid=log][data-layer="2"]', { hasText: 'through the proxy' }).waitFor({ timeout: SLOW });
    const meanwhile = await api.json<{ state: string; layers: Array<{ status: string }> }>('GET', `/v1/builds/${proxied}`);
    expect(meanwhile.body.layers[2]!.status).toBe('building');
    await expect(page.locator('.stream-state').textContent()).resolves.toBe('streaming');
    await ui.screenshot(page, '11-proxy-build-building');

    await page.locator(`[data-build="${proxied}"][data-state=done]`).waitFor({ timeout: SLOW });
    await page.locator('.activity li', { hasText: /build done: 1 built, 2 cached/ }).waitFor();
    await expect(layerRow(page, 2).getAttribute('data-status')).resolves.toBe('done');
    await page.locator('[data-testid=log][data-layer="2"]', { hasText: 'proxy layer finished' }).waitFor();
    expect(await stillSameDocument(page)).toBe(true);
    await ui.screenshot(page, '12-proxy-build-done');
  });

  it('cancels a running build from its page: asks first, disables the button meanwhile, shows a refusal, then goes cancelled live', async () => {
    const { page } = await ui.newPage();
    await signIn(page, appUrl, TOKENS.web, 'web');
    // The base is a hit; the second layer would run for ten minutes (the worker must stop it,
    // not wait it out); the third never starts.
    const body = await tarGz([
      { name: '01_base/create-disk', content: `#!/bin/sh\n${BUSYBOX_BASE.script}\n` },
      { name: '02_long/build-layer', content: '#!/bin/sh\necho long-start\nsleep 600\necho long-end\n' },
      { name: '03_after/build-layer', content: '#!/bin/sh\necho after\n' },
    ]);
    const failedBefore = (await api.json<{ queues: { layers: Record<string, number> } }>('GET', '/v1/fleet')).body.queues.layers.failed ?? 0;
    const id = await submit(body, TOKENS.web);
    // Should the page fail to cancel it, the ten-minute layer must not outlive the test.
    onTestFinished(async () => {
      await api.json('POST', `/v1/builds/${id}/cancel`);
    });
    await page.goto(`${appUrl}/#/builds/${id}`);
    await markDocument(page);
    await layerRow(page, 1).and(page.locator('[data-status=building]')).waitFor({ timeout: SLOW });
    await page.locator('[data-testid=log][data-layer="1"]', { hasText: 'long-start' }).waitFor({ timeout: SLOW });
    const head = page.locator('.build-head');
    const button = page.locator('[data-testid=cancel-build]');
    const confirm = page.locator('[data-testid=cancel-confirm]');
    const yes = page.locator('[data-testid=cancel-confirm-yes]');
    const cancelRoute = (url: URL) => url.pathname === `/v1/builds/${id}/cancel`;

    // Asked in the page first; "Keep it" leaves the build alone.
    await button.click();
    await expect(confirm.textContent()).resolves.toContain('Cancel this build?');
    await expect(button.count()).resolves.toBe(0);
    await confirm.getByRole('button', { name: 'Keep it' }).click();
    await button.waitFor();
    await expect(confirm.count()).resolves.toBe(0);

    // A refusal is shown with the server's message, and the button comes back. (The answer is
    // made up here, in the API's error shape: the real fleet has no reason to refuse.)
    await page.route(cancelRoute, (route) => route.fulfill({ status: 503, contentType: 'application/json', body: JSON.stringify({ error: { code: 'REDIS_UNAVAILABLE', message: 'Redis does not answer (made up by the test)' } }) }), { times: 1 });
    await button.click();
    await expect(yes.textContent()).resolves.toBe('Cancel build');
    await yes.click();
    const refusal = page.locator('[data-testid=cancel-error]');
    await refusal.waitFor();
    await expect(refusal.textContent()).resolves.toMatch(/Could not cancel the build.*503 REDIS_UNAVAILABLE.*Redis does not answer \(made up by the test\)/);
    await button.waitFor();
    await expect(head.locator('.badge').textContent()).resolves.toBe('building');

    // The real request, held on its way until the page has been looked at: both answers are disabled meanwhile.
    let release: () => void = () => undefined;
    const held = new Promise<void>((r) => (release = r));
    await page.route(cancelRoute, async (route) => {
      await held;
      await route.continue();
    }, { times: 1 });
    await button.click();
    await yes.click();
    await page.locator('[data-testid=cancel-confirm][aria-busy=true]').waitFor();
    await expect(yes.isDisabled()).resolves.toBe(true);
    await expect(confirm.getByRole('button', { name: 'Keep it' }).isDisabled()).resolves.toBe(true);
    await expect(confirm.textContent()).resolves.toContain('Cancelling…');
    release();

    // The page follows by itself: the build and the layers that had not finished go cancelled.
    const soon = { timeout: 15_000 };
    await page.locator(`[data-build="${id}"][data-state=cancelled]`).waitFor(soon);
    await expect(head.locator('.badge').textContent()).resolves.toBe('cancelled');
    await layerRow(page, 1).and(page.locator('[data-status=cancelled]')).waitFor(soon);
    await layerRow(page, 2).and(page.locator('[data-status=cancelled]')).waitFor(soon);
    await expect(layerRow(page, 0).getAttribute('data-status')).resolves.toBe('hit');
    await expect(layerRow(page, 1).locator('.badge').textContent()).resolves.toBe('cancelled');
    await page.locator('.activity li', { hasText: 'build cancelled: cancelled by web' }).waitFor(soon);
    await expect(button.count()).resolves.toBe(0);
    await expect(confirm.count()).resolves.toBe(0);
    await expect(refusal.count()).resolves.toBe(0);
    // What the layer printed before it was stopped stays readable.
    await page.locator('[data-testid=log][data-layer="1"]', { hasText: 'long-start' }).waitFor();
    expect(await stillSameDocument(page)).toBe(true);
    await ui.screenshot(page, '13-build-cancelled');

    // The scheduler's record, and the worker: it stopped the running layer (its job failed as
    // cancelled, minutes before the script's sleep would have ended) and is idle again.
    const record = (await api.json<{ state: string; error: string; layers: Array<{ status: string }> }>('GET', `/v1/builds/${id}`)).body;
    expect(record.state).toBe('cancelled');
    expect(record.error).toBe('cancelled by web');
    expect(record.layers.map((l) => l.status)).toEqual(['hit', 'cancelled', 'cancelled']);
    await waitFor('the worker to stop the cancelled layer', async () => {
      const f = (await api.json<{ queues: { layers: Record<string, number> }; workers: Array<{ id: string; busy: number }> }>('GET', '/v1/fleet')).body;
      return f.queues.layers.active === 0 && (f.queues.layers.failed ?? 0) > failedBefore && f.workers.find((w) => w.id === worker.id)?.busy === 0;
    }, SLOW, 250);
    const log = await fetch(`${appUrl}/v1/builds/${id}/layers/1/log`, { headers: { authorization: `Bearer ${TOKENS.web}` } });
    const text = await log.text();
    expect(text).toContain('long-start');
    expect(text).not.toContain('long-end');
  });

  it('no page threw an uncaught error', () => {
    expect(ui.pageErrors).toEqual([]);
  });
});
