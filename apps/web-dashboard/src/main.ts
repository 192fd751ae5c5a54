/**
 * `vmlb-dashboard`: the web dashboard beside the scheduler (src/server.ts). Configuration from
 * the environment (src/config.ts); one JSON line per message on stderr.
 * Exit status: 0 after SIGTERM/SIGINT, 2 for a configuration problem, 1 for anything else.
 */
import { DashboardConfigError, dashboardConfigFrom } from './config.js';
import { createDashboardServer } from './server.js';

const log = (level: 'info' | 'error', msg: string, fields: Record<string, unknown> = {}) =>
  process.stderr.write(JSON.stringify({ time: new Date().toISOString(), level, msg, app: 'vmlb-dashboard', ...fields }) + '\n');

async function main(): Promise<number> {
  let config;
  try {
    config = dashboardConfigFrom(process.env);
  } catch (e) {
    if (e instanceof DashboardConfigError) {
      process.stderr.write(`vmlb-dashboard: ${e.message}\n`);
      return 2;
    }
    throw e;
  }
  const server = await createDashboardServer(config);
  const url = await server.listen();
  log('info', 'dashboard listening', { url, scheduler: config.server });
  await new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      log('info', 'stopping', { signal });
      resolve();
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
  await server.close();
  return 0;
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    log('error', (e as Error)?.stack ?? String(e));
    process.exit(1);
  },
);
