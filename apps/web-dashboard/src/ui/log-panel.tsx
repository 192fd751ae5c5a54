import { useEffect, useLayoutEffect, useRef, useState } from 'preact/hooks';
import { ApiError, isAbort, type Api } from './api';
import { cleanLog } from './log-text';
import type { BuildRecord, LayerRecord } from './types';

type Fetched = { text: string } | { missing: string } | { error: Error } | null;

/**
 * The stored log of a finished layer (or of a cached one: from when it was built), read once
 * per layer and status; the live stream's output is used while a layer builds.
 */
function useStoredLog(api: Api, buildId: string, layer: LayerRecord | undefined): Fetched {
  const [state, setState] = useState<Fetched>(null);
  // A layer cancelled while it ran has what it printed until then.
  const finished = layer && (layer.status === 'done' || layer.status === 'failed' || layer.status === 'hit' || (layer.status === 'cancelled' && layer.startedAt !== undefined));
  const key = layer ? `${buildId}/${layer.index}/${layer.status}` : '';
  useEffect(() => {
    setState(null);
    if (!layer || !finished) return;
    const ctrl = new AbortController();
    api.text(`/v1/builds/${encodeURIComponent(buildId)}/layers/${layer.index}/log`, ctrl.signal).then(
      (text) => setState({ text }),
      (e: unknown) => {
        if (isAbort(e)) return;
        if (e instanceof ApiError && e.status === 404) setState({ missing: e.message });
        else setState({ error: e as Error });
      },
    );
    return () => ctrl.abort();
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [api, key]);
  return state;
}

/** A layer selector and the selected layer's log, following its end while it grows. */
export function LogPanel({ api, record, logs, selected, onSelect, streamVersion }: { api: Api; record: BuildRecord; logs: ReadonlyMap<number, string>; selected: number; onSelect(i: number): void; streamVersion: number }) {
  const layer = record.layers.find((l) => l.index === selected);
  const stored = useStoredLog(api, record.id, layer);
  const live = logs.get(selected) ?? '';
  const [follow, setFollow] = useState(true);
  const pre = useRef<HTMLPreElement>(null);

  let text = '';
  let note = '';
  if (!layer) note = 'No such layer.';
  else if (stored && 'text' in stored) text = stored.text;
  else if (live) text = live;
  else if (layer.status === 'queued') note = 'Queued: the log starts when a worker takes this layer.';
  else if (layer.status === 'waiting') note = 'Waiting: another build is making this same layer.';
  else if (layer.status === 'building') note = 'Building: waiting for output…';
  else if (layer.status === 'cancelled' && layer.startedAt === undefined) note = 'Cancelled before it ran.';
  else if (stored && 'missing' in stored) text = layer.logTail ?? '';
  else if (stored && 'error' in stored) note = `The log could not be read: ${stored.error.message}`;
  else if (!stored) note = 'Loading the log…';
  if (!text && !note && stored && 'missing' in stored) note = `No log kept for this layer (${stored.missing}).`;
  const shown = cleanLog(text);

  useLayoutEffect(() => {
    const el = pre.current;
    if (el && follow) el.scrollTop = el.scrollHeight;
  }, [shown, follow, streamVersion, selected]);

  const onScroll = () => {
    const el = pre.current;
    if (!el) return;
    const atBottom = el.scrollTop + el.clientHeight >= el.scrollHeight - 24;
    if (atBottom !== follow) setFollow(atBottom);
  };

  return (
    <div class="log-panel" data-testid="log-panel">
      <div class="log-toolbar">
        <div class="log-tabs" role="tablist" aria-label="Layer">
          {record.layers.map((l) => (
            <button
              key={l.index}
              role="tab"
              type="button"
              aria-selected={l.index === selected}
              class={`log-tab st-${l.status} ${l.index === selected ? 'on' : ''}`}
              onClick={() => onSelect(l.index)}
              title={`${l.name}: ${l.status}`}
            >
              <span class="badge-dot" />
              {l.name}
            </button>
          ))}
        </div>
        <label class="follow">
          <input type="checkbox" checked={follow} onChange={(e) => setFollow(e.currentTarget.checked)} /> follow
        </label>
      </div>
      <pre class="log" ref={pre} onScroll={onScroll} data-testid="log" data-layer={selected} aria-live="off">
        {shown || <span class="log-note">{note || 'No output.'}</span>}
      </pre>
    </div>
  );
}
