/**
 * Debian's Chromium driven by playwright-core (TESTING.md: never `npx playwright install`),
 * for the dashboard test: a headless browser, one fresh context (its own profile storage) per
 * signed-in user, every page's uncaught errors kept for the test to assert on, and full-page
 * screenshots written where the test report keeps its artifacts.
 */
import { execa } from 'execa';
import { mkdir, readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { REPO } from './vmlb.js';

export const CHROMIUM = process.env.VMLB_CHROMIUM ?? '/usr/bin/chromium';
/** Beside test-results/vitest.json (scripts/test.sh). */
export const SCREENSHOTS = path.join(REPO, 'test-results/dashboard');

const DASHBOARD = path.join(REPO, 'apps/web-dashboard');

/**
 * The browser app as `npm run build` makes it (apps/web-dashboard/bundle.mjs), bundled again
 * only when a source is newer than dist/public/index.html: the test checks the sources under
 * test, and an unchanged bundle keeps its content-hashed names for a scheduler already serving it.
 */
export async function ensureDashboardBundle(): Promise<void> {
  const built = await stat(path.join(DASHBOARD, 'dist/public/index.html')).then((s) => s.mtimeMs, () => 0);
  const sources = [path.join(DASHBOARD, 'bundle.mjs'), ...(await readdir(path.join(DASHBOARD, 'src/ui'), { recursive: true })).map((f) => path.join(DASHBOARD, 'src/ui', f))];
  const newest = Math.max(...(await Promise.all(sources.map((f) => stat(f).then((s) => s.mtimeMs)))));
  if (newest > built) await execa(process.execPath, [path.join(DASHBOARD, 'bundle.mjs')], { cwd: DASHBOARD });
}

const FLAGS = ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'];

export interface DashboardBrowser {
  browser: Browser;
  /** A new context (fresh storage: no token yet) and a page in it. */
  newPage(): Promise<{ context: BrowserContext; page: Page }>;
  /** Uncaught exceptions in any page so far. */
  pageErrors: string[];
  screenshot(page: Page, name: string): Promise<string>;
  close(): Promise<void>;
}

export async function launchDashboardBrowser(): Promise<DashboardBrowser> {
  // playwright gives each launch a new temporary profile (user-data dir) and removes it on close.
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: FLAGS, timeout: 60_000 });
  const pageErrors: string[] = [];
  const contexts: BrowserContext[] = [];
  await mkdir(SCREENSHOTS, { recursive: true });
  return {
    browser,
    pageErrors,
    async newPage() {
      const context = await browser.newContext({ viewport: { width: 1440, height: 900 }, deviceScaleFactor: 1 });
      contexts.push(context);
      context.on('page', (p) => watch(p, pageErrors));
      const page = await context.newPage();
      return { context, page };
    },
    async screenshot(page, name) {
      const file = path.join(SCREENSHOTS, `${name}.png`);
      await page.screenshot({ path: file, fullPage: true });
      return file;
    },
    async close() {
      for (const c of contexts) await c.close().catch(() => undefined);
      await browser.close();
    },
  };
}

function watch(page: Page, errors: string[]): void {
  page.on('pageerror', (e) => errors.push(`${page.url()}: ${e.stack ?? e.message}`));
}

/** The token form, filled and sent; resolves when the top bar names the signed-in team. */
export async function signIn(page: Page, url: string, token: string, team: string): Promise<void> {
  await page.goto(url);
  await page.locator('[data-testid=token-form]').waitFor();
  await page.locator('#token').fill(token);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('[data-testid=whoami]', { hasText: team }).waitFor();
}
