import { readSse, type SseMessage } from './sse';

/** An answer of the API that is not a success: its status and `{ error: { code, message } }`. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

/** No answer at all (the server is down, the network dropped): worth retrying. */
export class NetworkError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'NetworkError';
  }
}

export const isAbort = (e: unknown) => e instanceof DOMException && e.name === 'AbortError';

async function errorFrom(res: Response): Promise<ApiError> {
  const text = await res.text().catch(() => '');
  try {
    const body = JSON.parse(text) as { error?: { code?: string; message?: string } };
    if (body.error?.message) return new ApiError(res.status, body.error.code ?? 'ERROR', body.error.message);
  } catch {
    /* not JSON: say what came */
  }
  return new ApiError(res.status, 'HTTP_' + res.status, `${res.status} ${res.statusText || 'error'}${text ? `: ${text.slice(0, 200)}` : ''}`);
}

/**
 * The API with one team token: every request sends `Authorization: Bearer TOKEN`, and a 401
 * (the token was revoked, or mistyped) calls `onUnauthorized` so the app asks for a token again.
 */
export class Api {
  constructor(
    private readonly token: string,
    private readonly onUnauthorized: (message: string) => void = () => undefined,
  ) {}

  private async request(path: string, init: RequestInit & { accept: string }): Promise<Response> {
    let res: Response;
    try {
      res = await fetch(path, { ...init, headers: { authorization: `Bearer ${this.token}`, accept: init.accept }, cache: 'no-store' });
    } catch (e) {
      if (isAbort(e)) throw e;
      throw new NetworkError(`the server does not answer (${(e as Error).message})`);
    }
    if (res.ok) return res;
    const err = await errorFrom(res);
    if (res.status === 401) this.onUnauthorized(err.message);
    throw err;
  }

  async json<T>(path: string, signal?: AbortSignal): Promise<T> {
    const res = await this.request(path, { accept: 'application/json', signal: signal ?? null });
    return (await res.json()) as T;
  }

  /** A POST without a body (e.g. cancel), answered with JSON. */
  async post<T>(path: string, signal?: AbortSignal): Promise<T> {
    const res = await this.request(path, { method: 'POST', accept: 'application/json', signal: signal ?? null });
    return (await res.json()) as T;
  }

  async text(path: string, signal?: AbortSignal): Promise<string> {
    const res = await this.request(path, { accept: 'text/plain', signal: signal ?? null });
    return res.text();
  }

  /** Opens an event stream and reads it to its end; `lastEventId` resumes after that event. */
  async events(path: string, onMessage: (m: SseMessage) => void, signal: AbortSignal, lastEventId?: string): Promise<void> {
    let res: Response;
    try {
      res = await fetch(path, {
        headers: { authorization: `Bearer ${this.token}`, accept: 'text/event-stream', ...(lastEventId ? { 'last-event-id': lastEventId } : {}) },
        cache: 'no-store',
        signal,
      });
    } catch (e) {
      if (isAbort(e)) throw e;
      throw new NetworkError(`the event stream did not open (${(e as Error).message})`);
    }
    if (!res.ok) {
      const err = await errorFrom(res);
      if (res.status === 401) this.onUnauthorized(err.message);
      throw err;
    }
    await readSse(res, onMessage, signal);
  }
}

/** Builds a query string from the defined, non-empty values. */
export function query(params: Record<string, string | number | undefined | null>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  const s = q.toString();
  return s ? `?${s}` : '';
}
