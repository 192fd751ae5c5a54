import path from 'node:path';
import { REPO } from './dev-fleet-parts.js';

/** The rules Prometheus loads: the alerts deploy/ ships. */
export const ALERT_RULES = path.join(REPO, 'deploy/prometheus/alerts.yml');

/**
 * A Prometheus config for the dev fleet (JSON is YAML): the scheduler and the workers under the
 * job names deploy/prometheus/alerts.yml expects, its rules, every 5 s.
 */
export function prometheusConfig(scheduler: string, workers: string[]): string {
  const config = {
    global: { scrape_interval: '5s', evaluation_interval: '5s', external_labels: { fleet: 'vmlb-dev' } },
    rule_files: [ALERT_RULES],
    scrape_configs: [
      { job_name: 'vmlb-scheduler', metrics_path: '/metrics', static_configs: [{ targets: [scheduler] }] },
      { job_name: 'vmlb-worker', metrics_path: '/metrics', static_configs: [{ targets: workers }] },
    ],
  };
  return `# Prometheus for this dev fleet (npm run fleet): prometheus --config.file=THIS_FILE\n${JSON.stringify(config, null, 2)}\n`;
}
