/**
 * `vmlb migrate`: turns an image project of the original vm-layer-builder (scons + qemu-nbd)
 * into this tool's form, and says what it did and what it could not.
 *
 * - a modify-disk of the original's grow-the-disk pattern (`modify-disk SOURCE TARGET DEVICE`:
 *   qemu-img create of SIZE on SOURCE, qemu-nbd, growpart, e2fsck, resize2fs) becomes
 *   `# disk-size SIZE` + growpart/e2fsck/resize2fs on `$VMLB_DEVICE` and `vmlb-partition N`;
 *   any other modify-disk is left alone, naming its first line that does not fit;
 * - the base image the SConstruct downloads (a URL, an md5) becomes a `00_base/base-image` layer,
 *   its sha256 computed from a download, or a `sha256: TODO` line that vmlb build refuses;
 * - a hint line followed by prose becomes the bare hint, the prose a comment line after it;
 * - the rest of the original's files (SConstruct, site_scons/, bin/…, build/) is left alone
 *   and listed with what vmlb offers instead.
 *
 * The reading and rewriting of scripts and of the SConstruct are pure functions (unit-tested in
 * migrate.test.ts); migrateProject does the files and the download.
 */
import { createHash } from 'node:crypto';
import type { Dirent } from 'node:fs';
import { cp, mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import {
  LAYER_DIR_PATTERN,
  LAYER_KINDS,
  OUTPUT_DIR,
  ProjectError,
  VmlbError,
  formatBytes,
  loadProject,
  parseHints,
  parseSize,
  type LayerKind,
} from '@vmlb/layer-engine';

/** A usage error of `vmlb migrate` (exit status 2): a DIR that is no project, a bad --out. */
export const MIGRATE_USAGE = 'MIGRATE_USAGE';

export interface MigrateItem {
  /** The file or folder it is about, relative to the project ('.' for the project itself). */
  where: string;
  what: string;
}

export interface MigrateReport {
  /** The project read. */
  project: string;
  /** Where the migrated project is: --out, or the project itself. */
  target: string;
  /** Whether anything was written (false: a second run, nothing left that it can do). */
  changed: boolean;
  done: MigrateItem[];
  /** What is left to do by hand. */
  todo: MigrateItem[];
  /** The original's files left alone, each with what vmlb offers instead. */
  left: MigrateItem[];
  /** Whether vmlb build refuses or fails the project until the todo items are done. */
  blocksBuild: boolean;
}

// ---------------------------------------------------------------------------------------------
// Shell lines, as far as the original's modify-disk scripts need them

/** The line without a trailing `# comment` (a `#` that starts a word, outside quotes). */
function stripComment(line: string): string {
  let quote: string | null = null;
  for (let i = 0; i < line.length; i++) {
    const c = line[i]!;
    if (quote) {
      if (c === '\\' && quote === '"') i++;
      else if (c === quote) quote = null;
    } else if (c === '\\') i++;
    else if (c === '"' || c === "'") quote = c;
    else if (c === '#' && (i === 0 || /\s/.test(line[i - 1]!))) return line.slice(0, i).trimEnd();
  }
  return line.trimEnd();
}

/** Splits on a separator (`;`, `&&`, `||`) outside quotes, `{ }` and `$( )`. */
function splitTop(code: string, sep: ';' | '&&' | '||'): string[] {
  const out: string[] = [];
  let quote: string | null = null;
  let depth = 0;
  let start = 0;
  for (let i = 0; i < code.length; i++) {
    const c = code[i]!;
    if (quote) {
      if (c === '\\' && quote === '"') i++;
      else if (c === quote) quote = null;
      continue;
    }
    if (c === '\\') i++;
    else if (c === '"' || c === "'") quote = c;
    else if (c === '{' || c === '(') depth++;
    else if (c === '}' || c === ')') depth--;
    else if (depth === 0 && code.startsWith(sep, i) && !(sep === ';' && code[i + 1] === ';')) {
      // `&&` and `||` are two characters; `|` alone (a pipe) and `&` alone are not separators.
      out.push(code.slice(start, i).trim());
      start = i + sep.length;
      i += sep.length - 1;
    }
  }
  out.push(code.slice(start).trim());
  return out;
}

/** Shell words, split on blanks outside quotes; quotes are kept in the words. */
function words(stmt: string): string[] {
  const out: string[] = [];
  let cur = '';
  let quote: string | null = null;
  for (let i = 0; i < stmt.length; i++) {
    const c = stmt[i]!;
    if (quote) {
      cur += c;
      if (c === '\\' && quote === '"' && i + 1 < stmt.length) cur += stmt[++i];
      else if (c === quote) quote = null;
    } else if (/\s/.test(c)) {
      if (cur) out.push(cur);
      cur = '';
    } else {
      cur += c;
      if (c === '\\' && i + 1 < stmt.length) cur += stmt[++i];
      else if (c === '"' || c === "'") quote = c;
    }
  }
  if (cur) out.push(cur);
  return out;
}

/** A word without its quotes and backslashes (what the shell would pass, before expansion). */
function unquote(word: string): string {
  return word.replace(/\\(.)|["']/g, (_m, esc: string | undefined) => esc ?? '');
}

/** Redirections that change nothing a migrated script has to keep: to /dev/null or another descriptor. */
const HARMLESS_REDIRECT = /^(?:\d*|&)>>?(?:&\d|\/dev\/null)$/;

/** What a `||` may lead to after a step: ignoring its failure, or some of its exit codes. */
const TOLERATED_FAILURE = /^(?:true|:|\[\s+"?\$\?"?\s+-(?:eq|le|lt)\s+\d\s+\])$/;

const ROLE_NAMES = ['', 'source', 'target', 'device'] as const;
type Role = 'source' | 'target' | 'device';

/** The kinds of step in the original's grow-the-disk pattern. */
interface PatternState {
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
function fitStep(stmt: string, st: PatternState): string | null {
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

/** The argument check the original's example opens with: `if [ "$#" -ne 3 ]; then`. */
const ARGC_IF = /^if\s+(?:\[|test)\s[^;]*\$#/;
/** `[ "$#" -eq 3 ] || { echo usage >&2; exit 1; }`, `[ $# -eq 3 ] || exit 1` */
const ARGC_LINE = /^(?:\[|test)\s[^|&]*\$#[^|&]*(?:\|\||&&)\s*(?:\{(.*)\}|(exit\s+\d+))\s*;?$/;

function isUsageStep(stmt: string): boolean {
  const w = words(stmt);
  if (w.length === 0) return true;
  if (w[0] === 'exit' || w[0] === 'return') return true;
  return (w[0] === 'echo' || w[0] === 'printf' || w[0] === '>&2' || w[0] === '1>&2') && !/\$\(|`/.test(stmt);
}

export type ModifyDiskForm =
  /** The original's grow-the-disk pattern: rewritten to this tool's contract. */
  | { form: 'original'; size?: string; partition: number; rewritten: string }
  /** Already written for this tool ($VMLB_DEVICE, vmlb-partition): nothing to do. */
  | { form: 'vmlb' }
  /** Anything else: left alone. `line` is the first line that does not fit (0: none, the script lacks a step). */
  | { form: 'other'; line: number; text: string; why: string };

/** Lines of a script after its shebang with their line numbers, `\`-continued lines joined. */
function codeLines(script: string): { no: number; raw: string; code: string }[] {
  const lines = script.split('\n').map((l) => l.replace(/\r$/, ''));
  const out: { no: number; raw: string; code: string }[] = [];
  for (let i = 0; i < lines.length; i++) {
    if (i === 0 && lines[0]!.startsWith('#!')) continue;
    const start = i;
    let code = stripComment(lines[i]!).trim();
    while (code.endsWith('\\') && i + 1 < lines.length) code = code.slice(0, -1) + ' ' + stripComment(lines[++i]!).trim();
    if (code !== '') out.push({ no: start + 1, raw: lines[start]!.trim(), code });
  }
  return out;
}

/**
 * Read a modify-disk: the original's grow-the-disk pattern (every line of code one of its
 * steps), this tool's form, or something else, naming the first line that does not fit.
 */
export function classifyModifyDisk(script: string): ModifyDiskForm {
  const code = codeLines(script);
  const all = code.map((c) => c.code).join('\n');
  const usesArgs = /\$\{?[1-3]\b|\$[@*#]|qemu-nbd/.test(all);
  if (!usesArgs && /\$\{?VMLB_(?:DEVICE|IMAGE)\b|vmlb-partition/.test(all)) return { form: 'vmlb' };

  const st: PatternState = { positional: new Map(), literal: new Map(), connected: false };
  let inUsage: 'then' | 'body' | null = null;
  const notFit = (c: { no: number; raw: string }, why: string): ModifyDiskForm => ({ form: 'other', line: c.no, text: c.raw, why });
  /** The parts of an `if [ $# … ]; then …; fi` block after its condition; false when one does more than print and exit. */
  const usageParts = (parts: string[]): boolean => {
    for (let p of parts) {
      if (inUsage === 'then') {
        const then = /^then(?:\s+(.*))?$/.exec(p);
        if (!then) return false;
        inUsage = 'body';
        if (then[1] === undefined) continue;
        p = then[1];
      }
      if (p === 'fi' && inUsage === 'body') inUsage = null;
      else if (inUsage === null || !isUsageStep(p)) return false;
    }
    return true;
  };
  const usageWhy = 'an argument check that does more than print a usage line and exit';
  for (const c of code) {
    if (inUsage) {
      if (!usageParts(splitTop(c.code, ';').filter(Boolean))) return notFit(c, usageWhy);
      continue;
    }
    if (ARGC_IF.test(c.code)) {
      inUsage = 'then';
      if (!usageParts(splitTop(c.code, ';').filter(Boolean).slice(1))) return notFit(c, usageWhy);
      continue;
    }
    const one = ARGC_LINE.exec(c.code);
    if (one) {
      if (one[1] !== undefined && !splitTop(one[1], ';').filter(Boolean).every(isUsageStep)) return notFit(c, usageWhy);
      continue;
    }
    for (const stmt of splitTop(c.code, ';').flatMap((s) => splitTop(s, '&&')).filter(Boolean)) {
      const [head, ...tolerated] = splitTop(stmt, '||');
      if (tolerated.some((t) => !TOLERATED_FAILURE.test(t))) return notFit(c, 'it runs something else when a step fails');
      const why = fitStep(head!, st);
      if (why) return notFit(c, why);
    }
  }
  if (inUsage) return { form: 'other', line: 0, text: '', why: 'an argument check with no fi' };
  const lacks = (what: string): ModifyDiskForm => ({ form: 'other', line: 0, text: '', why: `it has no ${what}` });
  if (!st.created) return lacks('qemu-img create -b SOURCE TARGET');
  if (!st.connected) return lacks('qemu-nbd --connect=DEVICE TARGET');
  if (st.growpart === undefined) return lacks('growpart DEVICE N');
  if (st.resize === undefined) return lacks('resize2fs of the grown partition');
  const parts = new Set([st.growpart, st.resize, ...(st.fsck === undefined ? [] : [st.fsck])]);
  if (parts.size > 1) return { form: 'other', line: 0, text: '', why: `growpart, e2fsck and resize2fs work on different partitions (${[...parts].join(', ')})` };
  const size = st.created.size === undefined ? undefined : /^\d+(\.\d+)?[kmgtp]$/i.test(st.created.size) ? st.created.size.toUpperCase() : st.created.size;
  return { form: 'original', size, partition: st.growpart, rewritten: rewriteModifyDisk(script, size, st.growpart) };
}

/** The original's grow-the-disk modify-disk, written for this tool (the style of examples/debian/03_grow). */
function rewriteModifyDisk(script: string, size: string | undefined, n: number): string {
  const lines = script.split('\n').map((l) => l.replace(/\r$/, ''));
  const shebang = lines[0]!.startsWith('#!') ? lines[0]! : '#!/bin/sh';
  // Keep the comments that open the script and every hint (# nocache, # noshare, # timeout …).
  const leading: string[] = [];
  const hints: string[] = [];
  let inHead = true;
  lines.forEach((line, i) => {
    if (i === 0 && line.startsWith('#!')) return;
    const isComment = /^\s*#/.test(line);
    const hint = HINT_LINE.exec(line);
    if (hint && hint[1] !== 'disk-size') hints.push(line.trim());
    else if (inHead && isComment && !hint) leading.push(line);
    else if (line.trim() !== '') inHead = inHead && isComment;
  });
  while (leading.length && leading[0]!.trim() === '#') leading.shift();
  const out = [
    shebang,
    ...leading,
    '# Runs on the host with the whole disk as $VMLB_DEVICE: the engine made the overlay and grew',
    '# the virtual disk to the size below first (vmlb migrate rewrote the original\'s',
    '# "modify-disk SOURCE TARGET DEVICE" for this); grow the partition and its filesystem into it.',
    ...(size === undefined ? [] : [`# disk-size ${size}`]),
    ...hints,
    'set -eu',
    `growpart "$VMLB_DEVICE" ${n} || [ $? -eq 1 ]     # exit 1 means "nothing to grow"`,
    `p=$(vmlb-partition ${n})`,
    'e2fsck -fy "$p" || [ $? -le 1 ]',
    'resize2fs "$p"',
  ];
  return out.join('\n') + '\n';
}

// ---------------------------------------------------------------------------------------------
// Hints

/** A hint line as the engine reads it (libs/layer-engine/src/hints.ts). */
const HINT_LINE = /^\s*#\s*(nocache|noshare|chroot-bind-mount|chroot-mount|cache-mount|disk-size|timeout|network)(?![\w-])\s*(.*?)\s*$/;
/** How many arguments each hint takes; what follows them is prose. */
const HINT_ARITY: Record<string, number> = { nocache: 0, noshare: 0, 'disk-size': 1, timeout: 1, 'chroot-bind-mount': 2, 'chroot-mount': 2, 'cache-mount': 1, network: 1 };

export interface HintChange {
  line: number;
  from: string;
  hint: string;
  prose: string;
}

/**
 * Every hint line followed by prose (`# nocache (this layer is never cached)`) as the bare hint,
 * the prose kept as a comment line right after it. A line whose prose the engine would not
 * take as prose (a malformed hint) is left as it is: vmlb build names it.
 */
export function normaliseHints(script: string, kind: LayerKind): { text: string; changes: HintChange[] } {
  const lines = script.split('\n');
  const out: string[] = [];
  const changes: HintChange[] = [];
  lines.forEach((line, i) => {
    const bare = line.replace(/\r$/, '');
    const m = i === 0 && bare.startsWith('#!') ? null : HINT_LINE.exec(bare);
    if (!m || m[2] === '') return void out.push(line);
    const name = m[1]!;
    const args = m[2]!.split(/\s+/);
    const arity = HINT_ARITY[name]!;
    if (args.length <= arity || parseHints(bare, kind).problems.length > 0) return void out.push(line);
    const hint = ['#', name, ...args.slice(0, arity)].join(' ');
    let prose = args.slice(arity).join(' ').replace(/^#+\s*/, '');
    // The prose must not read as a hint itself.
    if (HINT_LINE.test(`# ${prose}`)) prose = `(${prose})`;
    const cr = line.endsWith('\r') ? '\r' : '';
    out.push(hint + cr, `# ${prose}${cr}`);
    changes.push({ line: i + 1, from: bare.trim(), hint, prose });
  });
  return { text: out.join('\n'), changes };
}

// ---------------------------------------------------------------------------------------------
// The SConstruct's base image

export interface SconsBaseImage {
  /** The base image's URL, when the SConstruct names exactly one. */
  url?: string;
  /** Every distinct http(s) URL it names (after filling in format placeholders). */
  urls: string[];
  /** A URL whose placeholders could not be filled in from the SConstruct. */
  unresolved?: string;
  /** The md5 nearest to the URL (the original checks the decompressed image against it). */
  md5?: string;
  /** The scons cache folder (`CacheDir('build_cache')`). */
  cacheDir?: string;
}

/**
 * The base image an original SConstruct downloads, read tolerantly: the http(s) URLs in its
 * code (comments skipped), placeholders (`{0}`, `{}`, `%s`) filled in from the `.format(…)`
 * or `% …` after them and the plain string variables they name, and the 32-hex-digit string
 * in quotes nearest to the URL as its md5.
 */
export function readSConstruct(text: string): SconsBaseImage {
  const code = text
    .split('\n')
    .map((l) => (/^\s*#/.test(l) ? '' : l))
    .join('\n');
  const strings = new Map<string, string>();
  for (const m of code.matchAll(/^\s*([A-Za-z_]\w*)\s*=\s*(['"])([^'"\n]*)\2\s*$/gm)) strings.set(m[1]!, m[3]!);
  const valueOf = (expr: string): string | undefined => {
    const e = expr.trim();
    const lit = /^(['"])([^'"]*)\1$/.exec(e);
    if (lit) return lit[2];
    return /^[A-Za-z_]\w*$/.test(e) ? strings.get(e) : undefined;
  };

  const found: { url: string; at: number }[] = [];
  let unresolved: string | undefined;
  for (const m of code.matchAll(/https?:\/\/[^\s'"\\<>]+/g)) {
    let url = m[0].replace(/[.,;:)]+$/, '');
    const after = code.slice(m.index! + m[0].length);
    if (/\{\w*\}/.test(url)) {
      const fmt = /^[^\n]*?(?:\n[^\n]*?){0,6}?\.format\(([^)]*)\)/.exec(after);
      const args = fmt ? fmt[1]!.split(',') : [];
      let next = 0;
      url = url.replace(/\{(\w*)\}/g, (whole, key: string) => {
        const kw = key !== '' && !/^\d+$/.test(key) ? args.find((a) => new RegExp(`^\\s*${key}\\s*=`).test(a)) : undefined;
        const arg = kw ? kw.replace(/^[^=]*=/, '') : args[key === '' ? next++ : Number(key)];
        return (arg === undefined ? undefined : valueOf(arg)) ?? whole;
      });
    }
    if (/%[sd]/.test(url)) {
      const pct = /^[^\n]*?(?:\n[^\n]*?){0,6}?['"]{1,3}\s*%\s*(\([^)]*\)|[A-Za-z_]\w*)/.exec(after);
      const args = pct ? pct[1]!.replace(/^\(|\)$/g, '').split(',') : [];
      let next = 0;
      url = url.replace(/%[sd]/g, (whole) => {
        const arg = args[next++];
        return (arg === undefined ? undefined : valueOf(arg)) ?? whole;
      });
    }
    if (/\{\w*\}|%[sd]|\$/.test(url)) unresolved ??= url;
    else found.push({ url, at: m.index! });
  }
  const urls = [...new Set(found.map((f) => f.url))];
  const first = found[0];
  let md5: string | undefined;
  if (first) {
    let best = Infinity;
    for (const m of code.matchAll(/(['"])([0-9a-fA-F]{32})\1/g)) {
      const d = Math.abs(m.index! - first.at);
      if (d < best) [best, md5] = [d, m[2]!.toLowerCase()];
    }
  }
  const cacheDir = /CacheDir\(\s*(['"])([^'"]+)\1\s*\)/.exec(code)?.[2];
  return { url: urls.length === 1 && !unresolved ? urls[0] : undefined, urls, unresolved, md5, cacheDir };
}

/** The compression a name says a file has (`.xz`, `.gz`, …), or null. */
export function compressionOf(url: string): string | null {
  const m = /\.(xz|gz|tgz|bz2|zst|zstd|lz4|lzma)$/i.exec(url.replace(/[?#].*$/, ''));
  return m ? m[1]!.toLowerCase() : null;
}

/** The compression the first bytes of a file show, or null. */
function compressionMagic(head: Buffer): string | null {
  if (head.subarray(0, 6).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))) return 'xz';
  if (head[0] === 0x1f && head[1] === 0x8b) return 'gz';
  if (head.subarray(0, 3).toString('latin1') === 'BZh') return 'bz2';
  if (head.subarray(0, 4).equals(Buffer.from([0x28, 0xb5, 0x2f, 0xfd]))) return 'zst';
  return null;
}

/** The text of a `base-image` file for the original's base image. */
export function baseImageText(o: { url: string; sha256?: string; md5?: string; todo?: string }): string {
  const lines = ['# The base image the original SConstruct downloaded (written by vmlb migrate).'];
  if (o.md5) lines.push(`# md5 in the SConstruct (of the decompressed image): ${o.md5}`);
  lines.push(`source: ${o.url}`);
  lines.push(o.sha256 ? `sha256: ${o.sha256}` : `sha256: TODO ${o.todo ?? 'put the image\'s sha256 here (sha256sum IMAGE)'}`);
  return lines.join('\n') + '\n';
}

export type Download =
  | { result: 'hashed'; sha256: string; md5: string; bytes: number }
  | { result: 'compressed'; format: string }
  | { result: 'unreachable'; why: string };

/**
 * Downloads a URL to hash it (sha256 and md5), keeping nothing; stops at once when its first
 * bytes show a compressed file, and gives up after `stallMs` without data.
 */
export async function hashUrl(url: string, opts: { stallMs?: number } = {}): Promise<Download> {
  const stallMs = opts.stallMs ?? 30_000;
  const ac = new AbortController();
  let timer = setTimeout(() => ac.abort(), stallMs);
  const poke = () => {
    clearTimeout(timer);
    timer = setTimeout(() => ac.abort(), stallMs);
  };
  try {
    let res: Response;
    try {
      res = await fetch(url, { signal: ac.signal, redirect: 'follow' });
    } catch (e) {
      const err = e as Error & { cause?: Error };
      const why = ac.signal.aborted ? `no answer in ${Math.round(stallMs / 1000)} s` : (err.cause?.message ?? err.message);
      return { result: 'unreachable', why };
    }
    if (!res.ok || !res.body) {
      await res.body?.cancel().catch(() => {});
      return { result: 'unreachable', why: `HTTP ${res.status}` };
    }
    const sha = createHash('sha256');
    const md5 = createHash('md5');
    let bytes = 0;
    try {
      for await (const chunk of Readable.fromWeb(res.body as import('node:stream/web').ReadableStream)) {
        const c = chunk as Buffer;
        if (bytes === 0) {
          const format = compressionMagic(c);
          if (format) {
            ac.abort();
            return { result: 'compressed', format };
          }
        }
        poke();
        sha.update(c);
        md5.update(c);
        bytes += c.length;
      }
    } catch (e) {
      return { result: 'unreachable', why: ac.signal.aborted ? `the download stalled (no data for ${Math.round(stallMs / 1000)} s)` : (e as Error).message };
    }
    return { result: 'hashed', sha256: sha.digest('hex'), md5: md5.digest('hex'), bytes };
  } finally {
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------------------------------------
// The project

export interface MigrateOptions {
  /** The original project. */
  dir: string;
  /** Copy the project here first and migrate the copy (a new or empty folder). */
  out?: string;
  /** How long a download may go without data. */
  stallMs?: number;
  /** Progress lines (downloads). */
  onProgress?: (line: string) => void;
}

/** What vmlb offers for each of the original's own files. */
const ORIGINAL_FILES: Record<string, string> = {
  SConstruct: "the original's scons build: vmlb build reads the layer folders itself (its base image is now a base-image layer); remove it once nobody builds this with scons",
  's3_cache.py': "the original's shared cache on S3: vmlb build --cache s3://BUCKET/PREFIX (or VMLB_CACHE) shares layers through any S3 store; a fleet's shared store is VMLB_SHARED (vmlb submit)",
  'bin/new-layer': 'vmlb new-layer NAME (it numbers the folder itself: NAME without NN_)',
  'bin/test-boot': 'vmlb test-boot (-snapshot, user networking or --bridge br0, --user-data/--meta-data for the cloud-init seed)',
  'bin/compare-layers': 'vmlb diff A B lists the changes (an image file, a layer name or a key on each side), vmlb shell A --compare B opens a shell in A with B read-only at /compare; no nbd device needed',
  'bin/qemu-chroot': 'vmlb build runs each build-layer in its own sandbox, the layer folder at /mnt; vmlb shell LAYER opens a shell there by hand',
  'bin/lib.sh': "the original's shell helpers for its bin/ scripts",
  'test-boot': 'vmlb test-boot --user-data test-boot/user-data.yaml --meta-data test-boot/meta-data.yaml makes the cloud-init seed itself (no cloud-init.img to generate)',
};

function usage(message: string): VmlbError {
  return new VmlbError(MIGRATE_USAGE, message);
}

async function isDir(p: string): Promise<boolean> {
  return stat(p).then(
    (s) => s.isDirectory(),
    () => false,
  );
}

async function exists(p: string): Promise<boolean> {
  return stat(p).then(
    () => true,
    () => false,
  );
}

async function readIfFile(p: string): Promise<string | null> {
  try {
    return await readFile(p, 'utf8');
  } catch (e) {
    if (['ENOENT', 'ENOTDIR', 'EISDIR'].includes((e as NodeJS.ErrnoException).code ?? '')) return null;
    throw e;
  }
}

/** Migrate an original project in place or into `out`; see the module's comment. */
export async function migrateProject(o: MigrateOptions): Promise<MigrateReport> {
  const project = path.resolve(o.dir);
  let top: Dirent[];
  try {
    if (!(await stat(project)).isDirectory()) throw usage(`${project} is not a folder: name the project of the original vm-layer-builder to migrate`);
    top = await readdir(project, { withFileTypes: true });
  } catch (e) {
    if (e instanceof VmlbError) throw e;
    throw usage(`cannot read the project folder ${project}: ${(e as Error).message}`);
  }
  const layerNames = (
    await Promise.all(top.map(async (d) => (LAYER_DIR_PATTERN.test(d.name) && (await isDir(path.join(project, d.name))) ? [d.name] : [])))
  ).flat();
  if (layerNames.length === 0) {
    throw usage(`${project} has no layer folders (NN_name, e.g. 10_update): it is not an image project of the original vm-layer-builder, nor of vmlb`);
  }

  const report: MigrateReport = { project, target: project, changed: false, done: [], todo: [], left: [], blocksBuild: false };
  const done = (where: string, what: string) => report.done.push({ where, what });
  const todo = (where: string, what: string, blocks = true) => {
    report.todo.push({ where, what });
    if (blocks) report.blocksBuild = true;
  };
  const left = (where: string, what: string) => report.left.push({ where, what });

  const scons = await readIfFile(path.join(project, 'SConstruct'));
  const base = scons === null ? null : readSConstruct(scons);
  const notCopied = new Set([OUTPUT_DIR, ...(base?.cacheDir ? [base.cacheDir.replace(/\/+$/, '')] : [])]);

  // --out: a copy of the project (without the original's output and cache) is what is migrated.
  if (o.out !== undefined) {
    const out = path.resolve(o.out);
    if (out === project || out.startsWith(project + path.sep)) throw usage(`--out ${out} is inside the project ${project}: name a folder outside it`);
    if (project.startsWith(out + path.sep)) throw usage(`--out ${out} holds the project ${project}: name a new or empty folder`);
    const existing = await readdir(out).catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return null;
      if (e.code === 'ENOTDIR') throw usage(`--out ${out} is a file: name a new or empty folder`);
      throw e;
    });
    if (existing && existing.length > 0) throw usage(`--out ${out} exists and is not empty: name a new or empty folder`);
    await mkdir(out, { recursive: true });
    const skipped: string[] = [];
    for (const d of top) {
      if (notCopied.has(d.name) && d.isDirectory()) {
        skipped.push(`${d.name}/`);
        continue;
      }
      await cp(path.join(project, d.name), path.join(out, d.name), { recursive: true, verbatimSymlinks: true, preserveTimestamps: true });
    }
    report.target = out;
    report.changed = true;
    done('.', `copied the project to ${out}${skipped.length ? ` (all but ${skipped.join(' and ')}: the original's output and cache)` : ''}`);
  }
  const target = report.target;
  const write = async (rel: string, text: string) => {
    await writeFile(path.join(target, rel), text);
    report.changed = true;
  };

  const layers = layerNames
    .map((name) => ({ name, number: Number(LAYER_DIR_PATTERN.exec(name)![1]) }))
    .sort((a, b) => a.number - b.number || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));

  // 1. modify-disk scripts, and 3. hints, layer by layer.
  const kinds = new Map<string, LayerKind[]>();
  for (const layer of layers) {
    const entries = await readdir(path.join(target, layer.name)).catch(() => [] as string[]);
    const found = LAYER_KINDS.filter((k) => entries.includes(k));
    kinds.set(layer.name, found);
    for (const kind of found) {
      if (kind === 'base-image') continue;
      const rel = `${layer.name}/${kind}`;
      const original = await readIfFile(path.join(target, rel));
      if (original === null) continue;
      let text = original;
      if (kind === 'modify-disk') {
        const form = classifyModifyDisk(text);
        if (form.form === 'original') {
          text = form.rewritten;
          const size = form.size ? `# disk-size ${form.size} (the size its qemu-img create gave the overlay), then ` : 'no # disk-size (its qemu-img create kept the size), then ';
          done(rel, `rewritten from the original's "modify-disk SOURCE TARGET DEVICE" for vmlb: ${size}growpart, e2fsck and resize2fs of partition ${form.partition} through $VMLB_DEVICE and vmlb-partition ${form.partition} (vmlb makes and attaches the overlay itself)`);
        } else if (form.form === 'other') {
          const at = form.line
            ? `line ${form.line} does not fit the original's grow-the-disk pattern (${form.why}): ${form.text}`
            : `it does not fit the original's grow-the-disk pattern: ${form.why}`;
          todo(rel, `left alone: ${at} — rewrite it by hand for vmlb: it gets no arguments, the disk is $VMLB_DEVICE (grown first by # disk-size SIZE), the overlay $VMLB_IMAGE, and vmlb-partition N names partition N`);
        }
      }
      const hints = normaliseHints(text, kind);
      text = hints.text;
      for (const c of hints.changes) {
        done(rel, `line ${c.line}: "${c.from}" is now "${c.hint}", its prose kept as a comment on the line after it`);
      }
      if (text !== original) await write(rel, text);
    }
  }

  // 2. The base image.
  const first = layers[0]!;
  const firstKinds = kinds.get(first.name) ?? [];
  if (firstKinds.includes('base-image')) {
    const rel = `${first.name}/base-image`;
    const text = (await readIfFile(path.join(target, rel))) ?? '';
    const sum = /^[ \t]*sha256[ \t]*:[ \t]*(TODO\b.*)$/im.exec(text);
    if (sum) {
      // Left by an earlier run: try again (the URL may answer now).
      const url = /^[ \t]*(?:source|url)[ \t]*:[ \t]*(https?:\/\/\S+)[ \t]*$/im.exec(text)?.[1];
      const md5 = /^#[ \t]*md5 in the SConstruct[^:\n]*:[ \t]*([0-9a-f]{32})[ \t]*$/im.exec(text)?.[1] ?? (base?.url === url ? base?.md5 : undefined);
      const compressed = url ? compressionOf(url) : null;
      const r = url && !compressed ? await fetchBase(url, md5, o) : null;
      if (r?.sha256) {
        await write(rel, text.replace(sum[0], `sha256: ${r.sha256}`));
        done(rel, `sha256: ${r.said}`);
      } else {
        const line = text.slice(0, sum.index).split('\n').length;
        const why = compressed ? `${url} is compressed (${compressed}): vmlb imports a qcow2 or raw image as it is` : r?.said;
        todo(rel, `line ${line}: sha256: is still a TODO${why ? ` (${why})` : ''}; put the image's sha256 there (sha256sum IMAGE)`);
      }
    }
  } else if (!firstKinds.includes('create-disk')) {
    const needs = `the first layer (${first.name}) needs a base-image or create-disk layer before it`;
    const zero = layers.find((l) => l.number === 0);
    if (scons === null) todo('.', `no SConstruct names the original's base image: ${needs}, e.g. 00_base/base-image with "source: URL" and "sha256: HEX"`);
    else if (base!.unresolved) todo('SConstruct', `its base image's URL "${base!.unresolved}" has parts vmlb migrate cannot fill in: ${needs}, e.g. 00_base/base-image with "source: URL" and "sha256: HEX"`);
    else if (base!.urls.length === 0) todo('SConstruct', `it names no http(s) URL of a base image: ${needs}, e.g. 00_base/base-image with "source: URL" and "sha256: HEX"`);
    else if (base!.urls.length > 1) todo('SConstruct', `it names ${base!.urls.length} URLs (${base!.urls.join(', ')}): ${needs}: 00_base/base-image with "source: URL" of the base image and "sha256: HEX"`);
    else if (zero || (await exists(path.join(target, '00_base')))) {
      todo(zero?.name ?? '00_base', `the base image's layer goes first as 00_base, but ${zero ? `layer number 0 is ${zero.name}` : '00_base exists'}: renumber ${zero?.name ?? 'it'} (e.g. to 01_${zero ? LAYER_DIR_PATTERN.exec(zero.name)![2] : 'x'}) and run vmlb migrate again`);
    } else {
      const url = base!.url!;
      const md5 = base!.md5;
      const rel = '00_base/base-image';
      const compressed = compressionOf(url);
      const r = compressed ? null : await fetchBase(url, md5, o);
      await mkdir(path.join(target, '00_base'), { recursive: true });
      report.changed = true;
      if (r?.sha256) {
        await write(rel, baseImageText({ url, sha256: r.sha256, md5 }));
        done(rel, `added before ${first.name}, the image the SConstruct downloaded: source: ${url}, sha256: ${r.said}`);
      } else {
        const why = compressed ?? r?.compressed;
        const todoLine = why
          ? `the image is compressed (${why}): vmlb imports a qcow2 or raw image as it is`
          : `the image's sha256 (sha256sum IMAGE): vmlb migrate could not download it (${r!.why ?? r!.said})`;
        const text = baseImageText({ url, md5, todo: todoLine });
        await write(rel, text);
        done(rel, `added before ${first.name}, the image the SConstruct downloaded: source: ${url}, with its sha256 still to fill in`);
        const line = text.split('\n').findIndex((l) => l.startsWith('sha256:')) + 1;
        todo(
          rel,
          why
            ? `the SConstruct's image ${url} is compressed (${why}), and vmlb imports a qcow2 or raw image as it is: decompress it${md5 ? `, check its md5 (${md5})` : ''}, put the image where vmlb can read it (on the source: line, a path relative to 00_base or an http(s) URL) and its sha256 on line ${line}`
            : `line ${line}: sha256: is a TODO: ${r!.said}; put the image's sha256 there (sha256sum IMAGE), or run vmlb migrate again when the URL answers`,
        );
      }
    }
  }

  // 4. The original's own files, and anything else: left alone, and listed.
  const targetTop = await readdir(target, { withFileTypes: true });
  const names = new Set(targetTop.map((d) => d.name));
  if (o.out !== undefined) for (const d of top) if (notCopied.has(d.name) && d.isDirectory()) names.add(d.name);
  for (const name of [...names].sort()) {
    if (name.startsWith('.') || layerNames.includes(name) || name === '00_base') continue;
    const inOut = o.out !== undefined && notCopied.has(name);
    if (name === OUTPUT_DIR) {
      left(`${name}/`, `the original's output (layer qcow2s, image.qcow2)${inOut ? ', not copied' : ''}: vmlb build writes build/image.qcow2 (a thin overlay on its store's chain; --flatten for one file)${inOut ? '' : '; remove the old one (rm -r build) before'}`);
    } else if (base?.cacheDir && name === base.cacheDir.replace(/\/+$/, '')) {
      left(`${name}/`, `the original's scons cache${inOut ? ', not copied' : ''}: vmlb keeps layers in its store (VMLB_STORE, ~/.cache/vmlb), keyed anew; nothing of it is reused`);
    } else if (name === 'site_scons') {
      const files = await readdir(path.join(target, name)).catch(() => [] as string[]);
      const s3 = files.includes('s3_cache.py') ? `s3_cache.py: ${ORIGINAL_FILES['s3_cache.py']}` : 'scons plugins: vmlb has no plugins';
      left('site_scons/', s3);
    } else if (name === 'bin' && (await isDir(path.join(target, name)))) {
      for (const f of (await readdir(path.join(target, name))).sort()) {
        left(`bin/${f}`, ORIGINAL_FILES[`bin/${f}`] ?? "not one of the original's scripts; left as it is");
      }
    } else if (ORIGINAL_FILES[name]) {
      left(names.has(name) && (await isDir(path.join(target, name))) ? `${name}/` : name, ORIGINAL_FILES[name]!);
    } else {
      left(name, 'not a layer folder: left as it is (vmlb reads only the NN_name folders)');
    }
  }

  // Whatever else vmlb build would refuse (a script that is not executable, a bad hint, a name
  // out of pattern): named as loadProject names it, unless already said above.
  try {
    await loadProject(target);
  } catch (e) {
    if (!(e instanceof ProjectError)) throw e;
    const said = new Set(report.todo.map((t) => t.where));
    for (const p of e.problems) {
      if (said.has(p.where)) continue;
      if (/^the first layer must be a base-image or a create-disk/.test(p.problem) && report.todo.length > 0) continue;
      todo(p.where, `vmlb build refuses it: ${p.problem}`);
    }
  }
  return report;
}

/** Download the base image to hash it; what to say about it, and its sha256 when it is the one the SConstruct pins. */
async function fetchBase(url: string, md5: string | undefined, o: MigrateOptions): Promise<{ sha256?: string; said: string; why?: string; compressed?: string }> {
  o.onProgress?.(`downloading ${url} to compute its sha256…`);
  const r = await hashUrl(url, { stallMs: o.stallMs });
  if (r.result === 'unreachable') return { said: `downloading ${url} failed: ${r.why}`, why: r.why };
  if (r.result === 'compressed') return { said: `${url} is a compressed file (${r.format})`, compressed: r.format };
  if (md5 && r.md5 !== md5) {
    return { said: `the image at ${url} has md5 ${r.md5}, but the SConstruct pins ${md5}: it is not the image the project was built on; check it`, why: `its md5 is ${r.md5}, not the SConstruct's ${md5}` };
  }
  const check = md5 ? 'its md5 matches the SConstruct\'s' : 'the SConstruct gives no md5 to check it against';
  return { sha256: r.sha256, said: `computed from a download of ${formatBytes(r.bytes)} (${check})` };
}

/** The report as lines of text: one per item, then a summary line. */
export function formatReport(r: MigrateReport): string[] {
  const lines: string[] = [];
  const where = (w: string) => (w === '.' ? 'project' : w);
  for (const d of r.done) lines.push(`done  ${where(d.where)}: ${d.what}`);
  for (const t of r.todo) lines.push(`todo  ${where(t.where)}: ${t.what}`);
  for (const l of r.left) lines.push(`left  ${where(l.where)}: ${l.what}`);
  lines.push(summaryLine(r));
  return lines;
}

export function summaryLine(r: MigrateReport): string {
  const rel = path.relative(process.cwd(), r.target) || '.';
  const n = r.todo.length;
  if (n === 0) return `${r.changed ? '' : "nothing changed: the project is in vmlb's form already; "}nothing left to do by hand: vmlb build ${rel} builds it`;
  const unchanged = r.changed ? '' : 'nothing changed: what vmlb migrate can do is done; ';
  return `${unchanged}${n} thing${n === 1 ? '' : 's'} left to do by hand (the todo lines)${r.blocksBuild ? '; the project will not build until they are done' : ''}`;
}
