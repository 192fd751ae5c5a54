/**
 * One simple command of a modify-disk against the steps of the original's grow-the-disk pattern
 * (qemu-img create of SIZE on SOURCE, qemu-nbd, growpart, e2fsck, resize2fs, and what may go with
 * them), noting in a PatternState what the script has done so far.
 */
import { parseSize } from '@vmlb/layer-engine';
import { splitTop, unquote, words } from './shell-words.js';

/** Redirections that change nothing a migrated script has to keep: to /dev/null or another descriptor. */
const HARMLESS_REDIRECT = /^(?:\d*|&)>>?(?:&\d|\/dev\/null)$/;

const ROLE_NAMES = ['', 'source', 'target', 'device'] as const;
type Role = 'source' | 'target' | 'device';

/** The kinds of step in the original's grow-the-disk pattern. */
export interface PatternState {
  /** Variables holding the positional arguments: name → 1 (source), 2 (target), 3 (device). */
  positional: Map<string, number>;
  /** Variables holding plain values (`size=20G`). */
  literal: Map<string, string>;
  created?: { size?: string };
  connected: boolean;
  growpart?: number;
  fsck?: number;
  resize?: number;
}

function roleOf(word: string, st: PatternState): Role | undefined {
  const m = /^\$(?:\{(\w+)\}|(\w+))$/.exec(unquote(word));
  const name = m?.[1] ?? m?.[2];
  if (!name) return undefined;
  const n = /^[1-3]$/.test(name) ? Number(name) : st.positional.get(name);
  return n ? (ROLE_NAMES[n] as Role) : undefined;
}

/** `"${device}p1"`, `${device}p1`, `"$device"p1`, `"${3}p1"`, `$3p1`: partition N of the device. */
function partitionOf(word: string, st: PatternState): number | undefined {
  const m = /^"?\$\{(\w+)\}"?p(\d+)"?$/.exec(word) ?? /^"\$([A-Za-z_]\w*)"p(\d+)$/.exec(word) ?? /^"?\$(\d)p(\d+)"?$/.exec(word);
  if (!m || roleOf(`$${m[1]}`, st) !== 'device') return undefined;
  return Number(m[2]);
}

/** A value a variable or a literal word stands for (`"$size"`, `20G`), when it is plain. */
function literalOf(word: string, st: PatternState): string | undefined {
  const w = unquote(word);
  const m = /^\$(?:\{(\w+)\}|(\w+))$/.exec(w);
  if (m) return st.literal.get((m[1] ?? m[2])!);
  return /[$`(){}]/.test(w) ? undefined : w;
}

/**
 * Whether one simple command fits the pattern, noting what it does in `st`; the reason when
 * it does not.
 */
export function fitStep(stmt: string, st: PatternState): string | null {
  let w = words(stmt);
  // Output thrown away or sent to stderr changes nothing; a redirection to a file does.
  const kept: string[] = [];
  for (let i = 0; i < w.length; i++) {
    const x = w[i]!;
    if (HARMLESS_REDIRECT.test(x)) continue;
    if (/^(?:\d*|&)>>?$/.test(x) && (w[i + 1] === '/dev/null' || /^&\d$/.test(w[i + 1] ?? ''))) {
      i++;
      continue;
    }
    if (!/^["']/.test(x) && /[<>]/.test(x)) return 'it redirects to or from a file';
    kept.push(x);
  }
  w = kept;
  if (w[0] === 'sudo') w = w.slice(1);
  const [cmd, ...args] = w;
  if (cmd === undefined) return null;

  const assign = /^([A-Za-z_]\w*)=(.*)$/.exec(cmd);
  if (assign && args.length === 0) {
    const value = assign[2]!;
    const pos = /^("?)\$\{?([1-3])\}?\1$/.exec(value) ?? /^("?)\$\{([1-3]):[?-][^}]*\}\1$/.exec(value);
    if (pos) st.positional.set(assign[1]!, Number(pos[2]));
    else if (!/[$`(){}]/.test(unquote(value))) st.literal.set(assign[1]!, unquote(value));
    else return 'it sets a variable to something other than an argument or a plain value';
    return null;
  }

  switch (cmd) {
    case 'set':
      for (let i = 0; i < args.length; i++) {
        if (args[i] === '-o' || args[i] === '+o') i++;
        else if (!/^[-+][a-zA-Z]+$/.test(args[i]!)) return 'an unusual set';
      }
      return null;
    case 'sync':
    case 'true':
    case ':':
      return args.length === 0 ? null : `${cmd} with arguments`;
    case 'sleep':
      return args.length === 1 && /^\d+(\.\d+)?[smh]?$/.test(args[0]!) ? null : 'an unusual sleep';
    case 'exit':
      return args.length === 0 || args[0] === '0' ? null : 'it exits with a failure';
    case 'echo':
    case 'printf':
      return args.some((a) => /\$\(|`/.test(a)) ? 'it prints the output of a command' : null;
    case 'udevadm':
      return args[0] === 'settle' ? null : 'udevadm other than settle';
    case 'partprobe':
      return args.length === 1 && roleOf(args[0]!, st) === 'device' ? null : 'partprobe of something other than the device';
    case 'blockdev':
      return args.length === 2 && args[0] === '--rereadpt' && roleOf(args[1]!, st) === 'device' ? null : 'an unusual blockdev';
    case 'qemu-img':
      return fitCreate(args, st);
    case 'qemu-nbd':
      return fitNbd(args, st);
    case 'growpart': {
      if (args.length !== 2 || roleOf(args[0]!, st) !== 'device' || !/^\d+$/.test(args[1]!)) return 'growpart of something other than DEVICE N';
      if (st.growpart !== undefined) return 'a second growpart';
      st.growpart = Number(args[1]);
      return null;
    }
    case 'e2fsck':
    case 'fsck.ext4':
    case 'fsck.ext3':
    case 'fsck.ext2': {
      const n = args.length ? partitionOf(args.at(-1)!, st) : undefined;
      if (n === undefined || !args.slice(0, -1).every((a) => /^-[fypv]+$/.test(a))) return 'a file system check of something other than a partition of the device';
      st.fsck = n;
      return null;
    }
    case 'resize2fs': {
      const n = args.length ? partitionOf(args.at(-1)!, st) : undefined;
      if (n === undefined || !args.slice(0, -1).every((a) => /^-[fpF]+$/.test(a))) return 'resize2fs of something other than a partition of the device (to its full size)';
      if (st.resize !== undefined) return 'a second resize2fs';
      st.resize = n;
      return null;
    }
    case 'trap': {
      const [body, ...signals] = args;
      if (body === undefined || signals.length === 0 || !signals.every((s) => /^(?:EXIT|ERR|INT|TERM|HUP|QUIT|0|SIG[A-Z]+)$/.test(s))) return 'an unusual trap';
      const inner = unquote(body).trim();
      if (inner === '' || inner === '-') return null;
      for (const part of splitTop(inner, ';').filter(Boolean)) {
        const pw = words(part);
        if (pw[0] === 'sync' && pw.length === 1) continue;
        if (pw[0] !== 'qemu-nbd' || !isDisconnect(pw.slice(1), st)) return 'a trap that does more than disconnect the device';
      }
      return null;
    }
    default:
      return `${cmd} is not one of its steps`;
  }
}

/** `qemu-img create -f qcow2 -b SOURCE [-F qcow2] [-o …] TARGET [SIZE]` */
function fitCreate(args: string[], st: PatternState): string | null {
  if (args[0] !== 'create') return `qemu-img ${args[0] ?? ''} is not a step of the pattern`.trim();
  const positional: string[] = [];
  let backing: string | undefined;
  for (let i = 1; i < args.length; i++) {
    const a = args[i]!;
    if (a === '-f' || a === '-F') {
      if (unquote(args[++i] ?? '') !== 'qcow2') return 'qemu-img create of another format than qcow2';
    } else if (a === '-b') backing = args[++i];
    else if (a === '-o') i++;
    else if (a === '-q' || a === '-u') continue;
    else if (a.startsWith('-')) return `qemu-img create ${a} is not part of the pattern`;
    else positional.push(a);
  }
  if (backing === undefined || roleOf(backing, st) !== 'source') return 'qemu-img create of something other than an overlay on the source';
  if (positional.length < 1 || positional.length > 2 || roleOf(positional[0]!, st) !== 'target') return 'qemu-img create of something other than the target';
  let size: string | undefined;
  if (positional[1] !== undefined) {
    size = literalOf(positional[1], st);
    if (size === undefined) return 'qemu-img create of a size that is not written out';
    try {
      parseSize(size);
    } catch {
      return `qemu-img create of a size vmlb cannot read ("${size}")`;
    }
  }
  if (st.created) return 'a second qemu-img create';
  st.created = { size };
  return null;
}

function isDisconnect(args: string[], st: PatternState): boolean {
  if (args.length === 1) {
    const m = /^--disconnect=(.+)$/.exec(args[0]!);
    return m !== null && roleOf(m[1]!, st) === 'device';
  }
  return args.length === 2 && (args[0] === '-d' || args[0] === '--disconnect') && roleOf(args[1]!, st) === 'device';
}

/** `qemu-nbd --connect=DEVICE TARGET` (or `-c DEVICE`, `-f qcow2`), or a disconnect of DEVICE. */
function fitNbd(args: string[], st: PatternState): string | null {
  if (isDisconnect(args, st)) return null;
  let device: string | undefined;
  const rest: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const eq = /^--connect=(.+)$/.exec(a);
    if (eq) device = eq[1];
    else if (a === '-c' || a === '--connect') device = args[++i];
    else if (a === '-f' || a === '--format') {
      if (unquote(args[++i] ?? '') !== 'qcow2') return 'qemu-nbd of another format than qcow2';
    } else if (a === '--format=qcow2' || a === '-n' || a === '--nocache') continue;
    else if (a.startsWith('-')) return `qemu-nbd ${a} is not part of the pattern`;
    else rest.push(a);
  }
  if (device === undefined || roleOf(device, st) !== 'device' || rest.length !== 1 || roleOf(rest[0]!, st) !== 'target') {
    return 'qemu-nbd of something other than the target on the device';
  }
  st.connected = true;
  return null;
}
