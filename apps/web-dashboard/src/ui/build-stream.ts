import { useEffect, useRef, useState } from 'preact/hooks';
import { ApiError, isAbort, type Api } from './api';
import { reportFailure, reportOk } from './live-status';
import type { BuildEvent, BuildRecord } from './types';

export interface ActivityLine {
  at: number;
  text: string;
  tone?: 'ok' | 'bad' | 'info' | 'hit';
}

export interface BuildStream {
  /** Output of each layer (by index) as the stream brought it. */
  logs: ReadonlyMap<number, string>;
  activity: readonly ActivityLine[];
  connected: boolean;
  /** The stream sent its `end`: the build is over and nothing more will come. */
  ended: boolean;
  /** An error that stopped the stream for good (e.g. 404). */
  error: Error | undefined;
  /** Changes whenever logs or activity do. */
  version: number;
}

/** What one layer's log may hold in the page; older output is dropped from the front. */
const MAX_LOG_CHARS = 2_000_000;
const MAX_ACTIVITY = 200;

function describe(e: BuildEvent): ActivityLine | null {
  switch (e.type) {
    case 'notice':
      return { at: e.at, text: e.message, tone: 'info' };
    case 'layer-cached':
      return { at: e.at, text: `${e.name}: cached (${e.source})`, tone: 'hit' };
    case 'layer-start':
      return { at: e.at, text: `${e.name}: started` };
    case 'layer-step':
      return { at: e.at, text: `${e.name}: ${e.step}` };
    case 'layer-done':
      return { at: e.at, text: `${e.name}: done in ${e.seconds.toFixed(2)}s`, tone: 'ok' };
    case 'layer-failed': {
      // The message names the layer already (`layer 02_app exited with status 3`): say it once.
      const own = `layer ${e.name} `;
      const why = e.message.startsWith(own) ? e.message.slice(own.length) : `failed${e.exitCode !== undefined ? ` (exit ${e.exitCode})` : ''}: ${e.message}`;
      return { at: e.at, text: `${e.name}: ${why}`, tone: 'bad' };
    }
    case 'output':
      return { at: e.at, text: `image written: ${e.path}`, tone: 'ok' };
    case 'done':
      return { at: e.at, text: `build done: ${e.built} built, ${e.cached} cached in ${e.seconds.toFixed(1)}s`, tone: 'ok' };
    case 'failed':
      return { at: e.at, text: `build ${e.code === 'CANCELLED' ? 'cancelled' : 'failed'}: ${e.message}`, tone: 'bad' };
    default:
      return null;
  }
}

/**
 * Follows `GET /v1/builds/:id/events`: each layer's output, an activity list, and two
 * callbacks — `onLayer` when a layer changed (the page re-reads the record), `onEnd` with the
 * final record. A dropped stream is opened again (Last-Event-ID: only what came after) with a
 * growing pause, until the build's `end`.
 */
export function useBuildStream(api: Api, id: string, onLayer: () => void, onEnd: (r: BuildRecord) => void): BuildStream {
  const logs = useRef(new Map<number, string>());
  const activity = useRef<ActivityLine[]>([]);
  const [status, setStatus] = useState<{ connected: boolean; ended: boolean; error: Error | undefined }>({ connected: false, ended: false, error: undefined });
  const [version, setVersion] = useState(0);
  const cb = useRef({ onLayer, onEnd });
  cb.current = { onLayer, onEnd };

  useEffect(() => {
    logs.current = new Map();
    activity.current = [];
    setStatus({ connected: false, ended: false, error: undefined });
    setVersion((v) => v + 1);
    const ctrl = new AbortController();
    let lastId: string | undefined;
    let ended = false;
    let frame = 0;
    const seen = new Set<string>();
    const bump = () => {
      if (frame) return;
      frame = requestAnimationFrame(() => {
        frame = 0;
        setVersion((v) => v + 1);
      });
    };

    const onMessage = (m: { event: string; data: string; id?: string }) => {
      if (m.id) lastId = m.id;
      reportOk();
      if (m.event === 'end') {
        ended = true;
        cb.current.onEnd(JSON.parse(m.data) as BuildRecord);
        return;
      }
      let e: BuildEvent;
      try {
        e = JSON.parse(m.data) as BuildEvent;
      } catch {
        return;
      }
      if (e.type === 'layer-log') {
        const prev = logs.current.get(e.index) ?? '';
        let next = prev + e.chunk;
        if (next.length > MAX_LOG_CHARS) next = next.slice(next.length - MAX_LOG_CHARS);
        logs.current.set(e.index, next);
        bump();
        return;
      }
      const line = describe(e);
      // A stream opened again without an id repeats the plan and hits: show them once.
      const key = `${e.type}|${e.at}|${'index' in e ? e.index : ''}|${line?.text ?? ''}`;
      if (line && !seen.has(key)) {
        seen.add(key);
        activity.current = [...activity.current, line].slice(-MAX_ACTIVITY);
        bump();
      }
      if (e.type !== 'plan' && e.type !== 'notice') cb.current.onLayer();
    };

    void (async () => {
      let failures = 0;
      while (!ctrl.signal.aborted && !ended) {
        try {
          setStatus((s) => ({ ...s, connected: true }));
          await api.events(`/v1/builds/${encodeURIComponent(id)}/events`, onMessage, ctrl.signal, lastId);
          failures = 0;
        } catch (e) {
          if (isAbort(e) || ctrl.signal.aborted) return;
          if (e instanceof ApiError && e.status < 500) {
            setStatus({ connected: false, ended: false, error: e });
            return;
          }
          failures++;
          reportFailure((e as Error).message);
        }
        setStatus((s) => ({ ...s, connected: false, ended }));
        if (ended) return;
        // The stream ended without `end` (a proxy or the scheduler restarted): open it again.
        await new Promise((r) => setTimeout(r, Math.min(1000 * 2 ** failures, 15_000)));
      }
    })();

    return () => {
      ctrl.abort();
      cancelAnimationFrame(frame);
    };
  }, [api, id]);

  return { logs: logs.current, activity: activity.current, ...status, version };
}
