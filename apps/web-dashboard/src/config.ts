import { z } from 'zod';

/**
 * The standalone dashboard server's configuration: the environment → one zod schema → one
 * typed object; every problem is reported at once, each naming its variable.
 *
 *   VMLB_SERVER              the scheduler's base URL, e.g. http://scheduler:8080 (required)
 *   VMLB_DASHBOARD_HOST      @default 0.0.0.0
 *   VMLB_DASHBOARD_PORT      @default 8081 (0: any free port)
 */
export interface DashboardConfig {
  /** The scheduler's base URL, without a trailing slash. */
  server: string;
  host: string;
  port: number;
}

export class DashboardConfigError extends Error {
  readonly code = 'DASHBOARD_CONFIG';
  constructor(readonly problems: string[]) {
    super(`the dashboard configuration has ${problems.length} problem${problems.length === 1 ? '' : 's'}:\n  ${problems.join('\n  ')}`);
    this.name = 'DashboardConfigError';
  }
}

const schema = z.object({
  VMLB_SERVER: z
    .string({ error: 'VMLB_SERVER: not set (the scheduler\'s URL, e.g. http://127.0.0.1:8080)' })
    .refine((v) => {
      try {
        const u = new URL(v);
        return (u.protocol === 'http:' || u.protocol === 'https:') && (u.pathname === '/' || u.pathname === '') && !u.search && !u.hash;
      } catch {
        return false;
      }
    }, 'VMLB_SERVER must be an http(s) URL with no path, e.g. http://127.0.0.1:8080'),
  VMLB_DASHBOARD_HOST: z.string().min(1, 'VMLB_DASHBOARD_HOST must not be empty').default('0.0.0.0'),
  VMLB_DASHBOARD_PORT: z
    .string()
    .default('8081')
    .refine((v) => /^\d+$/.test(v) && Number(v) <= 65535, 'VMLB_DASHBOARD_PORT must be a port number from 0 to 65535')
    .transform(Number),
});

export function dashboardConfigFrom(env: NodeJS.ProcessEnv = process.env): DashboardConfig {
  const parsed = schema.safeParse(env);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((issue) => {
      const name = String(issue.path[0] ?? '');
      return issue.message.startsWith(name) ? issue.message : `${name}: ${issue.message}`;
    });
    throw new DashboardConfigError(problems);
  }
  const e = parsed.data;
  return { server: e.VMLB_SERVER.replace(/\/+$/, ''), host: e.VMLB_DASHBOARD_HOST, port: e.VMLB_DASHBOARD_PORT };
}
