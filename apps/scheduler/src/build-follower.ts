import type { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { endEventStream, flattenJobId, layerJobId, redisKeys, type FleetEvent } from '@vmlb/fleet';
import { isFinal, type StoredRecord } from './build-records.js';
import type { BuildHistory } from './build-history.js';
import { cancelBuild, chainComplete, failBuild, finishBuild, finishChain, foldEvent, layerFailureLine } from './record-fold.js';
import type { Logger } from './logger.js';
import type { SharedStore } from '@vmlb/layer-engine';
import { findImage } from './image-manifest.js';

/**
 * Follows builds' event streams with one blocking XREAD over all of them and folds each worker
 * event into the build's record. It runs in one of two roles, set by the leader lease
 * (leader-lease.ts):
 *
 * - **leading** (one scheduler of the fleet): it follows every unfinished build of the history
 *   (those submitted to any scheduler, picked up each round), writes each record (with the
 *   stream id it has folded up to) whenever its state changes, so the next leader goes on from
 *   there, and asks BullMQ now and then how each build's jobs stand: that is what says a build
 *   failed for good (a job failed past its attempts, or a child failed it), and it catches a
 *   worker that died without a word. Once a final record is stored it appends an `ended` event
 *   to the build's stream.
 * - **observing** (every other scheduler): it follows only the builds this scheduler was asked
 *   about (submitted here, or an event stream open here), folds them in memory for a live view,
 *   writes nothing, and ends one when its stream says `ended` or the history has it final.
 *
 * Followers of one build (the SSE route) subscribe here and get each event as it is folded,
 * then the final record. Once a build's record is final, its stream expires sooner
 * (EVENTS_FINISHED_TTL_S). Memory stays flat however much a build's layers print: a stream
 * holds little output (see libs/fleet/src/event-stream.ts) and is read READ_COUNT entries at
 * a time, each folded and passed on, not kept.
 */

/** Entries one XREAD takes per stream: with batches of at most 32 KiB of output, at most ~3 MiB. */
export const READ_COUNT = 100;

export interface StreamEntry {
  id: string;
  event: FleetEvent;
}

export type FollowerMessage = { type: 'event'; entry: StreamEntry } | { type: 'end'; record: StoredRecord };
type Listener = (m: FollowerMessage) => void;

interface Active {
  record: StoredRecord;
  cursor: string;
  dirty: boolean;
  listeners: Set<Listener>;
  /** When to ask BullMQ next (ms since the epoch). */
  nextCheck: number;
  writing: Promise<void>;
}

export interface FollowerOptions {
  /** How long one XREAD waits for events. @default 1000 */
  blockMs?: number;
  /** How often BullMQ is asked about each build; sooner after a layer failed. @default 2000 */
  checkEveryMs?: number;
  onFinished?: (r: StoredRecord) => void;
}

/** Stream ids are `<ms>-<seq>`: compares two of them. */
export function compareStreamIds(a: string, b: string): number {
  const [am = 0, as = 0] = a.split('-').map(Number);
  const [bm = 0, bs = 0] = b.split('-').map(Number);
  return am - bm || as - bs;
}

/** Parses one XREAD/XRANGE entry as the event stream writes it (JSON in field `e`). */
export function parseEntry(id: string, fields: string[]): StreamEntry | null {
  const i = fields.indexOf('e');
  if (i < 0 || i + 1 >= fields.length) return null;
  try {
    return { id, event: JSON.parse(fields[i + 1]!) as FleetEvent };
  } catch {
    return null;
  }
}

export class BuildFollower {
  private readonly active = new Map<string, Active>();
  private readonly blockMs: number;
  private readonly checkEveryMs: number;
  private closed = false;
  private leading = false;
  /** When to look for builds to follow in the history next (leading). */
  private nextAdopt = 0;
  private loop: Promise<void> | undefined;
  private wake: (() => void) | undefined;

  constructor(
    private readonly deps: {
      /** For BullMQ-side questions and XRANGE. */
      redis: Redis;
      /** A connection of its own for the blocking XREAD. */
      blocking: Redis;
      records: BuildHistory;
      /** A pool's own namespace of the shared store (a record's `pool`; undefined: default). */
      sharedOf: (pool: string | undefined) => SharedStore;
      queuesOf: (pool: string | undefined) => { layers: Queue; flatten: Queue };
      log: Logger;
    },
    private readonly opts: FollowerOptions = {},
  ) {
    this.blockMs = opts.blockMs ?? 1000;
    this.checkEveryMs = opts.checkEveryMs ?? 2000;
  }

  /** Starts the loop (observing until setLeading(true)). */
  start(): void {
    this.loop ??= this.run();
  }

  /** Leading: follow every unfinished build of the history, and write records; else observe. */
  setLeading(leading: boolean): void {
    if (this.leading === leading) return;
    this.leading = leading;
    this.nextAdopt = 0;
    for (const a of this.active.values()) a.nextCheck = Date.now();
    this.wake?.();
  }

  get isLeading(): boolean {
    return this.leading;
  }

  /** Follows a build (its record must be stored already). */
  track(record: StoredRecord): void {
    if (isFinal(record) || this.active.has(record.id)) return;
    this.active.set(record.id, { record, cursor: record.cursor ?? '0', dirty: false, listeners: new Set(), nextCheck: Date.now() + this.checkEveryMs, writing: Promise.resolve() });
    this.wake?.();
  }

  /** The live record of a followed build (fresher than the stored one), or undefined. */
  live(id: string): StoredRecord | undefined {
    return this.active.get(id)?.record;
  }

  /** Builds followed as the leader (0 while observing: the leader counts the fleet's). */
  get activeCount(): number {
    return this.leading ? this.active.size : 0;
  }

  /**
   * Gets every event folded from now on, then the final record; undefined when the build is
   * final. An unfinished build not followed yet is followed from now (an observer's too).
   */
  subscribe(record: StoredRecord, listener: Listener): (() => void) | undefined {
    this.track(record);
    const a = this.active.get(record.id);
    if (!a) return undefined;
    a.listeners.add(listener);
    return () => a.listeners.delete(listener);
  }

  /**
   * Cancels a build: marked at once in memory when followed (before the first await, so a job
   * check of the loop meanwhile cannot fail it), then in the history under a row lock (whichever
   * scheduler is asked: the leader's next write of it is then refused and it ends it).
   * Returns the stored record, or undefined when it was final already.
   */
  async cancel(id: string, by: string): Promise<StoredRecord | undefined> {
    const a = this.active.get(id);
    if (a && !isFinal(a.record)) cancelBuild(a.record, by);
    let was: StoredRecord | undefined;
    const stored = await this.deps.records.update(id, (r) => {
      if (isFinal(r)) return null;
      was = r;
      cancelBuild(r, by);
      if (a) r.cursor = a.cursor;
      return r;
    });
    if (!was || !stored) return undefined;
    if (a && this.active.get(id) === a) this.finish(a, stored);
    return stored;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.wake?.();
    this.deps.blocking.disconnect();
    await this.loop?.catch(() => undefined);
    await Promise.all([...this.active.values()].map((a) => a.writing.catch(() => undefined)));
  }

  private async run(): Promise<void> {
    while (!this.closed) {
      try {
        if (this.leading && Date.now() >= this.nextAdopt) await this.adopt();
        if (this.active.size === 0) {
          await new Promise<void>((resolve) => {
            const t = setTimeout(resolve, this.blockMs);
            this.wake = () => {
              clearTimeout(t);
              resolve();
            };
          });
          this.wake = undefined;
          continue;
        }
        await this.readOnce();
        if (this.leading) {
          await this.checkJobs();
          await this.flush();
        } else {
          await this.checkStored();
        }
      } catch (e) {
        if (this.closed) return;
        this.deps.log.warn('following builds failed; trying again', { error: (e as Error).message });
        await new Promise((r) => setTimeout(r, 1000));
      }
    }
  }

  /** Leading: follows the history's unfinished builds not followed yet (submitted to any scheduler). */
  private async adopt(): Promise<void> {
    this.nextAdopt = Date.now() + this.blockMs;
    for (const id of await this.deps.records.unfinishedIds()) {
      if (this.active.has(id)) continue;
      const r = await this.deps.records.get(id);
      if (r) this.track(r);
    }
  }

  private async readOnce(): Promise<void> {
    const ids = [...this.active.keys()];
    const keys = ids.map((id) => redisKeys.events(id));
    const cursors = ids.map((id) => this.active.get(id)!.cursor);
    const reply = (await this.deps.blocking.xread('COUNT', READ_COUNT, 'BLOCK', this.blockMs, 'STREAMS', ...keys, ...cursors)) as Array<[string, Array<[string, string[]]>]> | null;
    for (const [key, entries] of reply ?? []) {
      const id = key.slice(redisKeys.events('').length);
      const a = this.active.get(id);
      if (!a) continue;
      for (const [streamId, fields] of entries) {
        a.cursor = streamId;
        const entry = parseEntry(streamId, fields);
        if (!entry) continue;
        if (entry.event.type === 'ended') {
          // The leader stored the final record: take it from the history.
          a.nextCheck = 0;
          continue;
        }
        if (foldEvent(a.record, entry.event)) {
          a.dirty = true;
          if (entry.event.type === 'job' && entry.event.status === 'failed') a.nextCheck = Date.now() + 200;
        }
        for (const l of a.listeners) l({ type: 'event', entry });
      }
      a.record.cursor = a.cursor;
    }
  }

  /** Observing: ends the builds the history has final (asked every checkEveryMs, at once after an `ended`). */
  private async checkStored(): Promise<void> {
    const now = Date.now();
    const due = [...this.active.values()].filter((a) => a.nextCheck <= now);
    if (due.length === 0) return;
    for (const a of due) a.nextCheck = now + this.checkEveryMs;
    const finals = await this.deps.records.finalStates(due.map((a) => a.record.id));
    for (const a of due) {
      if (!finals.has(a.record.id)) continue;
      const stored = await this.deps.records.get(a.record.id);
      if (stored && this.active.get(a.record.id) === a) this.finish(a, stored);
    }
  }

  /** Asks BullMQ how the builds due for a check stand. */
  private async checkJobs(): Promise<void> {
    const now = Date.now();
    for (const a of this.active.values()) {
      if (a.nextCheck > now || isFinal(a.record)) continue;
      a.nextCheck = now + this.checkEveryMs;
      const r = a.record;
      if (r.output === 'chain') {
        await this.checkChainJobs(r, () => (a.dirty = true));
        continue;
      }
      const flatten = await this.deps.queuesOf(r.pool).flatten.getJob(flattenJobId(r.id));
      const state = flatten ? await flatten.getState() : 'unknown';
      if (state === 'failed') {
        const why = await this.failure(r, flatten?.failedReason);
        failBuild(r, why.message, Date.now(), why.layer);
        a.dirty = true;
      } else if (state === 'completed') {
        // The flatten's own `done` event normally came first; this covers one that was lost.
        const image = r.image ?? (await this.imageOf(r));
        if (image) finishBuild(r, image);
        else failBuild(r, 'the flatten job completed but left no image in the shared store');
        a.dirty = true;
      } else if (state === 'unknown') {
        failBuild(r, 'its jobs are gone from the queue (was Redis emptied?): submit the project again');
        a.dirty = true;
      }
    }
  }

  /**
   * A chain build (no flatten job): its top job is its last layer's. Completed: the build is
   * done (its `done` event normally came first); failed: it failed; gone: it is done if every
   * layer made it to the shared store, else its jobs were lost.
   */
  private async checkChainJobs(r: StoredRecord, changed: () => void): Promise<void> {
    const last = r.layers[r.layers.length - 1];
    if (!last) return;
    const job = await this.deps.queuesOf(r.pool).layers.getJob(layerJobId(r.id, last.index));
    const state = job ? await job.getState() : 'unknown';
    if (state === 'failed') {
      const why = await this.failure(r, undefined);
      failBuild(r, why.message, Date.now(), why.layer);
      changed();
    } else if (state === 'completed' || (state === 'unknown' && chainComplete(r))) {
      finishChain(r);
      changed();
    } else if (state === 'unknown') {
      failBuild(r, 'its jobs are gone from the queue (was Redis emptied?): submit the project again');
      changed();
    }
  }

  /** Why a build failed: the first failed layer job's reason, else the flatten's. */
  private async failure(r: StoredRecord, flattenReason: string | undefined): Promise<{ message: string; layer?: { index: number } }> {
    for (const l of r.layers) {
      if (l.status === 'hit') continue;
      const job = await this.deps.queuesOf(r.pool).layers.getJob(layerJobId(r.id, l.index));
      if (job && (await job.getState()) === 'failed') {
        return { message: layerFailureLine(l.name, job.failedReason), layer: { index: l.index } };
      }
    }
    const failedLayer = r.layers.find((l) => l.status === 'failed');
    if (failedLayer) return { message: `layer ${failedLayer.name} ${failedLayer.exitCode !== undefined ? `exited with status ${failedLayer.exitCode}` : 'failed'}`, layer: { index: failedLayer.index } };
    return { message: flattenReason === undefined ? 'its last layer job failed' : `flatten failed: ${flattenReason}` };
  }

  private async imageOf(r: StoredRecord): Promise<StoredRecord['image']> {
    const top = r.layers[r.layers.length - 1];
    return top ? findImage(this.deps.sharedOf(r.pool), top.key, r.pool) : null;
  }

  private async flush(): Promise<void> {
    for (const a of [...this.active.values()]) {
      if (!a.dirty) continue;
      try {
        await this.persist(a);
      } catch (e) {
        this.deps.log.warn('could not store a build record; trying again', { buildId: a.record.id, error: (e as Error).message });
      }
    }
  }

  /**
   * Writes the record (one write at a time per build, each of the latest state); a final one
   * ends its followers. A refused write (the history has it final: cancelled through another
   * scheduler, or finished by another leader) ends it with the stored record.
   */
  private persist(a: Active): Promise<void> {
    a.dirty = false;
    const write = a.writing.catch(() => undefined).then(async () => {
      let written: boolean;
      try {
        written = await this.deps.records.put(structuredClone(a.record));
      } catch (e) {
        a.dirty = true;
        throw e;
      }
      if (this.active.get(a.record.id) !== a) return;
      if (!written) {
        const stored = await this.deps.records.get(a.record.id);
        if (stored && isFinal(stored)) this.finish(a, stored);
        return;
      }
      if (isFinal(a.record) && !a.dirty) this.finish(a, a.record);
    });
    a.writing = write;
    return write;
  }

  /** A build's record is final in the history: its followers get it, its stream says so and expires sooner. */
  private finish(a: Active, final: StoredRecord): void {
    if (this.active.get(final.id) !== a) return;
    this.active.delete(final.id);
    a.record = final;
    if (this.leading) {
      void endEventStream(this.deps.redis, final.id, final.state).catch((e: unknown) => this.deps.log.warn("could not end a finished build's event stream", { buildId: final.id, error: (e as Error).message }));
      this.opts.onFinished?.(final);
    }
    for (const l of a.listeners) l({ type: 'end', record: final });
    a.listeners.clear();
  }
}
