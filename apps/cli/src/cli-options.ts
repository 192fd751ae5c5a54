import path from 'node:path';
import { InvalidArgumentError, Option } from 'commander';
import { LocalStore, VmlbError, defaultStoreDir, parseDuration, parseSize } from '@vmlb/layer-engine';

/**
 * What several commands' options share: the store, the project and the backend options, and
 * the argument parsers that turn a bad value into commander's usage error (exit status 2).
 */

export const storeOption = () => new Option('--store <dir>', 'the local store (layers cache)').env('VMLB_STORE').default(undefined, '~/.cache/vmlb');
export const projectOption = () => new Option('-C, --project <dir>', 'the image project that layer names refer to').default('.');
export const backendOption = () => new Option('--backend <name>', 'how disks are attached').choices(['auto', 'fuse', 'nbd']).default('auto').env('VMLB_BACKEND');

/** The local store of --store (or VMLB_STORE), else the default one. */
export function storeFrom(o: { store?: string }): LocalStore {
  return new LocalStore(o.store ? path.resolve(o.store) : defaultStoreDir());
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
