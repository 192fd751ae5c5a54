/**
 * @vmlb/web-dashboard: the fleet's web dashboard. The browser app lives in src/ui (bundled by
 * bundle.mjs into dist/public); this side serves it, inside the scheduler (registerDashboard)
 * or on its own beside it with the API proxied (createDashboardServer, bin/vmlb-dashboard).
 */
export { registerDashboard, PUBLIC_DIR, type DashboardOptions } from './static-files.js';
export { createDashboardServer, type DashboardServer } from './server.js';
export { dashboardConfigFrom, DashboardConfigError, type DashboardConfig } from './config.js';
