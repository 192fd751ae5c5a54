import type { ComponentChildren } from 'preact';
import { ApiError } from './api';

export function Badge({ status, children }: { status: string; children?: ComponentChildren }) {
  return (
    <span class={`badge st-${status}`} data-status={status}>
      <span class="badge-dot" />
      {children ?? status}
    </span>
  );
}

export function Card({ title, actions, children, class: cls, testid }: { title?: ComponentChildren; actions?: ComponentChildren; children: ComponentChildren; class?: string; testid?: string }) {
  return (
    <section class={`card ${cls ?? ''}`} data-testid={testid}>
      {(title || actions) && (
        <header class="card-head">
          <h2>{title}</h2>
          {actions && <div class="card-actions">{actions}</div>}
        </header>
      )}
      {children}
    </section>
  );
}

export function Stat({ label, value, sub, tone, testid }: { label: string; value: ComponentChildren; sub?: ComponentChildren; tone?: string; testid?: string }) {
  return (
    <div class={`stat ${tone ? `tone-${tone}` : ''}`} data-testid={testid}>
      <div class="stat-label">{label}</div>
      <div class="stat-value">{value}</div>
      {sub !== undefined && <div class="stat-sub">{sub}</div>}
    </div>
  );
}

/** An error from the API, with its message as the server wrote it. */
export function ErrorNote({ error, what, title, testid }: { error: Error | undefined; what?: string; title?: string; testid?: string }) {
  if (!error) return null;
  const code = error instanceof ApiError ? `${error.status} ${error.code}` : error.name;
  return (
    <div class="error-note" role="alert" data-testid={testid}>
      <strong>{title ?? (what ? `Could not load ${what}` : 'Error')}</strong>
      <span class="error-code">{code}</span>
      <span class="error-message">{error.message}</span>
    </div>
  );
}

export function Empty({ children }: { children: ComponentChildren }) {
  return <div class="empty">{children}</div>;
}

export function Loading({ what }: { what: string }) {
  return <div class="loading">Loading {what}…</div>;
}

/** A bar of `value` out of `max`, e.g. busy slots. */
export function Meter({ value, max, tone }: { value: number; max: number; tone?: string }) {
  const pct = max > 0 ? Math.min(100, (value / max) * 100) : 0;
  return (
    <span class={`meter ${tone ? `tone-${tone}` : ''}`} aria-hidden="true">
      <span class="meter-fill" style={{ width: `${pct}%` }} />
    </span>
  );
}

export function Mono({ children, title }: { children: ComponentChildren; title?: string }) {
  return (
    <code class="mono" title={title}>
      {children}
    </code>
  );
}
