import { useEffect, useRef, useState } from 'preact/hooks';
import { isAbort, type Api } from './api';
import type { BuildRecord } from './types';

type Phase = 'idle' | 'confirming' | 'cancelling';

export interface CancelAction {
  phase: Phase;
  /** Why the last try did not cancel the build, as the server said it. */
  error: Error | undefined;
  ask(): void;
  keep(): void;
  confirm(): void;
}

/**
 * `POST /v1/builds/:id/cancel`, asked for in two steps (the button, then "Cancel this build?").
 * `onCancelled` gets the cancelled record the server answers with; a refusal (e.g. 409: it
 * finished meanwhile) is kept in `error` and `onSettled` lets the page read the record again.
 */
export function useCancelBuild(api: Api, id: string, onCancelled: (r: BuildRecord) => void, onSettled: () => void): CancelAction {
  const [phase, setPhase] = useState<Phase>('idle');
  const [error, setError] = useState<Error | undefined>(undefined);
  const ctrl = useRef<AbortController | null>(null);
  const running = useRef(false);
  const cb = useRef({ onCancelled, onSettled });
  cb.current = { onCancelled, onSettled };
  useEffect(() => () => ctrl.current?.abort(), []);

  return {
    phase,
    error,
    ask: () => setPhase((p) => (p === 'idle' ? 'confirming' : p)),
    keep: () => setPhase((p) => (p === 'confirming' ? 'idle' : p)),
    confirm: () => {
      if (running.current) return;
      running.current = true;
      setPhase('cancelling');
      setError(undefined);
      const c = new AbortController();
      ctrl.current = c;
      api.post<BuildRecord & { jobs?: { removed: number; running: number } }>(`/v1/builds/${encodeURIComponent(id)}/cancel`, c.signal).then(
        (r) => {
          running.current = false;
          if (c.signal.aborted) return;
          setPhase('idle');
          cb.current.onCancelled(r);
          cb.current.onSettled();
        },
        (e: unknown) => {
          running.current = false;
          if (isAbort(e) || c.signal.aborted) return;
          setPhase('idle');
          setError(e as Error);
          cb.current.onSettled();
        },
      );
    },
  };
}

/** The header's "Cancel build" button, and in its place the inline confirmation. */
export function CancelBuildControl({ action }: { action: CancelAction }) {
  const keepRef = useRef<HTMLButtonElement>(null);
  const asking = action.phase !== 'idle';
  // The safe answer has the focus while the question stands (Enter keeps the build).
  useEffect(() => {
    if (action.phase === 'confirming') keepRef.current?.focus();
  }, [action.phase]);

  if (!asking) {
    return (
      <div class="build-actions">
        <button type="button" class="btn btn-danger-outline" data-testid="cancel-build" onClick={action.ask}>
          Cancel build
        </button>
      </div>
    );
  }
  const busy = action.phase === 'cancelling';
  return (
    <div class="build-actions">
      <div class="confirm" role="group" aria-label="Cancel this build?" data-testid="cancel-confirm" aria-busy={busy}>
        <span class="confirm-question">{busy ? 'Cancelling the build…' : 'Cancel this build?'}</span>
        <button type="button" class="btn btn-danger" data-testid="cancel-confirm-yes" disabled={busy} onClick={action.confirm}>
          {busy ? 'Cancelling…' : 'Cancel build'}
        </button>
        <button
          type="button"
          class="btn"
          ref={keepRef}
          data-testid="cancel-confirm-no"
          disabled={busy}
          onClick={action.keep}
          onKeyDown={(e) => e.key === 'Escape' && action.keep()}
        >
          Keep it
        </button>
      </div>
    </div>
  );
}
