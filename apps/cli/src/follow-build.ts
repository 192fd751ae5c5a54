import type { BuildRecord } from '@vmlb/fleet';
import { VmlbError, type BuildEvent } from '@vmlb/layer-engine';
import { CommandExit, EXIT_INTERRUPTED } from './command-exit.js';
import { check, request } from './fleet-client.js';
import type { Endpoint } from './fleet-endpoint.js';
import { readSse } from './server-sent-events.js';

/** Following a fleet build's events to its end (submit, watch, logs --follow, pull --follow), and stopping to follow it. */

/** How long a follower keeps trying to reach a scheduler that went away, before it gives up (exit 3). */
export const RECONNECT_FOR_MS = 30 * 60_000;
/** The longest wait between two tries. */
const RECONNECT_MAX_DELAY_MS = 10_000;

/**
 * Follows a build's events until its final record, feeding each BuildEvent to `onEvent`. When
 * the scheduler goes away (restarted, unreachable, answering 5xx) it says so once, tries again
 * with a growing delay (up to 10 s) for as long as RECONNECT_FOR_MS, and resumes after the
 * last event seen (Last-Event-ID); the build goes on in the fleet meanwhile. A build that is
 * gone (404) or a refused token ends it at once.
 */
export async function followBuild(ep: Endpoint, id: string, onEvent: (e: BuildEvent) => void, signal: AbortSignal, reconnectForMs = RECONNECT_FOR_MS): Promise<BuildRecord> {
  let lastId: string | undefined;
  let failures = 0;
  let downSince: number | undefined;
  for (;;) {
    let lastError: unknown;
    try {
      const res = await check(
        await request(ep, 'GET', `/v1/builds/${encodeURIComponent(id)}/events`, {
          headers: { accept: 'text/event-stream', ...(lastId ? { 'last-event-id': lastId } : {}) },
          signal,
        }),
        `following build ${id}`,
      );
      if (!res.body) throw new VmlbError('FLEET_ERROR', `following build ${id}: the scheduler sent no event stream`);
      // Reached once the stream is open, not at its first event: a resumed stream (Last-Event-ID)
      // sends nothing until the build moves on, which can be minutes.
      if (downSince !== undefined) {
        onEvent({ type: 'notice', at: Date.now(), message: `reached the scheduler again after ${Math.round((Date.now() - downSince) / 1000)} s; following build ${id} from where it was` });
        downSince = undefined;
      }
      for await (const m of readSse(res.body)) {
        failures = 0;
        if (m.id) lastId = m.id;
        if (m.event === 'end') return JSON.parse(m.data) as BuildRecord;
        if (m.event === 'message') onEvent(JSON.parse(m.data) as BuildEvent);
      }
    } catch (e) {
      if (signal.aborted || (e instanceof VmlbError && !e.retryable)) throw e;
      lastError = e;
    }
    failures++;
    if (downSince === undefined) {
      downSince = Date.now();
      const why = lastError instanceof Error ? lastError.message : 'the event stream ended before the build did';
      onEvent({ type: 'notice', at: Date.now(), message: `lost the scheduler (${why}); reconnecting — build ${id} goes on in the fleet meanwhile` });
    }
    if (Date.now() - downSince > reconnectForMs) {
      throw new VmlbError('FLEET_UNREACHABLE', `following build ${id}: the scheduler at ${ep.server} did not answer for ${Math.round(reconnectForMs / 60_000)} min; the build may still go on (vmlb builds)`, { retryable: true });
    }
    await new Promise((r) => setTimeout(r, Math.min(500 * 2 ** (failures - 1), RECONNECT_MAX_DELAY_MS)));
  }
}

/** Ctrl-C while following: the build goes on in the fleet; say how to get back to it. */
function detachOnInterrupt(ac: AbortController, id: () => string | undefined): () => void {
  const onSignal = () => {
    const b = id();
    process.stderr.write(
      b ? `\nvmlb: stopped following; build ${b} goes on in the fleet (vmlb builds; vmlb pull ${b} -o FILE; vmlb cancel ${b})\n` : '\nvmlb: interrupted\n',
    );
    ac.abort();
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  return () => {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  };
}

/**
 * Runs `follow` with SIGINT and SIGTERM aborting its signal (detachOnInterrupt: the build goes
 * on in the fleet): then it throws a CommandExit of status 130 with nothing more to say.
 * `cleanup` runs in any case, before the signal handlers go.
 */
export async function untilInterrupted<T>(buildId: () => string | undefined, follow: (signal: AbortSignal) => Promise<T>, cleanup: () => void = () => undefined): Promise<T> {
  const ac = new AbortController();
  const undo = detachOnInterrupt(ac, buildId);
  try {
    return await follow(ac.signal);
  } catch (e) {
    if (ac.signal.aborted) throw new CommandExit(EXIT_INTERRUPTED);
    throw e;
  } finally {
    cleanup();
    undo();
  }
}

/** A build's final states: it changes no more. */
export const FINAL_STATES: readonly string[] = ['done', 'failed', 'cancelled'];

/** The error (exit 1) of a followed build that ended other than done. */
export function failedBuild(r: BuildRecord): VmlbError {
  return new VmlbError('BUILD_FAILED', `build ${r.id} ${r.state}${r.error ? `: ${r.error.split('\n')[0]}` : ''}`);
}
