import { useEffect, useState } from 'preact/hooks';

/**
 * Whether the live views are getting answers: what the top bar's dot shows. Every poll and
 * the event stream report here.
 */
export type Liveness = 'live' | 'paused' | 'offline';

let lastOk = 0;
let lastFailure = 0;
let failureMessage = '';
const listeners = new Set<() => void>();
const notify = () => listeners.forEach((l) => l());

export function reportOk(): void {
  lastOk = Date.now();
  if (lastFailure) {
    lastFailure = 0;
    failureMessage = '';
  }
  notify();
}

export function reportFailure(message: string): void {
  lastFailure = Date.now();
  failureMessage = message;
  notify();
}

export function useLiveness(): { state: Liveness; message: string; lastOk: number } {
  const [, setTick] = useState(0);
  useEffect(() => {
    const l = () => setTick((t) => t + 1);
    listeners.add(l);
    document.addEventListener('visibilitychange', l);
    return () => {
      listeners.delete(l);
      document.removeEventListener('visibilitychange', l);
    };
  }, []);
  const state: Liveness = document.hidden ? 'paused' : lastFailure > lastOk ? 'offline' : 'live';
  return { state, message: failureMessage, lastOk };
}
