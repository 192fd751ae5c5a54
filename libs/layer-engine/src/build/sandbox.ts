import { createHash, randomInt } from 'node:crypto';
import { existsSync } from 'node:fs';
import { lookup } from 'node:dns/promises';
import { readFile, readlink } from 'node:fs/promises';
import { isIP } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';
import { VmlbError } from '../errors.js';
import { commandOnPath } from '../host/exec.js';

/**
 * The layer sandbox (see bin/vmlb-run-layer, "The sandbox", and the README's trust model):
 * every layer script runs as root of its own user namespace — an unprivileged host uid range
 * with the disk's filesystems idmapped, so that files keep their owners on disk — in its own
 * network namespace (slirp4netns out, never the host's or the fleet's addresses), and in
 * bwrap's mount, pid, ipc, uts and cgroup namespaces with a minimal /dev.
 */
export interface SandboxOptions {
  /**
   * Run layer scripts in the sandbox. Off is for local debugging only (`vmlb build
   * --no-sandbox`, VMLB_SANDBOX=0): scripts then run as the host's root, as the original
   * tool ran them. Fleet workers refuse to run with it off.
   * @default true
   */
  enabled?: boolean;
  /**
   * Addresses no layer may reach even with network on, besides those always refused (the
   * host's own addresses, link-local ones such as cloud metadata servers): host names, IP
   * addresses or CIDR ranges — a worker names its Redis, S3 and scheduler here.
   * @default []
   */
  deny?: string[];
}

/** What one sandboxed run needs, decided by the engine before it starts the run. */
export interface SandboxRun {
  /** First host uid (and gid) of the run's user namespace; 65536 ids are mapped from it. */
  uidBase: number;
  /** slirp4netns' user-mode network, or only a loopback (`# network none`). */
  network: boolean;
  /** Prohibit routes of the run's network namespace, as `ip -batch` lines. */
  routes: string[];
  /** The resolv.conf the layer gets: null for the host's own file (see sandboxResolvConf). */
  resolvConf: string | null;
  /** Host block devices a create-disk or modify-disk gets, at their own paths (e.g. /dev/loop5). */
  devices: string[];
  /** Host files a create-disk or modify-disk gets read-only at the same path (its overlay). */
  readOnlyFiles: string[];
  /** Host folders it gets writable at the same path, ids as they are (made the sandbox root's by the engine). */
  writableDirs?: string[];
  /** Symbolic links in its /dev, e.g. /dev/nbd0p1 → /dev/vmlb/nbd0p1 for nodes the run makes later. */
  deviceLinks?: { path: string; target: string }[];
  /** For modify-disk: the disk backend's variables, with which the run answers `vmlb-partition` requests. */
  partitionServer?: Record<string, string>;
}

/** The number of ids mapped into a sandbox (uids and gids 0..65535, as a Debian system uses). */
export const SANDBOX_ID_COUNT = 65536;
/** Where a create-disk or modify-disk finds its block devices inside the sandbox. */
export const SANDBOX_DEVICE_DIR = '/dev/vmlb';
/**
 * Where each sandboxed run stages what bwrap binds into the sandbox: a tmpfs mounted over this
 * (empty, host-owned) folder in the run's own mount namespace, so that nothing of it is seen
 * from the host, and every source is reachable by the sandbox's unprivileged uid (the engine's
 * own folders are root's only). Fixed names inside, one tmpfs per run.
 */
export const SANDBOX_STAGE = '/run/vmlb-sandbox';
export const SANDBOX_STAGE_PATHS = {
  /** The layer's root filesystem (build-layer) or VMLB_ROOT (create-disk), idmapped. */
  root: `${SANDBOX_STAGE}/root`,
  layer: `${SANDBOX_STAGE}/layer`,
  dev: `${SANDBOX_STAGE}/dev`,
  sys: `${SANDBOX_STAGE}/sys`,
  resolv: `${SANDBOX_STAGE}/resolv.conf`,
  bin: `${SANDBOX_STAGE}/bin`,
  /** Read-only host files, by index: file0, file1, … */
  file: (i: number) => `${SANDBOX_STAGE}/file${i}`,
  /** Writable host folders, by index: dir0, dir1, … */
  dir: (i: number) => `${SANDBOX_STAGE}/dir${i}`,
} as const;
/** slirp4netns' fixed addresses inside the namespace: the gateway (the host) and its DNS forwarder. */
const SLIRP_GATEWAY = '10.0.2.2';
const SLIRP_DNS = '10.0.2.3';

/** The engine's compiled helper (native/vmlb-sandbox-mount.c), in dist/native of the package. */
export const SANDBOX_MOUNT_HELPER = findMountHelper();

function findMountHelper(): string {
  const beside = fileURLToPath(new URL('../../dist/native/vmlb-sandbox-mount', import.meta.url));
  if (existsSync(beside)) return beside;
  const pkg = createRequire(import.meta.url).resolve('@vmlb/layer-engine/package.json');
  return path.join(path.dirname(pkg), 'dist', 'native', 'vmlb-sandbox-mount');
}

/**
 * A uid range for one run: a random multiple of 65536 between 0x100000 and 0x6fff0000 (the
 * range systemd-nspawn picks from too), so that two runs on one host rarely share one — and
 * when they do, their namespaces still keep them apart.
 */
export function pickUidBase(): number {
  return randomInt(0x10, 0x6fff) * SANDBOX_ID_COUNT;
}

let toolsChecked: Promise<void> | undefined;

/** Throws SANDBOX_UNAVAILABLE, naming what is missing, when this host cannot run the sandbox. */
export function checkSandboxTools(): Promise<void> {
  toolsChecked ??= (async () => {
    const missing: string[] = [];
    for (const [cmd, pkg] of [
      ['bwrap', 'bubblewrap'],
      ['slirp4netns', 'slirp4netns'],
      ['nsenter', 'util-linux'],
      ['ip', 'iproute2'],
    ] as const) {
      if (!(await commandOnPath(cmd))) missing.push(`${cmd} (Debian package ${pkg})`);
    }
    if (!existsSync(SANDBOX_MOUNT_HELPER)) missing.push(`${SANDBOX_MOUNT_HELPER} (built by npm run setup; it needs gcc and libc6-dev)`);
    const max = await readFile('/proc/sys/user/max_user_namespaces', 'utf8').catch(() => '1');
    if (Number(max.trim()) === 0) missing.push('user namespaces (sysctl user.max_user_namespaces is 0)');
    if (missing.length > 0) {
      toolsChecked = undefined;
      throw new VmlbError(
        'SANDBOX_UNAVAILABLE',
        `the layer sandbox cannot run here: missing ${missing.join(', ')}; install them, or build with --no-sandbox (VMLB_SANDBOX=0) to run layers unconfined as root`,
      );
    }
  })();
  return toolsChecked;
}

/** Link-local addresses (cloud metadata servers: 169.254.169.254, fd00:ec2::254) and slirp's way to the host's loopback. */
const ALWAYS_DENIED = ['169.254.0.0/16', 'fe80::/10', 'fd00:ec2::254/128', `${SLIRP_GATEWAY}/32`];

const denyCache = new Map<string, Promise<string[]>>();

/**
 * The prohibit routes of a run's network namespace: the host's own addresses (slirp4netns
 * would connect to them from the host, reaching services that listen on them), the addresses
 * always denied, and `deny` (host names resolved once per engine process).
 */
export function denyRoutes(deny: readonly string[] = []): Promise<string[]> {
  const cacheKey = deny.join(' ');
  let routes = denyCache.get(cacheKey);
  if (!routes) {
    routes = (async () => {
      const cidrs = new Set<string>(ALWAYS_DENIED);
      for (const addrs of Object.values(os.networkInterfaces())) {
        for (const a of addrs ?? []) if (!a.internal) cidrs.add(hostRoute(a.address.split('%')[0]!));
      }
      for (const entry of deny) for (const c of await resolveDenied(entry)) cidrs.add(c);
      return [...cidrs].map((c) => `route add prohibit ${c}`);
    })();
    routes.catch(() => denyCache.delete(cacheKey));
    denyCache.set(cacheKey, routes);
  }
  return routes;
}

function hostRoute(address: string): string {
  return isIP(address) === 6 ? `${address}/128` : `${address}/32`;
}

async function resolveDenied(entry: string): Promise<string[]> {
  const e = entry.trim();
  if (e === '') return [];
  const [addr, bits, extra] = e.split('/');
  if (addr && isIP(addr) && extra === undefined) {
    if (bits === undefined) return [hostRoute(addr)];
    const max = isIP(addr) === 6 ? 128 : 32;
    if (/^\d+$/.test(bits) && Number(bits) <= max) return [`${addr}/${bits}`];
  } else if (bits === undefined && /^[A-Za-z0-9.-]+$/.test(e)) {
    try {
      return (await lookup(e, { all: true })).map((a) => hostRoute(a.address));
    } catch (err) {
      throw new VmlbError('SANDBOX_DENY', `the sandbox's deny list names ${e}, which does not resolve: ${(err as Error).message}`);
    }
  }
  throw new VmlbError('SANDBOX_DENY', `the sandbox's deny list has "${e}", which is not a host name, an IP address or a CIDR range`);
}

/**
 * The resolv.conf a layer gets: the host's file as it is (null), which tools such as mmdebstrap
 * copy into the image, unless the layer could not reach its resolvers through slirp4netns —
 * loopback ones (systemd-resolved's stub) or denied ones; then a file naming slirp4netns' DNS
 * forwarder, which asks the host's resolvers from the host, with the host's search domains.
 * Without network, the host's file (nothing answers).
 */
export async function sandboxResolvConf(network: boolean, routes: readonly string[]): Promise<string | null> {
  return network ? resolvConfFor(await readFile('/etc/resolv.conf', 'utf8').catch(() => ''), routes) : null;
}

/** sandboxResolvConf's choice for a host resolv.conf's text, with network on. */
export function resolvConfFor(host: string, routes: readonly string[]): string | null {
  const servers = [...host.matchAll(/^\s*nameserver\s+(\S+)/gm)].map((m) => m[1]!.split('%')[0]!);
  const denied = routes.map((r) => r.replace(/^route add prohibit /, ''));
  if (servers.length > 0 && servers.every((ns) => !isLoopback(ns) && !denied.some((c) => inCidr(ns, c)))) return null;
  const search = host.split('\n').filter((l) => /^\s*(search|domain)\s/.test(l));
  return [`# vm-layer-builder sandbox: the host's resolvers through slirp4netns`, `nameserver ${SLIRP_DNS}`, ...search, ''].join('\n');
}

function isLoopback(address: string): boolean {
  return address === '::1' || /^127\./.test(address);
}

/** Whether an address is in a CIDR range (IPv4 ranges; an IPv6 address only matches its own /128). */
export function inCidr(address: string, cidr: string): boolean {
  const [net, bitsText] = cidr.split('/');
  if (!net || !bitsText) return false;
  if (isIP(address) === 6 || isIP(net) === 6) return net === address && bitsText === '128';
  const ip = ipv4(address);
  const base = ipv4(net);
  const bits = Number(bitsText);
  if (ip === null || base === null || !(bits >= 0 && bits <= 32)) return false;
  const mask = bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0;
  return ((ip & mask) >>> 0) === ((base & mask) >>> 0);
}

function ipv4(a: string): number | null {
  const parts = a.split('.').map(Number);
  if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255)) return null;
  return ((parts[0]! << 24) | (parts[1]! << 16) | (parts[2]! << 8) | parts[3]!) >>> 0;
}

export interface SandboxArgsInput {
  mode: 'chroot' | 'host';
  layerDir: string;
  /** Whether a create-disk gets a VMLB_ROOT (host mode). */
  hostRoot: boolean;
  engineBinDir: string;
  readOnlyFiles: string[];
  /** Host folders given writable at the same paths. @default [] */
  writableDirs?: string[];
  /** Host block devices, given at the same paths (e.g. /dev/loop5). */
  devices: string[];
  /** Links in /dev (see SandboxRun.deviceLinks). @default [] */
  deviceLinks?: { path: string; target: string }[];
  env: Record<string, string>;
  /**
   * bwrap's --new-session: the run has no controlling terminal, so it cannot push input into
   * one (TIOCSTI). Off only for `vmlb shell`, whose terminal is a pty of its own. @default true
   */
  newSession?: boolean;
}

/**
 * bwrap's options for one run (written NUL-separated to a file that bwrap reads with --args:
 * no quoting of the script's environment anywhere); vmlb-run-layer adds the command.
 */
export async function sandboxArgs(o: SandboxArgsInput): Promise<string[]> {
  const args = ['--unshare-pid', '--unshare-ipc', '--unshare-uts', '--unshare-cgroup-try', '--die-with-parent', ...(o.newSession === false ? [] : ['--new-session']), '--cap-add', 'ALL'];
  const stage = SANDBOX_STAGE_PATHS;
  if (o.mode === 'chroot') {
    // Everything the chroot had: /mnt read-only (and the cwd), /proc, /sys read-only, a
    // minimal /dev with /dev/pts and a fresh /dev/shm, a fresh /tmp, resolv.conf (/mnt, /sys
    // and resolv.conf are mounted in the staged root already, see vmlb-run-layer).
    args.push('--bind', stage.root, '/', '--proc', '/proc', '--dev', '/dev', '--perms', '1777', '--tmpfs', '/dev/shm', '--perms', '1777', '--tmpfs', '/tmp');
    args.push('--chdir', '/mnt');
  } else {
    // The host's tools, read-only, and nothing else of its filesystem: /usr, the top-level
    // lib and bin folders (or their merged-/usr links), /etc; fresh /tmp, /var/tmp, /run, /root.
    args.push('--ro-bind', '/usr', '/usr');
    for (const d of ['bin', 'sbin', 'lib', 'lib32', 'lib64', 'libx32']) {
      const target = await readlink(`/${d}`).catch(() => null);
      if (target !== null) args.push('--symlink', target, `/${d}`);
      else if (existsSync(`/${d}`)) args.push('--ro-bind', `/${d}`, `/${d}`);
    }
    args.push('--ro-bind', '/etc', '/etc', '--ro-bind', stage.resolv, '/etc/resolv.conf');
    args.push('--proc', '/proc', '--dev', '/dev', '--ro-bind', stage.sys, '/sys');
    args.push('--perms', '1777', '--tmpfs', '/tmp', '--perms', '1777', '--tmpfs', '/var/tmp', '--tmpfs', '/run', '--dir', '/root');
    // The disk's devices at their host paths (tools such as growpart go by the name: a loop
    // device's partitions are /dev/loopNpM), and /dev/vmlb for those vmlb-partition makes
    // while the script runs. Device access needs a mount without nodev (a read-only remount
    // adds it); the folder is host root's, whom the sandbox's root is not: it cannot add or
    // replace anything there.
    args.push('--dev-bind', stage.dev, SANDBOX_DEVICE_DIR);
    for (const d of o.devices) args.push('--dev-bind', `${stage.dev}/${path.basename(d)}`, d);
    for (const l of o.deviceLinks ?? []) args.push('--symlink', l.target, l.path);
    args.push('--ro-bind', stage.bin, o.engineBinDir);
    o.readOnlyFiles.forEach((f, i) => args.push('--ro-bind', stage.file(i), f));
    (o.writableDirs ?? []).forEach((d, i) => args.push('--bind', stage.dir(i), d));
    // The disk a create-disk fills, with the device nodes the engine makes in it (bwrap's
    // --bind would add nodev; a chroot's root keeps it, see vmlb-sandbox-mount).
    if (o.hostRoot) args.push('--dev-bind', stage.root, stage.root);
    args.push('--ro-bind', stage.layer, o.layerDir, '--chdir', o.layerDir);
  }
  args.push('--clearenv');
  for (const [k, v] of Object.entries(o.env)) args.push('--setenv', k, v);
  return args;
}

/** Where a store keeps its `# cache-mount` folders (a fleet worker: one folder per team under it). */
export function cacheMountsDir(store: { root: string }, scope?: string): string {
  return path.join(store.root, 'cache-mounts', ...(scope ? [scope] : []));
}

/**
 * The kept folder of a `# cache-mount TARGET` under `cacheDir`: one per target path, named
 * after it (readable in the store) with a short hash (two targets never share a folder).
 */
export function cacheMountDir(cacheDir: string, target: string): string {
  const clean = target.replace(/\/+$/, '') || '/';
  const readable = clean.replace(/^\/+/, '').replace(/[^A-Za-z0-9._-]+/g, '_').slice(0, 60);
  return path.join(cacheDir, `${readable}-${createHash('sha256').update(clean).digest('hex').slice(0, 8)}`);
}
