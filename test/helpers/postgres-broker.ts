/**
 * vitest globalSetup of the integration project: the run's one private PostgreSQL
 * (apps/scheduler/src/private-postgres.ts: initdb in a temporary folder, as a user that is not
 * root, on a free loopback port, no fsync), started before the first file and stopped by its pid
 * at the end. Its URL is VMLB_TEST_PG (the files inherit it); each test file's schedulers get a
 * database of their own from test/helpers/postgres.ts. Should the run be killed, the server dies
 * with it (parent-death signal).
 */
import { postgresBinDir, startPrivatePostgres } from '../../apps/scheduler/src/private-postgres.js';

function postgresInstalled(): boolean {
  try {
    postgresBinDir();
    return true;
  } catch {
    return false;
  }
}

export default async function setup(): Promise<() => Promise<void>> {
  if (process.env.VMLB_TEST_PG) return async () => undefined;
  // A host without PostgreSQL still runs the files that need no scheduler history (the nbd
  // VM runs test/attach.test.ts only); a file that needs one fails naming what is missing.
  if (!postgresInstalled()) {
    console.warn('postgres-broker: PostgreSQL is not installed; files that need a scheduler history fail (apt-get install postgresql)');
    return async () => undefined;
  }
  const t0 = Date.now();
  const pg = await startPrivatePostgres({ fast: true });
  process.env.VMLB_TEST_PG = pg.baseUrl;
  console.warn(`postgres-broker: the run's PostgreSQL started in ${((Date.now() - t0) / 1000).toFixed(1)} s (port ${pg.port})`);
  return () => pg.close();
}
