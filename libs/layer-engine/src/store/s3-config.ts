import { z } from 'zod';
import { VmlbError } from '../errors.js';

/**
 * The shared store's configuration, from one path: an `s3://BUCKET/PREFIX` URL and the
 * environment → a zod schema → one typed S3Config. Every problem is reported at once, each
 * naming the variable (or flag) to fix, in a VmlbError with code `S3_CONFIG`.
 *
 *   S3_ENDPOINT     http(s)://host[:port]; the scheme decides TLS   @default https://s3.amazonaws.com
 *   S3_ACCESS_KEY   (or AWS_ACCESS_KEY_ID)
 *   S3_SECRET_KEY   (or AWS_SECRET_ACCESS_KEY)
 *   S3_REGION       @default us-east-1
 *
 * Requests are path-style (`host/BUCKET/key`), which MinIO and every S3-compatible server take.
 */
export interface S3Config {
  /** The store's URL, normalized: `s3://BUCKET` or `s3://BUCKET/PREFIX`. */
  url: string;
  bucket: string;
  /** Prepended to every object name: '' or `PREFIX/` (no leading slash, one trailing slash). */
  prefix: string;
  /** The endpoint's origin, e.g. `http://127.0.0.1:9000`. */
  endpoint: string;
  host: string;
  port: number;
  useSSL: boolean;
  accessKey: string;
  secretKey: string;
  region: string;
  pathStyle: true;
}

export const DEFAULT_S3_ENDPOINT = 'https://s3.amazonaws.com';
export const DEFAULT_S3_REGION = 'us-east-1';

export interface S3ConfigOptions {
  /** What to call the URL in messages: the flag or variable it came from. @default 'the shared store URL' */
  urlName?: string;
}

// S3's bucket naming rules (the strict, DNS-compatible ones every server accepts).
const BUCKET_RE = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;

const s3Url = z.string().transform((raw, ctx) => {
  const m = /^s3:\/\/([^/?#]*)(?:\/([^?#]*))?$/.exec(raw.trim());
  if (!m) {
    ctx.addIssue({ code: 'custom', message: `"${raw}" is not an s3://BUCKET/PREFIX URL` });
    return z.NEVER;
  }
  const bucket = m[1] ?? '';
  const prefixPath = (m[2] ?? '').replace(/\/+/g, '/').replace(/^\/|\/$/g, '');
  if (!bucket) {
    ctx.addIssue({ code: 'custom', message: `"${raw}" names no bucket (write s3://BUCKET or s3://BUCKET/PREFIX)` });
    return z.NEVER;
  }
  if (!BUCKET_RE.test(bucket) || bucket.includes('..')) {
    ctx.addIssue({ code: 'custom', message: `"${bucket}" is not a valid bucket name (3-63 lowercase letters, digits, dots and hyphens)` });
    return z.NEVER;
  }
  if (prefixPath.split('/').some((p) => p === '.' || p === '..')) {
    ctx.addIssue({ code: 'custom', message: `the prefix "${prefixPath}" may not contain . or .. segments` });
    return z.NEVER;
  }
  return { bucket, prefix: prefixPath ? `${prefixPath}/` : '', url: `s3://${bucket}${prefixPath ? `/${prefixPath}` : ''}` };
});

const endpoint = z
  .string()
  .default(DEFAULT_S3_ENDPOINT)
  .transform((raw, ctx) => {
    let u: URL;
    try {
      u = new URL(raw);
    } catch {
      ctx.addIssue({ code: 'custom', message: `"${raw}" is not a URL (e.g. http://127.0.0.1:9000 or https://minio.example.com)` });
      return z.NEVER;
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') {
      ctx.addIssue({ code: 'custom', message: `"${raw}": the scheme must be http or https (it decides TLS)` });
      return z.NEVER;
    }
    if ((u.pathname !== '/' && u.pathname !== '') || u.search || u.username) {
      ctx.addIssue({ code: 'custom', message: `"${raw}": give only scheme, host and port (the bucket and prefix go in the s3:// URL)` });
      return z.NEVER;
    }
    const useSSL = u.protocol === 'https:';
    // URL keeps IPv6 hosts in brackets; the minio client wants them bare.
    const host = u.hostname.replace(/^\[|\]$/g, '');
    return { endpoint: u.origin, host, port: u.port ? Number(u.port) : useSSL ? 443 : 80, useSSL };
  });

const schema = z.object({
  url: s3Url,
  S3_ENDPOINT: endpoint,
  S3_ACCESS_KEY: z.string({ error: 'is not set (nor AWS_ACCESS_KEY_ID): the access key of the shared store' }),
  S3_SECRET_KEY: z.string({ error: 'is not set (nor AWS_SECRET_ACCESS_KEY): the secret key of the shared store' }),
  S3_REGION: z.string().default(DEFAULT_S3_REGION),
});

/** An empty variable counts as unset, as in most shells' `${VAR:-default}`. */
function nonEmpty(v: string | undefined): string | undefined {
  return v === undefined || v.trim() === '' ? undefined : v;
}

/**
 * The shared store's configuration from its URL and the environment.
 * @throws VmlbError code `S3_CONFIG`, listing every problem and the variable to fix.
 */
export function s3ConfigFrom(url: string | undefined, env: NodeJS.ProcessEnv = process.env, opts: S3ConfigOptions = {}): S3Config {
  const urlName = opts.urlName ?? 'the shared store URL';
  const input = {
    url: nonEmpty(url),
    S3_ENDPOINT: nonEmpty(env.S3_ENDPOINT),
    S3_ACCESS_KEY: nonEmpty(env.S3_ACCESS_KEY) ?? nonEmpty(env.AWS_ACCESS_KEY_ID),
    S3_SECRET_KEY: nonEmpty(env.S3_SECRET_KEY) ?? nonEmpty(env.AWS_SECRET_ACCESS_KEY),
    S3_REGION: nonEmpty(env.S3_REGION),
  };
  const r = schema.safeParse(input);
  if (!r.success) {
    const problems = r.error.issues.map((i) => {
      const field = String(i.path[0] ?? '');
      const name = field === 'url' ? urlName : field;
      const message = field === 'url' && input.url === undefined ? 'is not set: give s3://BUCKET/PREFIX' : i.message;
      return `  ${name}: ${message}`;
    });
    throw new VmlbError(
      'S3_CONFIG',
      `the shared store is misconfigured (${problems.length} problem${problems.length === 1 ? '' : 's'}):\n${problems.join('\n')}`,
    );
  }
  const { url: u, S3_ENDPOINT: e } = r.data;
  return {
    ...u,
    ...e,
    accessKey: r.data.S3_ACCESS_KEY,
    secretKey: r.data.S3_SECRET_KEY,
    region: r.data.S3_REGION,
    pathStyle: true,
  };
}
