/**
 * The web dashboard in a real browser (Debian's Chromium, headless, driven by playwright-core)
 * over the real fleet: a private redis-server and s3rver, the scheduler serving the dashboard,
 * a real worker process building real layers, and the standalone `vmlb-dashboard` server
 * proxying the API. Builds are submitted through the API while the browser watches:
 *
 *   the token form → the builds list, live → a build's time line and logs, live → a second,
 *   all-hit build moves the cache hit rate → the fleet → what each team (and the admin) sees →
 *   a bad token → one build followed through the proxy, with its event stream → a build
 *   cancelled from its page while a layer runs.
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
import { freePort, type RedisServer } from './helpers/redis-server.js';
import type { S3Server } from './helpers/s3-server.js';
import { BUSYBOX_BASE, REPO, type Sandbox } from './helpers/vmlb.js';
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
let standalone: ResultPromise | undefined;
let standaloneUrl = '';
let standaloneLog = '';
let ui: DashboardBrowser;
/** Where the scheduler serves the dashboard (the same origin as its API). */
let appUrl = '';

const api = apiFor(() => sched.url, TOKENS.web);

/** A busybox base, then build-layers that print and sleep, so "building" lasts long enough to see. */
function project(tag: string, lastLayer = 'echo "world from the dashboard test"; sleep 4; echo "03 finished"'): Promise<Buffer> {
  const entries: TarEntry[] = [
    { name: '01_base/create-disk', content: `#!/bin/sh\n${BUSYBOX_BASE.script}\n` },
    { name: '02_hello/build-layer', content: `#!/bin/sh\necho "hello from the dashboard test (${tag})"\nsleep 2\necho "02 finished"\n` },
    { name: '03_world/build-layer', content: `#!/bin/sh\n${lastLayer}\n` },
  ];
  return tarGz(entries);
}

async function submit(body: Buffer, token: string): Promise<string> {
  const r = await api.json<{ id: string; state: string }>('POST', '/v1/builds', { body, token });
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
  sched = await startScheduler(env, { workDir });
  appUrl = sched.url;

  // Production job locks: nothing is killed here, and a loaded machine must not make a job look stalled.
  worker = startWorkerProcess({ name: 'dash', dir: sb.dir, redisUrl: redis.url, sharedUrl, s3env: s3.env, shortLocks: false });

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
  await waitFor('the worker to register', async () => {
    const f = await api.json<{ workers: Array<{ id: string }> }>('GET', '/v1/fleet');
    return f.body?.workers?.some((w) => w.id === worker.id);
  }, 60_000, 200);
});

afterEach((ctx) => {
  if (ctx.task.result?.state === 'fail') {
    console.error(`scheduler log:\n${sched?.log.lines.slice(-30).join('\n')}\n${worker ? workerLogs([worker]) : ''}\nvmlb-dashboard:\n${standaloneLog.slice(-2000)}`);
  }
});

afterAll(async () => {
  await ui?.close().catch(() => undefined);
  if (standalone && standalone.exitCode === null) {
    standalone.kill('SIGTERM');
    await standalone;
  }
  await worker?.stop();
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
    first = await submit(await project('first'), TOKENS.web);
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
      await expect(r.locator('.tl-bytes').textContent()).resolves.toMatch(/^\d+(\.\d+)? (B|KiB|MiB)$/);
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

  it('a bad token is refused with the server\'s message; sign out forgets the token', async () => {
    const { page } = await ui.newPage();
    await page.goto(appUrl);
    await page.locator('#token').fill('not-a-real-token');
    await page.getByRole('button', { name: 'Sign in' }).click();
    const error = page.locator('[data-testid=signin-error]');
    await error.waitFor();
    await expect(error.textContent()).resolves.toMatch(/The token was refused: .*team token is required/);
    await expect(page.evaluate('localStorage.length')).resolves.toBe(0);
    await ui.screenshot(page, '10-bad-token');

    await webPage.getByRole('button', { name: 'Sign out' }).click();
    await webPage.locator('[data-testid=token-form]').waitFor();
    await webPage.reload();
    await webPage.locator('[data-testid=token-form]').waitFor();
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
