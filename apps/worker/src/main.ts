/**
 * `vmlb-worker`: a fleet worker (docs/fleet.md). Configuration from the environment
 * (libs/fleet/src/config.ts and worker-settings.ts); logs as JSON lines on stderr.
 *
 * SIGTERM or SIGINT: stop taking jobs, let the running ones finish (up to VMLB_WORKER_GRACE),
 * then deregister and exit 0. Past the grace period, or on a second signal, the running jobs
 * are aborted and handed back to the queue (no attempt used) before the worker exits.
 * Exit status: 0 after a clean stop, 2 for a configuration problem, 1 for anything else.
 */
import { VmlbError } from '@vmlb/layer-engine';
import { jsonLogger } from './logger.js';
import { startWorker } from './start-worker.js';
import { workerSettingsFrom } from './worker-settings.js';

const log = jsonLogger({ app: 'vmlb-worker' });

async function main(): Promise<number> {
  let config;
  try {
    config = workerSettingsFrom(process.env);
  } catch (e) {
    log.error((e as Error).message);
    return 2;
  }
  const { fleet, settings } = config;

  // Handlers first: a signal while the worker starts (e.g. waiting for Redis) stops it cleanly
  // once it has started, before it takes a job.
  let signals = 0;
  let onStop: () => void = () => {};
  const stopRequested = new Promise<void>((resolve) => (onStop = resolve));
  let worker: Awaited<ReturnType<typeof startWorker>> | undefined;
  const onSignal = (sig: NodeJS.Signals) => {
    signals++;
    if (signals === 1) {
      log.info(`${sig}: stopping`, { worker: settings.id });
      onStop();
    } else {
      log.warn(`${sig} again: handing the running jobs back now`, { worker: settings.id });
      worker?.handBack();
    }
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);

  worker = await startWorker(fleet, { ...settings, log });
  if (signals > 1) worker.handBack();
  await stopRequested;
  await worker.close();
  return 0;
}

process.on('unhandledRejection', (e) => {
  log.error('unhandled rejection', { error: e instanceof Error ? e.stack : String(e) });
});

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    log.error(e instanceof VmlbError ? e.message : ((e as Error)?.stack ?? String(e)), { code: (e as VmlbError)?.code });
    process.exit(1);
  },
);
