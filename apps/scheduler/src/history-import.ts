import type { SharedStore } from '@vmlb/layer-engine';
import type { BuildHistory } from './build-history.js';
import { StoreIndexRecords, type StoredRecord } from './build-records.js';
import { MIGRATION_LOCK } from './history-migrations.js';
import type { ObjectStore } from './object-store.js';

/** Records read and written at a time. */
const BATCH = 500;
/** Record objects fetched at once. */
const PARALLEL = 16;

/**
 * The records a scheduler kept in the shared store before PostgreSQL (`builds/<id>.json`, with
 * `builds/index/<team>.json`), copied into the history once per store: every record object
 * there, listed in an index or not, each written unless the history has it already (what the
 * history has wins: a scheduler wrote it since). An object that is no record (no team or no
 * layers, or not JSON) is skipped and counted in the result, so a start-up log line says how many. The
 * objects stay in the store, unread from then on. Done once: the store's URL is
 * recorded in `history_imports`; schedulers starting together take turns (the migrations'
 * advisory lock), and the second finds it done. A failure leaves it undone, to run again at the
 * next start (what was written stays: writing a record twice changes nothing).
 */
export async function importStoreRecords(history: BuildHistory, shared: SharedStore, objects: ObjectStore, source: string): Promise<{ imported: number; skipped: number; already: boolean }> {
  const client = await history.pool.connect().catch((e: unknown) => {
    throw history.failure(e, 'importing the shared store\'s build records');
  });
  try {
    await client.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK]);
    const done = await client.query('SELECT 1 FROM history_imports WHERE source = $1', [source]);
    if (done.rowCount) return { imported: 0, skipped: 0, already: true };
    const legacy = new StoreIndexRecords(shared, objects);
    const ids = await legacy.ids();
    let imported = 0;
    let skipped = 0;
    for (let i = 0; i < ids.length; i += BATCH) {
      const slice = ids.slice(i, i + BATCH);
      const records: StoredRecord[] = [];
      for (let j = 0; j < slice.length; j += PARALLEL) {
        // An object that is not JSON is no record either (skipped); any other failure stops the import.
        const got = await Promise.all(slice.slice(j, j + PARALLEL).map((id) => legacy.get(id).catch((e: Error) => (e.cause instanceof SyntaxError ? undefined : Promise.reject(e)))));
        for (const r of got) {
          if (r && Array.isArray(r.layers) && typeof r.team === 'string') records.push(r);
          else if (r !== null) skipped++; // null: gone since the listing
        }
      }
      imported += await history.putMany(records, 'skip');
    }
    await client.query('INSERT INTO history_imports (source, records) VALUES ($1, $2) ON CONFLICT DO NOTHING', [source, imported]);
    return { imported, skipped, already: false };
  } catch (e) {
    throw history.failure(e, 'importing the shared store\'s build records');
  } finally {
    await client.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK]).catch(() => undefined);
    client.release();
  }
}
