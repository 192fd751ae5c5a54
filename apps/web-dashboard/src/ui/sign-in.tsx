import { useState } from 'preact/hooks';

/** The first screen: a team token, checked against `GET /v1/whoami` before it is kept. */
export function SignIn({ message, busy, onSubmit, onCancel }: { message: string | undefined; busy: boolean; onSubmit(token: string): void; onCancel?: (() => void) | undefined }) {
  const [token, setToken] = useState('');
  return (
    <div class="signin">
      <form
        class="signin-card"
        data-testid="token-form"
        onSubmit={(e) => {
          e.preventDefault();
          if (token.trim()) onSubmit(token.trim());
        }}
      >
        <div class="brand brand-large">
          <span class="brand-mark" aria-hidden="true" />
          <span>
            vmlb <span class="brand-sub">fleet dashboard</span>
          </span>
        </div>
        <label for="token">Team token</label>
        <input id="token" name="token" type="password" autocomplete="off" spellcheck={false} placeholder="paste your team's API token" value={token} onInput={(e) => setToken(e.currentTarget.value)} autofocus />
        {message && (
          <div class="error-note" role="alert" data-testid="signin-error">
            {message}
          </div>
        )}
        <button type="submit" disabled={busy || !token.trim()}>
          {busy ? 'Checking…' : 'Sign in'}
        </button>
        {busy && onCancel && (
          <button type="button" class="secondary" onClick={onCancel}>
            Use another token
          </button>
        )}
        <p class="hint">The token is the one <code>vmlb submit</code> uses (VMLB_TOKEN). It is kept in this browser until you sign out. A team token shows that team's builds; an admin token shows every team's.</p>
      </form>
    </div>
  );
}
