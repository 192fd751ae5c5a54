import { HOST_PATH } from '../host/exec.js';
import type { LayerBuildContext } from './layer-build-context.js';
import { ENGINE_BIN_DIR } from './engine-bin.js';

/** Host variables a script may rely on for network access; passed through when set. */
const PASSTHROUGH_ENV = ['http_proxy', 'https_proxy', 'no_proxy', 'HTTP_PROXY', 'HTTPS_PROXY', 'NO_PROXY'];
/** A build-layer's PATH (and `vmlb shell`'s). */
export const CHROOT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/**
 * The host's proxy settings a layer script gets (http_proxy, https_proxy, no_proxy, in either
 * case), those of them that are set: what the apps read from their environment and pass on.
 */
export function proxyEnv(env: NodeJS.ProcessEnv): Record<string, string> {
  const out: Record<string, string> = {};
  for (const k of PASSTHROUGH_ENV) {
    const v = env[k];
    if (v) out[k] = v;
  }
  return out;
}

/**
 * A layer script's whole environment (`vmlb shell` and `vmlb run` give the same): the engine's
 * variables, `passEnv` (the host's proxy settings, see proxyEnv), then `extra`.
 * @param passEnv @default {}
 */
export function layerEnv(name: string, key: string, extra: Record<string, string>, passEnv: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = {
    HOME: '/root',
    LANG: 'C.UTF-8',
    TERM: 'dumb',
    DEBIAN_FRONTEND: 'noninteractive',
    VMLB_LAYER: name,
    VMLB_KEY: key,
  };
  return { ...env, ...passEnv, ...extra };
}

/** A layer script's environment as its build gives it (layerEnv with the build's passEnv). */
export function scriptEnv(ctx: LayerBuildContext, extra: Record<string, string>): Record<string, string> {
  return layerEnv(ctx.spec.name, ctx.key, extra, ctx.passEnv);
}

/**
 * A create-disk's or modify-disk's PATH: the host's, after the engine's helpers (vmlb-partition)
 * and, sandboxed, the shims that ask the engine for what needs the host's root (bin/sandbox/);
 * a modify-disk of the original's contract also gets bin/legacy/ (qemu-img as its scripts use it).
 */
export function hostScriptPath(sandboxed: boolean, legacy = false): string {
  const bin = ENGINE_BIN_DIR.replace(/\/+$/, '');
  // (bin/sandbox first: its shims find the real tool by dropping the first PATH entry.)
  return `${sandboxed ? `${bin}/sandbox:` : ''}${legacy ? `${bin}/legacy:` : ''}${bin}:${HOST_PATH}`;
}
