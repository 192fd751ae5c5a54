import path from 'node:path';
import { InvalidArgumentError, Option } from 'commander';
import { AbortedError, LocalStore, SharedStore, VmlbError, compressionFrom, defaultStoreDir, logMaxFromEnv, parseDuration, parseSize, proxyEnv, s3ConfigFrom, type BuildOptions } from '@vmlb/layer-engine';

/**
 * What several commands share: the store, cache, project and backend options, the argument
 * parsers that turn a bad value into commander's usage error (exit status 2), and Ctrl-C.
 */

export const storeOption = () => new Option('--store <dir>', 'the local store (layers cache)').env('VMLB_STORE').default(undefined, '~/.cache/vmlb');
export const projectOption = () => new Option('-C, --project <dir>', 'the image project that layer names refer to').default('.');
export const backendOption = () => new Option('--backend <name>', 'how disks are attached').choices(['auto', 'fuse', 'nbd']).default('auto').env('VMLB_BACKEND');

/** The local store of --store (or VMLB_STORE), else the default one. */
export function storeFrom(o: { store?: string }): LocalStore {
  return new LocalStore(o.store ? path.resolve(o.store) : defaultStoreDir(process.env));
}

export const cacheOption = () =>
  new Option('--cache <s3-url>', 'a shared store, s3://BUCKET/PREFIX: pull layers missing here, push new ones (S3_ENDPOINT, S3_ACCESS_KEY, S3_SECRET_KEY, S3_REGION)').env('VMLB_CACHE');

/** The shared store named by --cache (or VMLB_CACHE), configured from the environment. */
export function sharedFrom(opts: { cache?: string }): SharedStore | undefined {
  if (opts.cache === undefined) return undefined;
  return new SharedStore(s3ConfigFrom(opts.cache, process.env, { urlName: '--cache (VMLB_CACHE)' }), compressionFrom(process.env));
}

/**
 * What layer scripts get from this environment: VMLB_LOG_MAX (a bad one is a usage error,
 * BAD_SETTING) and the host's proxy settings.
 */
export function layerRunFromEnv(): Pick<BuildOptions, 'logMax' | 'passEnv'> {
  return { logMax: logMaxFromEnv(process.env), passEnv: proxyEnv(process.env) };
}

/** Whether layers run sandboxed: yes unless --no-sandbox or VMLB_SANDBOX=0. */
export function sandboxFrom(opts: { sandbox?: boolean }): boolean {
  const env = process.env.VMLB_SANDBOX;
  if (env !== undefined && env !== '' && env !== '0' && env !== '1') {
    throw new VmlbError('BAD_SETTING', `VMLB_SANDBOX must be 0 (layers run unconfined) or 1 (sandboxed, the default), not "${env}"`);
  }
  return opts.sandbox !== false && env !== '0';
}

/** VMLB_SANDBOX_DENY: addresses layers may not reach, besides those always refused. */
export function sandboxDenyFromEnv(): string[] {
  return (process.env.VMLB_SANDBOX_DENY ?? '').split(',').map((x) => x.trim()).filter(Boolean);
}

export function intArg(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`not a whole number: "${v}"`);
  return n;
}

export function sizeArg(v: string): number {
  try {
    return parseSize(v);
  } catch (e) {
    throw new InvalidArgumentError((e as Error).message);
  }
}

export function durationArg(v: string): number {
  try {
    return parseDuration(v);
  } catch (e) {
    throw new InvalidArgumentError((e as Error).message);
  }
}

export interface InterruptOptions {
  /** Said on stderr at the first signal, after `vmlb: interrupted:` (`stopping the VM`); nothing when absent. */
  doing?: string;
  /** Said at each later signal, while the command still cleans up; nothing when absent. */
  again?: string;
}

let interrupted = false;

/**
 * An AbortSignal fired by Ctrl-C, SIGTERM or SIGHUP (a closed terminal): the command stops and
 * releases what it attached (disks, a VM), rather than dying with them held. The handlers stay,
 * so a second Ctrl-C does not kill the command halfway through its cleanup.
 */
export function interruptSignal(o: InterruptOptions = {}): AbortSignal {
  const ac = new AbortController();
  let count = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    if (++count === 1) {
      interrupted = true;
      if (o.doing !== undefined) process.stderr.write(`\nvmlb: ${sig === 'SIGINT' ? 'interrupted' : sig}: ${o.doing}…\n`);
      ac.abort(new AbortedError());
    } else if (o.again !== undefined) {
      process.stderr.write(`vmlb: ${o.again}\n`);
    }
  };
  for (const s of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(s, onSignal);
  return ac.signal;
}

/**
 * An action whose every failure after Ctrl-C is the interruption (exit 130, as a build's):
 * what breaks while a VM is stopped or disks are released broke because of it.
 */
export function failsAsInterrupted<A extends unknown[], R>(fn: (...args: A) => Promise<R>): (...args: A) => Promise<R> {
  return async (...args: A) => {
    try {
      return await fn(...args);
    } catch (e) {
      if (interrupted && !(e instanceof AbortedError)) throw new AbortedError();
      throw e;
    }
  };
}
