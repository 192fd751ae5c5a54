import { useCallback, useEffect, useMemo, useRef, useState } from 'preact/hooks';
import { Api, ApiError } from './api';
import { BuildPage } from './build-page';
import { BuildsPage } from './builds-page';
import { CachePage } from './cache-page';
import { FleetPage } from './fleet-page';
import { ProjectPage } from './project-page';
import { href, useRoute } from './hooks';
import { useLiveness } from './live-status';
import { forgetToken, SessionContext, storedToken, storeToken, type Session } from './session';
import { SignIn } from './sign-in';
import type { WhoAmI } from './types';

type Auth =
  | { state: 'signed-out'; message?: string }
  /** `attempt`: counts the checks of this token that did not get through. */
  | { state: 'checking'; token: string; attempt?: number }
  | { state: 'signed-in'; token: string; who: WhoAmI };

/** What the sign-in says of a token the API refused (401). */
export const UNAUTHORIZED = 'That token is not valid for this fleet.';
export const UNAUTHORIZED_NOW = 'Your token is no longer valid for this fleet. Sign in with a current one.';

/** A scheduler that does not answer is asked again after this long; a token is only dropped on a 401. */
const RECHECK_MS = 3000;

/** The whole app: a token first, then the pages under a top bar. */
export function App() {
  const [auth, setAuth] = useState<Auth>(() => {
    const token = storedToken();
    return token ? { state: 'checking', token } : { state: 'signed-out' };
  });

  // Why the token check did not get through yet (shown while it is tried again).
  const [checkNote, setCheckNote] = useState<string | undefined>(undefined);
  const signOut = useCallback((message?: string) => {
    forgetToken();
    setCheckNote(undefined);
    setAuth(message ? { state: 'signed-out', message } : { state: 'signed-out' });
  }, []);

  const token = auth.state === 'signed-out' ? null : auth.token;
  // A 401 in words for people, not the API's (which speaks of headers): a token being checked
  // is not one of this fleet's; one that worked before no longer is (revoked, or the teams file changed).
  const signedIn = useRef(false);
  signedIn.current = auth.state === 'signed-in';
  const api = useMemo(
    () => (token ? new Api(token, () => signOut(signedIn.current ? UNAUTHORIZED_NOW : UNAUTHORIZED)) : null),
    [token, signOut],
  );

  // Check a token (typed or remembered) before showing anything with it.
  useEffect(() => {
    if (auth.state !== 'checking' || !api) return;
    const ctrl = new AbortController();
    api.json<WhoAmI>('/v1/whoami', ctrl.signal).then(
      (who) => {
        storeToken(auth.token);
        setCheckNote(undefined);
        setAuth({ state: 'signed-in', token: auth.token, who });
      },
      (e: unknown) => {
        if (ctrl.signal.aborted) return;
        // A 401 signs out through the Api's callback (UNAUTHORIZED).
        if (e instanceof ApiError && e.status === 401) return;
        if (e instanceof ApiError && e.status < 500) {
          signOut(`Could not check the token: ${e.message}`);
          return;
        }
        // The scheduler is down or restarting: keep the token and ask again.
        const message = `Could not check the token: ${(e as Error).message}. Trying again…`;
        setCheckNote(message);
        timer = setTimeout(() => setAuth({ state: 'checking', token: auth.token, attempt: (auth.attempt ?? 0) + 1 }), RECHECK_MS);
      },
    );
    let timer: ReturnType<typeof setTimeout> | undefined;
    return () => {
      ctrl.abort();
      clearTimeout(timer);
    };
  }, [auth, api, signOut]);

  if (auth.state !== 'signed-in' || !api) {
    return (
      <SignIn
        message={auth.state === 'signed-out' ? auth.message : checkNote}
        busy={auth.state === 'checking'}
        onSubmit={(t) => setAuth({ state: 'checking', token: t })}
        onCancel={auth.state === 'checking' && checkNote ? () => signOut() : undefined}
      />
    );
  }
  const session: Session = { api, who: auth.who, signOut };
  return (
    <SessionContext.Provider value={session}>
      <Shell session={session} />
    </SessionContext.Provider>
  );
}

function Shell({ session }: { session: Session }) {
  const route = useRoute();
  const [section = 'builds', id] = route.parts;
  let page;
  if (section === 'builds' && id) page = <BuildPage id={id} key={id} />;
  else if (section === 'builds') page = <BuildsPage params={route.params} />;
  else if (section === 'fleet') page = <FleetPage />;
  else if (section === 'cache') page = <CachePage params={route.params} />;
  else if (section === 'projects' && id) page = <ProjectPage name={id} params={route.params} key={id} />;
  else
    page = (
      <div class="page">
        <h1>Not found</h1>
        <p>
          There is no page <code>{location.hash}</code>. Go to <a href={href(['builds'])}>the builds</a>.
        </p>
      </div>
    );
  useEffect(() => {
    const titles: Record<string, string> = { builds: id ? `build ${id}` : 'builds', fleet: 'fleet', cache: 'cache', projects: `project ${id ?? ''}` };
    document.title = `${titles[section] ?? 'not found'} · vmlb`;
  }, [section, id]);

  return (
    <div class="app">
      <TopBar section={section} session={session} />
      <main>{page}</main>
    </div>
  );
}

function TopBar({ section, session }: { section: string; session: Session }) {
  const live = useLiveness();
  const label = live.state === 'live' ? 'live' : live.state === 'paused' ? 'paused' : 'reconnecting';
  return (
    <header class="topbar">
      <a class="brand" href={href(['builds'])}>
        <span class="brand-mark" aria-hidden="true" />
        <span>
          vmlb <span class="brand-sub">fleet</span>
        </span>
      </a>
      <nav class="tabs" aria-label="Pages">
        {(['builds', 'fleet', 'cache'] as const).map((s) => (
          <a key={s} href={href([s])} class={section === s ? 'on' : ''} aria-current={section === s ? 'page' : undefined}>
            {s[0]!.toUpperCase() + s.slice(1)}
          </a>
        ))}
      </nav>
      <div class="topbar-right">
        <span class={`live live-${live.state}`} title={live.state === 'offline' ? live.message : live.state === 'paused' ? 'updates pause while the tab is hidden' : 'updating live'} data-testid="liveness">
          <span class="live-dot" />
          {label}
        </span>
        <span class="who" data-testid="whoami">
          {session.who.admin ? (
            <>
              <strong>{session.who.team}</strong> <span class="admin-tag">admin</span>
            </>
          ) : (
            <>
              team <strong>{session.who.team}</strong>
              <span class="who-pool" data-testid="whoami-pool">
                {' '}
                · pool <strong>{session.who.pool ?? 'default'}</strong>
              </span>
            </>
          )}
        </span>
        <button type="button" class="link-button" onClick={() => session.signOut()}>
          Sign out
        </button>
      </div>
    </header>
  );
}
