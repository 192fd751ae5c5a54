import type { FleetEvent, LayerRecord } from '@vmlb/fleet';
import { isFinal, type StoredRecord } from './build-records.js';

/**
 * Folds one worker event into a build record (in place) and says whether anything worth
 * storing changed. Folding is idempotent: a restarted scheduler re-reads the events after the
 * last stored cursor, and some of them were folded before.
 *
 * Success is final here: a chain build is done when its last layer is (every layer a hit or
 * done), a flattened one when the flatten job's `done` carries the image. A failure is not: a
 * job that failed for a retryable reason runs again, so a layer's `failed` only marks the
 * layer, and the build fails when BullMQ says its top job failed (see BuildFollower).
 */
export function foldEvent(r: StoredRecord, ev: FleetEvent): boolean {
  if (isFinal(r)) return false;
  const before = JSON.stringify(r);
  switch (ev.type) {
    case 'job': {
      const l = r.layers[ev.index];
      if (!l || l.status === 'hit') break;
      l.status = ev.status;
      l.worker = ev.worker;
      if (ev.status === 'building') {
        l.startedAt ??= new Date(ev.at).toISOString();
        // A retry after a failure starts clean.
        delete l.exitCode;
        delete l.logTail;
      }
      if (ev.seconds !== undefined) l.seconds = ev.seconds;
      if (ev.bytes !== undefined) l.bytes = ev.bytes;
      if (ev.pulledBytes !== undefined) l.pulledBytes = ev.pulledBytes;
      if (ev.exitCode !== undefined) l.exitCode = ev.exitCode;
      if (ev.logTail !== undefined) l.logTail = ev.logTail;
      if (ev.status === 'done' || ev.status === 'failed') l.finishedAt = new Date(ev.at).toISOString();
      else delete l.finishedAt;
      if (ev.status === 'done' && ev.seconds === undefined && l.startedAt === undefined) {
        // The job found the layer in the shared store (built meanwhile for another build): a hit.
        l.status = 'hit';
        l.source = 'shared';
      } else if (ev.status === 'done' && ev.source === 'local') {
        // The worker's own store had it (a # noshare layer it built before): a hit, not built.
        l.status = 'hit';
        l.source = 'local';
      }
      if (ev.status === 'building' || ev.status === 'waiting' || ev.status === 'done') startBuilding(r);
      if (ev.status === 'done' && r.output === 'chain' && chainComplete(r)) finishChain(r, ev.at);
      break;
    }
    case 'engine': {
      const l = r.layers[ev.index];
      if (!l || l.status === 'hit') break;
      const e = ev.event;
      if (e.type === 'layer-start') {
        if (l.status === 'queued' || l.status === 'waiting' || l.status === 'failed') setBuilding(l, ev.worker, ev.at);
        startBuilding(r);
      } else if (e.type === 'layer-done') {
        l.status = 'done';
        l.seconds = e.seconds;
        l.bytes = e.bytes;
      } else if (e.type === 'layer-failed') {
        l.status = 'failed';
        l.seconds = e.seconds;
        if (e.exitCode !== undefined) l.exitCode = e.exitCode;
        l.logTail = e.logTail;
      }
      break;
    }
    case 'flatten': {
      if (ev.status === 'building') {
        startBuilding(r);
        r.flatten = { worker: ev.worker, startedAt: new Date(ev.at).toISOString() };
        break;
      }
      if (r.flatten && ev.worker === r.flatten.worker) {
        r.flatten.finishedAt = new Date(ev.at).toISOString();
        r.flatten.seconds = Math.round(ev.at - Date.parse(r.flatten.startedAt)) / 1000;
      }
      if (ev.status === 'done' && ev.image) {
        r.image = ev.image;
        r.state = 'done';
        r.finishedAt = new Date(ev.at).toISOString();
        delete r.error;
      } else if (ev.status === 'failed' && ev.message) {
        r.error = `flatten: ${ev.message}`;
      }
      break;
    }
  }
  return JSON.stringify(r) !== before;
}

/** Every layer of the build is in the shared store: a hit, or built. */
export function chainComplete(r: StoredRecord): boolean {
  return r.layers.every((l) => l.status === 'hit' || l.status === 'done');
}

/** A chain build whose last layer is in the shared store is done: its chain is its result. */
export function finishChain(r: StoredRecord, at = Date.now()): void {
  if (isFinal(r)) return;
  r.state = 'done';
  r.finishedAt = new Date(at).toISOString();
  delete r.error;
}

function setBuilding(l: LayerRecord, worker: string, at: number): void {
  l.status = 'building';
  l.worker = worker;
  l.startedAt ??= new Date(at).toISOString();
}

function startBuilding(r: StoredRecord): void {
  if (r.state === 'queued') r.state = 'building';
}

/** Marks the build failed, and its unfinished layers with it. */
export function failBuild(r: StoredRecord, error: string, at = Date.now(), failedLayer?: { index: number; message?: string }): void {
  if (isFinal(r)) return;
  if (failedLayer) {
    const l = r.layers[failedLayer.index];
    if (l) l.status = 'failed';
  }
  for (const l of r.layers) if (l.status === 'queued' || l.status === 'waiting' || l.status === 'building') l.status = 'cancelled';
  r.state = 'failed';
  r.error = error;
  r.finishedAt = new Date(at).toISOString();
}

export function cancelBuild(r: StoredRecord, by: string, at = Date.now()): void {
  if (isFinal(r)) return;
  for (const l of r.layers) if (l.status === 'queued' || l.status === 'waiting' || l.status === 'building') l.status = 'cancelled';
  r.state = 'cancelled';
  r.error = `cancelled by ${by}`;
  r.finishedAt = new Date(at).toISOString();
}

export function finishBuild(r: StoredRecord, image: NonNullable<StoredRecord['image']>, at = Date.now()): void {
  if (isFinal(r)) return;
  r.image = image;
  r.state = 'done';
  r.finishedAt = new Date(at).toISOString();
}

/**
 * A failed layer's cause as the build record's `error`, in one line, said once: a job's failure
 * reason that names the layer already (`layer 02_app exited with status 3`) is taken as it is,
 * anything else is put after `layer NAME failed: `. What a worker of before put after its first
 * line (its log's last lines, under the path of the log on that worker) is left out: the log is
 * the layer's (its `logTail`, and GET /v1/builds/:id/layers/:index/log), and a worker's local
 * path means nothing to whoever reads the build. Other multi-line reasons (a command's stderr)
 * are joined into the one line.
 */
export function layerFailureLine(name: string, reason: string | undefined): string {
  const text = (reason ?? '').split(/\n--- last lines of its log\b/)[0]!;
  const line = text
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean)
    .join(' ')
    // The same, from a scheduler of before that wrote it into the record already.
    .replace(new RegExp(`^layer ${escapeRegExp(name)} failed: (?=layer ${escapeRegExp(name)} )`), '');
  if (!line) return `layer ${name} failed`;
  return line.startsWith(`layer ${name} `) ? line : `layer ${name} failed: ${line}`;
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
