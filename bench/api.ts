/**
 * The scheduler API's benchmarks (rows of the same table as bench/benchmarks.ts). The
 * scheduler runs as its own process (apps/scheduler/dist/main.js, as deployed) over a private
 * redis-server and s3rver; the load comes from this process over loopback.
 *
 *   api-load        200 concurrent clients polling GET /v1/builds/:id, alone and then each with
 *                   one live log stream (GET /v1/builds/:id/events) carrying worker output
 *   metrics-scrape  GET /metrics with no build recorded vs with 1,000 builds recorded
 *   output-flood    the scheduler's memory and Redis's growth while a build's layer prints
 *                   200 MiB, with a live log stream open, vs a build that prints 2 KB
 */
import { apiLoad } from './api-load.js';
import { metricsScrape } from './metrics-scrape.js';
import { outputFlood } from './output-flood.js';

export const API_BENCHMARKS = [
  { name: 'api-load', title: '200 concurrent clients polling build state, then each with a live log stream', run: apiLoad },
  { name: 'metrics-scrape', title: '/metrics scrape time: no build vs 1,000 builds recorded', run: metricsScrape },
  { name: 'output-flood', title: "scheduler memory and Redis growth while a build's layer prints 200 MiB vs 2 KB", run: outputFlood },
];
