/**
 * Builds with names, and a project's trend, in the web dashboard in a real browser (Debian's
 * Chromium, headless) over a real fleet: a private redis-server and S3 test server, the
 * scheduler serving the dashboard (VMLB_GRAFANA_URL set, a teams file with a named token), a
 * real worker process building real layers. Builds are sent as `vmlb submit` sends them (the
 * project's name, git branch, commit, dirty flag and submitter in headers):
 *
 *   the builds list shows project name, branch, short commit, the dirty mark and the token's
 *   name instead of the project's hash → the build page says the same and links to its
 *   Grafana view and its project's page → the project page: per layer, cached or built and how
 *   long, over the last builds (oldest on the left), with its totals; the limit and branch
 *   controls → what another team sees of it (nothing), and an admin; the route's answers.
 *
 * A screenshot of each page goes to test-results/dashboard/.
 */
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import type { Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { sha256Hex, Teams } from '../apps/scheduler/src/index.js';
import { ensureDashboardBundle, launchDashboardBrowser, signIn, type DashboardBrowser } from './helpers/dashboard-browser.js';
import { apiFor, startScheduler, tarGz, waitFor, type RunningScheduler, type TarEntry } from './helpers/fleet-api.js';
import { startFleetServices, type FleetServices } from './helpers/fleet-services.js';
import { BUSYBOX_BASE } from './helpers/vmlb.js';
import { startWorkerProcess, workerLogs, type WorkerProcess } from './helpers/worker-process.js';

const TOK = { alice: 'tok-proj-alice-0123456789', data: 'tok-proj-data-0123456789', ops: 'tok-proj-ops-0123456789' } as const;
const TEAMS = [
  { team: 'web', tokenSha256: sha256Hex(TOK.alice), name: 'alice' },
  { team: 'data', tokenSha256: sha256Hex(TOK.data) },
  { team: 'ops', tokenSha256: sha256Hex(TOK.ops), admin: true },
];
const GRAFANA = 'http://grafana.example:3000/d/vmlb-fleet/vmlb?var-team={team}&var-pool={pool}&from={from}&to={to}';
const COMMIT_A = 'a1b2c3d4e5f60718293a4b5c6d7e8f9012345678';
const COMMIT_B = 'b2c3d4e5f60718293a4b5c6d7e8f901234567890';

let services: FleetServices;
let sched: RunningScheduler;
let worker: WorkerProcess;
let ui: DashboardBrowser;
const api = apiFor(() => sched.url, TOK.alice);

// Function predicates, not strings: a string is eval'd in the page, which its CSP (script-src 'self') refuses.
type InPage = { location: { hash: string }; document: { querySelectorAll(s: string): { length: number } } };
const hashIs = (page: Page, hash: string) => page.waitForFunction((h) => (globalThis as unknown as InPage).location.hash === h, hash);
const columns = (page: Page, n: number) => page.waitForFunction((k) => (globalThis as unknown as InPage).document.querySelectorAll('[data-testid=trend] thead th.col-head').length === k, n);

function project(third: string): Promise<Buffer> {
  const entries: TarEntry[] = [
    { name: '01_base/create-disk', content: `#!/bin/sh\n${BUSYBOX_BASE.script}\n` },
    { name: '02_hello/build-layer', content: '#!/bin/sh\necho hello; sleep 1\n' },
    { name: '03_world/build-layer', content: `#!/bin/sh\n${third}\n` },
  ];
  return tarGz(entries);
}

/** Sent as vmlb submit sends it; waits for the build's end. */
async function submit(body: Buffer, meta: { commit: string; branch: string; dirty: boolean }, token: string = TOK.alice, ends: 'done' | 'failed' = 'done'): Promise<string> {
  const r = await api.json<{ id: string }>('POST', '/v1/builds', {
    body,
    token,
    headers: { 'x-vmlb-project-name': 'webapp', 'x-vmlb-git-commit': meta.commit, 'x-vmlb-git-branch': meta.branch, 'x-vmlb-git-dirty': meta.dirty ? '1' : '0', 'x-vmlb-submitter': 'root@ci-host' },
  });
  expect(r.status, JSON.stringify(r.body)).toBe(201);
  await waitFor(`build ${r.body.id} to end`, async () => ['done', 'failed'].includes((await api.json('GET', `/v1/builds/${r.body.id}`, { token })).body.state), 120_000, 200);
  expect((await api.json('GET', `/v1/builds/${r.body.id}`, { token })).body.state).toBe(ends);
  return r.body.id;
}

beforeAll(async () => {
  await ensureDashboardBundle();
  services = await startFleetServices('dashboard-project');
  const workDir = path.join(services.sb.dir, 'scheduler-work');
  await mkdir(workDir, { recursive: true });
  sched = await startScheduler(services.env, { workDir, teams: Teams.parse(JSON.stringify(TEAMS), 'project test teams'), grafanaUrl: GRAFANA });
  worker = startWorkerProcess({ name: 'proj', dir: services.sb.dir, redisUrl: services.redis.url, sharedUrl: services.sharedUrl, s3env: services.s3.env, shortLocks: false });
  ui = await launchDashboardBrowser();
  await waitFor('the worker to register', async () => (await api.json<{ workers: Array<{ id: string }> }>('GET', '/v1/fleet')).body?.workers?.some((w) => w.id === worker.id), 60_000, 200);
});

afterEach((ctx) => {
  if (ctx.task.result?.state === 'fail') console.error(`scheduler log:\n${sched?.log.lines.slice(-30).join('\n')}\n${worker ? workerLogs([worker]) : ''}\n${ui?.pageErrors.join('\n')}`);
});

afterAll(async () => {
  await ui?.close().catch(() => undefined);
  await worker?.stop();
  await sched?.close();
  await services?.close();
});

describe('project names and a project\'s trend in the dashboard', () => {
  // Oldest first: a cold build, the same again (all hits), an edit of the last layer not committed, another branch.
  const ids: string[] = [];
  let page: Page;

  it('builds of one project: cold, all hits, a dirty edit, another branch', async () => {
    ids.push(await submit(await project('echo world; sleep 1'), { commit: COMMIT_A, branch: 'main', dirty: false }));
    ids.push(await submit(await project('echo world; sleep 1'), { commit: COMMIT_A, branch: 'main', dirty: false }));
    ids.push(await submit(await project('echo edited world; sleep 2'), { commit: COMMIT_A, branch: 'main', dirty: true }));
    ids.push(await submit(await project('echo other branch'), { commit: COMMIT_B, branch: 'feature/x', dirty: false }));
    const r = (await api.json('GET', `/v1/builds/${ids[2]}`)).body;
    expect(r).toMatchObject({ projectName: 'webapp', gitBranch: 'main', gitCommit: COMMIT_A, gitDirty: true, submitter: 'alice' });
  });

  it('the builds list names each build\'s project, branch, commit, dirty mark and submitter', async () => {
    ({ page } = await ui.newPage());
    await signIn(page, sched.url, TOK.alice, 'web');
    const row = (id: string) => page.locator(`tr[data-build="${id}"]`);
    await row(ids[3]!).waitFor();
    for (const [i, id] of ids.entries()) {
      const label = row(id).locator('[data-testid=project-label]');
      await expect(label.locator('[data-testid=project-link]').textContent()).resolves.toBe('webapp');
      await expect(label.locator('[data-testid=project-link]').getAttribute('href')).resolves.toBe('#/projects/webapp');
      await expect(label.locator('[data-testid=project-branch]').textContent()).resolves.toBe(i === 3 ? 'feature/x' : 'main');
      await expect(label.locator('[data-testid=project-commit]').textContent()).resolves.toBe((i === 3 ? COMMIT_B : COMMIT_A).slice(0, 8));
      await expect(label.locator('[data-testid=project-dirty]').count()).resolves.toBe(i === 2 ? 1 : 0);
      await expect(label.locator('[data-testid=project-submitter]').textContent()).resolves.toBe('by alice');
    }
    // No anonymous hash where a name is known.
    await expect(page.locator('tbody').textContent()).resolves.not.toMatch(/project [0-9a-f]{12}/);
    await ui.screenshot(page, 'p1-builds-named');
    // The search box: the API's ?q= (project, commit, branch, submitter), kept in the address.
    await page.locator('[data-testid=search]').fill('feature/x');
    await page.waitForFunction((h) => (globalThis as unknown as { location: { hash: string } }).location.hash === h, '#/builds?q=feature%2Fx');
    // The others gone and the match there (the list may be empty for a moment while it loads).
    await row(ids[0]!).waitFor({ state: 'detached' });
    await row(ids[3]!).waitFor();
    await expect(page.locator('tr[data-build]').count()).resolves.toBe(1);
    await page.locator('[data-testid=search]').fill(COMMIT_A.slice(0, 7));
    await row(ids[0]!).waitFor();
    await expect(page.locator('tr[data-build]').count()).resolves.toBe(3);
    await page.locator('[data-testid=search]').fill('no-such-project');
    await page.locator('.empty', { hasText: 'No builds matching “no-such-project”' }).waitFor();
    await page.locator('[data-testid=search]').fill('');
    await row(ids[3]!).waitFor();
    await expect(page.locator('tr[data-build]').count()).resolves.toBe(4);
  });

  it('the build page says the same, and links to its Grafana view and its project\'s page', async () => {
    const id = ids[2]!;
    await page.goto(`${sched.url}/#/builds/${id}`);
    await page.locator(`[data-build="${id}"][data-state="done"]`).waitFor();
    const fact = page.locator('[data-testid=build-project]');
    await expect(fact.locator('[data-testid=project-link]').textContent()).resolves.toBe('webapp');
    await expect(fact.locator('[data-testid=project-branch]').textContent()).resolves.toBe('main');
    await expect(fact.locator('[data-testid=project-commit]').textContent()).resolves.toBe(COMMIT_A.slice(0, 8));
    await expect(fact.locator('[data-testid=project-dirty]').textContent()).resolves.toBe('dirty');
    await expect(page.locator('[data-testid=build-submitter]').textContent()).resolves.toBe('alice');
    const r = (await api.json('GET', `/v1/builds/${id}`)).body as { createdAt: string; finishedAt: string };
    const grafana = `http://grafana.example:3000/d/vmlb-fleet/vmlb?var-team=web&var-pool=default&from=${Date.parse(r.createdAt) - 60_000}&to=${Date.parse(r.finishedAt) + 60_000}`;
    await page.locator('[data-testid=grafana-link]').waitFor();
    await expect(page.locator('[data-testid=grafana-link]').getAttribute('href')).resolves.toBe(grafana);
    await expect((await api.json('GET', `/v1/builds/${id}/links`)).body).toEqual({ grafana });
    await ui.screenshot(page, 'p2-build-named');
    await page.locator('[data-testid=project-page-link]').click();
    await hashIs(page, '#/projects/webapp');
  });

  it('the project page: per layer, cached or built and its seconds, over the last builds, oldest on the left', async () => {
    await page.locator('[data-testid=trend]').waitFor();
    await expect(page.locator('[data-testid=project-title]').textContent()).resolves.toBe('webapp');
    const heads = await page.locator('[data-testid=trend] thead th.col-head').evaluateAll((els) => els.map((e) => e.getAttribute('data-build')));
    expect(heads).toEqual(ids);
    const statuses = (layer: string) => page.locator(`tr[data-layer-name="${layer}"] td`).evaluateAll((els) => els.map((e) => e.getAttribute('data-status')));
    await expect(statuses('01_base')).resolves.toEqual(['done', 'hit', 'hit', 'hit']);
    await expect(statuses('02_hello')).resolves.toEqual(['done', 'hit', 'hit', 'hit']);
    await expect(statuses('03_world')).resolves.toEqual(['done', 'hit', 'done', 'done']);
    // A built cell shows its seconds as the worker took them; a hit says cached.
    const trend = (await api.json('GET', '/v1/projects/webapp/trend')).body as { builds: Array<{ id: string; seconds: number; layers: Array<{ name: string; status: string; seconds: number | null }> }> };
    const cell = (layer: string, build: string) => page.locator(`tr[data-layer-name="${layer}"] td[data-build="${build}"]`).textContent();
    const secs = (s: number | null) => (s! < 10 ? `${s!.toFixed(2)}s` : `${s!.toFixed(1)}s`);
    const third = trend.builds.find((b) => b.id === ids[2])!;
    await expect(cell('03_world', ids[2]!)).resolves.toBe(secs(third.layers[2]!.seconds));
    expect(third.layers[2]!.seconds).toBeGreaterThanOrEqual(2);
    await expect(cell('01_base', ids[2]!)).resolves.toBe('cached');
    await expect(page.locator('[data-testid=trend-builds] .stat-value').textContent()).resolves.toBe('4');
    // 0 + 3 + 2 + 2 hits of 12 layers.
    await expect(page.locator('[data-testid=trend-hits] .stat-value').textContent()).resolves.toBe('58.3%');
    await expect(page.locator('[data-testid=trend-hits] .stat-sub').textContent()).resolves.toBe('7 of 12 layers');
    await expect(page.locator('[data-testid=trend-total]').evaluateAll((els) => els.map((e) => e.textContent))).resolves.toEqual(
      [...trend.builds].reverse().map((b) => secs(b.seconds)),
    );
    await ui.screenshot(page, 'p3-project-trend');

    // The branch control: only main's builds; the limit: the last two of them.
    await page.locator('[data-testid=trend-branch]').fill('main');
    await page.locator('[data-testid=trend-branch]').dispatchEvent('change');
    await hashIs(page, '#/projects/webapp?limit=30&branch=main');
    await columns(page, 3);
    await page.locator('[data-testid=trend-limit]').selectOption('10');
    await hashIs(page, '#/projects/webapp?limit=10&branch=main');
    await page.goto(`${sched.url}/#/projects/webapp?limit=10&branch=feature%2Fx`);
    await columns(page, 1);
    await expect(statuses('03_world')).resolves.toEqual(['done']);
    expect(ui.pageErrors).toEqual([]);
  });

  it('the trend route: newest first, ?limit and ?branch, team-scoped (another team sees nothing, an admin every team\'s)', async () => {
    const all = (await api.json('GET', '/v1/projects/webapp/trend')).body;
    expect(all.teams).toEqual(['web']);
    expect(all.limit).toBe(30);
    expect(all.builds.map((b: { id: string }) => b.id)).toEqual([...ids].reverse());
    expect(all.builds[1]).toMatchObject({ team: 'web', state: 'done', gitBranch: 'main', gitCommit: COMMIT_A, gitDirty: true, submitter: 'alice', hits: 2, built: 1, lookups: 3 });
    expect(all.builds[1].layers.map((l: { index: number; name: string; status: string }) => [l.index, l.name, l.status])).toEqual([[0, '01_base', 'hit'], [1, '02_hello', 'hit'], [2, '03_world', 'done']]);
    const two = (await api.json('GET', '/v1/projects/webapp/trend?limit=2&branch=main')).body;
    expect(two.builds.map((b: { id: string }) => b.id)).toEqual([ids[2], ids[1]]);
    expect(two.branch).toBe('main');
    const other = await api.json('GET', '/v1/projects/webapp/trend', { token: TOK.data });
    expect(other.status).toBe(200);
    expect(other.body).toEqual({ project: 'webapp', teams: ['data'], limit: 30, builds: [] });
    const forbidden = await api.json('GET', '/v1/projects/webapp/trend?team=web', { token: TOK.data });
    expect(forbidden.status).toBe(403);
    const admin = (await api.json('GET', '/v1/projects/webapp/trend', { token: TOK.ops })).body;
    expect(admin.builds).toHaveLength(4);
    expect((await api.json('GET', '/v1/projects/webapp/trend?limit=0')).status).toBe(400);
    expect((await api.json('GET', `/v1/builds/${ids[0]}/links`, { token: TOK.data })).status).toBe(404);

    // Team data's page of the same project: none of web's builds.
    const { page: dataPage } = await ui.newPage();
    await signIn(dataPage, sched.url, TOK.data, 'data');
    await dataPage.goto(`${sched.url}/#/projects/webapp`);
    await dataPage.locator('.empty', { hasText: 'No builds of project webapp for this team.' }).waitFor();
    await ui.screenshot(dataPage, 'p4-project-other-team');
    expect(ui.pageErrors).toEqual([]);
  });

  it('a failed build counts its failed layer as a lookup, not the layer its failure cancelled (the one hit rate)', async () => {
    const entries: TarEntry[] = [
      { name: '01_base/create-disk', content: `#!/bin/sh\n${BUSYBOX_BASE.script}\n` },
      { name: '02_hello/build-layer', content: '#!/bin/sh\necho broken; exit 3\n' },
      { name: '03_world/build-layer', content: '#!/bin/sh\necho world\n' },
    ];
    const id = await submit(await tarGz(entries), { commit: COMMIT_B, branch: 'broken', dirty: false }, TOK.alice, 'failed');
    const b = (await api.json('GET', '/v1/projects/webapp/trend?branch=broken')).body.builds[0];
    expect(b.layers.map((l: { status: string }) => l.status)).toEqual(['hit', 'failed', 'cancelled']);
    expect(b).toMatchObject({ id, state: 'failed', hits: 1, built: 0, lookups: 2 });
    // The list's and the cache page's definition: the same 1 of 2 for this build.
    expect((await api.json('GET', `/v1/builds?q=broken`)).body.builds.find((x: { id: string }) => x.id === id)).toMatchObject({ hits: 1, lookups: 2 });
    await page.goto(`${sched.url}/#/projects/webapp`);
    await columns(page, 5);
    // 7 of 12 before, and this build's 1 of 2.
    await expect(page.locator('[data-testid=trend-hits] .stat-sub').textContent()).resolves.toBe('8 of 14 layers');
    await expect(page.locator('[data-testid=trend-builds] .stat-sub').textContent()).resolves.toBe('1 failed');
    expect(ui.pageErrors).toEqual([]);
  });
});
