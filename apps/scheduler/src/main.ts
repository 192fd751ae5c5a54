import { VmlbError } from '@vmlb/layer-engine';
import { describeRedisTarget, fleetConfigFrom } from '@vmlb/fleet';
import { jsonLogger } from './logger.js';
import { createScheduler } from './scheduler.js';
import { Teams } from './teams.js';

/**
 * The scheduler process: configuration from the environment (see libs/fleet/src/config.ts),
 * then the HTTP API until SIGTERM or SIGINT. SIGHUP reloads the teams file.
 * Exit status: 0 after a clean stop, 2 for a configuration problem, 1 for anything else.
 */
const log = jsonLogger(process.stderr, { app: 'scheduler' });

async function main(): Promise<void> {
  const config = fleetConfigFrom(process.env, { teams: true, database: true });
  const teams = await Teams.load(config.teamsFile!);
  const scheduler = await createScheduler({ config, teams, log, grafanaUrl: process.env.VMLB_GRAFANA_URL || undefined });
  const url = await scheduler.listen();
  log.info('scheduler listening', { url, teams: teams.names.length, shared: config.shared.url, redis: describeRedisTarget(config.redis) });

  process.on('SIGHUP', () => {
    Teams.load(config.teamsFile!).then(
      (t) => {
        teams.replaceWith(t);
        log.info('teams file reloaded', { teams: t.names.length });
      },
      (e: Error) => log.error('teams file not reloaded; keeping the previous teams', { error: e.message }),
    );
  });

  await new Promise<void>((resolve) => {
    const stop = (sig: string) => {
      log.info('stopping', { signal: sig });
      resolve();
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
  await scheduler.close();
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    const err = e as Error;
    if (e instanceof VmlbError) {
      process.stderr.write(`vmlb-scheduler: ${err.message}\n`);
      process.exit(e.code === 'FLEET_CONFIG' || e.code === 'TEAMS_FILE' || e.code === 'S3_CONFIG' ? 2 : 1);
    }
    process.stderr.write(`vmlb-scheduler: ${err.stack ?? err.message}\n`);
    process.exit(1);
  },
);
