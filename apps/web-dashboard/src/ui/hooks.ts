import { useCallback, useEffect, useRef, useState } from 'preact/hooks';
import { ApiError, isAbort, NetworkError } from './api';
import { reportFailure, reportOk } from './live-status';

export interface Polled<T> {
  data: T | undefined;
  error: Error | undefined;
  /** True until the first answer for the current arguments. */
  loading: boolean;
  /** When `data` arrived (ms since the epoch). */
  updatedAt: number;
  refresh(): void;
}

/**
 * Loads now and again every `everyMs` after each answer, while the tab is visible (a hidden
 * tab stops asking; showing it again asks at once). New `deps` start over; a new `everyMs`
 * applies from the next wait. A failed poll keeps the last data on screen and says why beside it.
 */
export function usePoll<T>(load: (signal: AbortSignal) => Promise<T>, deps: unknown[], everyMs = 2000): Polled<T> {
  const [state, setState] = useState<{ data: T | undefined; error: Error | undefined; loading: boolean; updatedAt: number }>({ data: undefined, error: undefined, loading: true, updatedAt: 0 });
  const loadRef = useRef(load);
  loadRef.current = load;
  const everyRef = useRef(everyMs);
  everyRef.current = everyMs;
  const kick = useRef<() => void>(() => undefined);

  useEffect(() => {
    let stopped = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    let ctrl: AbortController | undefined;
    let running = false;
    setState({ data: undefined, error: undefined, loading: true, updatedAt: 0 });

    const schedule = () => {
      if (stopped) return;
      clearTimeout(timer);
      timer = setTimeout(tick, everyRef.current);
    };
    const tick = async () => {
      if (stopped || running) return;
      if (document.hidden) return; // visibilitychange brings it back
      running = true;
      ctrl = new AbortController();
      try {
        const data = await loadRef.current(ctrl.signal);
        if (stopped) return;
        reportOk();
        setState({ data, error: undefined, loading: false, updatedAt: Date.now() });
      } catch (e) {
        if (stopped || isAbort(e)) return;
        if (e instanceof NetworkError) reportFailure(e.message);
        else if (e instanceof ApiError && e.status >= 500) reportFailure(e.message);
        setState((s) => ({ ...s, error: e as Error, loading: false }));
      } finally {
        running = false;
        schedule();
      }
    };
    const onVisibility = () => {
      if (!document.hidden) {
        clearTimeout(timer);
        void tick();
      }
    };
    kick.current = () => {
      clearTimeout(timer);
      void tick();
    };
    document.addEventListener('visibilitychange', onVisibility);
    void tick();
    return () => {
      stopped = true;
      clearTimeout(timer);
      ctrl?.abort();
      document.removeEventListener('visibilitychange', onVisibility);
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, deps);

  const refresh = useCallback(() => kick.current(), []);
  return { ...state, refresh };
}

/** The current time, ticking every `everyMs` (for "12 s ago" and running bars). */
export function useNow(everyMs = 1000): number {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const t = setInterval(() => setNow(Date.now()), everyMs);
    return () => clearInterval(t);
  }, [everyMs]);
  return now;
}

export interface Route {
  /** The path segments after `#/`, e.g. ['builds', 'b0abc…']. */
  parts: string[];
  params: URLSearchParams;
}

function parseHash(): Route {
  const hash = location.hash.replace(/^#\/?/, '');
  const [path = '', search = ''] = hash.split('?', 2);
  return { parts: path.split('/').filter(Boolean).map(decodeURIComponent), params: new URLSearchParams(search) };
}

/** Hash routing: `#/builds?team=&state=`, `#/builds/<id>`, `#/fleet`, `#/cache`. */
export function useRoute(): Route {
  const [route, setRoute] = useState(parseHash);
  useEffect(() => {
    const on = () => setRoute(parseHash());
    window.addEventListener('hashchange', on);
    return () => window.removeEventListener('hashchange', on);
  }, []);
  return route;
}

export function href(parts: string[], params: Record<string, string | undefined> = {}): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v) q.set(k, v);
  const s = q.toString();
  return `#/${parts.map(encodeURIComponent).join('/')}${s ? `?${s}` : ''}`;
}

/**
 * `fn` at most once per `ms`: the first call runs at once, calls within the window fold into
 * one more run at its end (so the last change is never lost).
 */
export function useThrottled(fn: () => void, ms: number): () => void {
  const fnRef = useRef(fn);
  fnRef.current = fn;
  const state = useRef<{ last: number; timer: ReturnType<typeof setTimeout> | undefined }>({ last: 0, timer: undefined });
  useEffect(() => () => clearTimeout(state.current.timer), []);
  return useCallback(() => {
    const s = state.current;
    if (s.timer) return;
    const wait = s.last + ms - Date.now();
    if (wait <= 0) {
      s.last = Date.now();
      fnRef.current();
      return;
    }
    s.timer = setTimeout(() => {
      s.timer = undefined;
      s.last = Date.now();
      fnRef.current();
    }, wait);
  }, [ms]);
}
