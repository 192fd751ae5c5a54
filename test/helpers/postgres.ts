/**
 * A database of the run's PostgreSQL (test/helpers/postgres-broker.ts) for a test's schedulers.
 * One per shared store: the history goes with the store it describes, so a test that restarts
 * its scheduler on the same store finds its builds again, and two files never share one.
 */
import { createHash } from 'node:crypto';
import { ensureDatabase } from '../../apps/scheduler/src/private-postgres.js';

export function testPgBase(): string {
  const base = process.env.VMLB_TEST_PG;
  if (!base) throw new Error('VMLB_TEST_PG is not set: run the integration tests through vitest on a host with PostgreSQL (apt-get install postgresql; test/helpers/postgres-broker.ts starts the server)');
  return base;
}

/** The URL of the database for this shared store (`s3://…`) or name, created on first use. */
export async function testDatabaseUrl(key: string): Promise<string> {
  const name = `vmlb_${createHash('sha256').update(key).digest('hex').slice(0, 16)}`;
  return ensureDatabase(testPgBase(), name);
}

/** `env` with a VMLB_DATABASE_URL for its VMLB_SHARED, unless it has one. */
export async function withTestDatabase(env: Record<string, string>): Promise<Record<string, string>> {
  if (env.VMLB_DATABASE_URL) return env;
  return { ...env, VMLB_DATABASE_URL: await testDatabaseUrl(env.VMLB_SHARED ?? 'default') };
}
