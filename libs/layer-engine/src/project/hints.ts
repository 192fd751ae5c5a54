import type { LayerHints, LayerKind } from '../types.js';
import { parseDuration, parseSize } from '../sizes.js';

/** The size of the blank disk a create-disk layer gets when its script has no `# disk-size`. */
export const DEFAULT_DISK_SIZE = 2 * 1024 ** 3;

export type HintName = 'nocache' | 'noshare' | 'chroot-bind-mount' | 'chroot-mount' | 'cache-mount' | 'disk-size' | 'timeout' | 'network' | 'args';

/** The one `# args` contract: the original tool's modify-disk arguments (see LayerHints.legacyArgs). */
export const LEGACY_ARGS = ['source', 'target', 'device'] as const;

/**
 * A hint is a comment line that starts with a hint's name: `# name` or `# name ARGS`. Anything
 * else after `#` is an ordinary comment, so prose such as `# hints: timeout DURATION` is never
 * read as a hint. As the original tool reads them, `# nocache` and `# noshare` are that hint
 * whatever follows (`# nocache (this layer is never cached)`); the other hints take their
 * arguments and may be followed by prose (see isProse), while what is really malformed (a
 * `# disk-size` with no size, a third mount argument) is refused, naming the line.
 * `# args` is a hint only as `# args source target device` (prose may follow): any other
 * comment that starts with the word stays a comment.
 */
const HINT_LINE = /^\s*#\s*(nocache|noshare|chroot-bind-mount|chroot-mount|cache-mount|disk-size|timeout|network|args)(?![\w-])\s*(.*?)\s*$/;

/** How many arguments each hint takes: what follows them may be prose. */
const ARITY: Record<HintName, number> = { nocache: 0, noshare: 0, 'disk-size': 1, timeout: 1, 'chroot-bind-mount': 2, 'chroot-mount': 2, 'cache-mount': 1, network: 1, args: 3 };

/** A unit written apart from its number (`4 G`, `10 min`): part of a malformed argument, not prose. */
const UNIT_WORD = /^(?:[kmgtpe]i?b?|bytes?|ms|s|secs?|seconds?|m|mins?|minutes?|h|hrs?|hours?|d|days?)$/i;

/**
 * Whether the text after a hint's arguments is plainly prose: it opens like a remark (a
 * bracket, `#`, a dash, `:` `;` `,` `.`), or it is two or more words the first of which is a
 * word of letters and no unit (`# disk-size 4G for the kernel and initramfs`). One stray
 * word (`# chroot-mount 1 /boot extra`) or a detached unit (`# disk-size 4 G`) is not.
 */
function isProse(rest: string): boolean {
  if (/^[([{#\-\u2013\u2014:;,.]/.test(rest)) return true;
  const words = rest.split(/\s+/);
  return words.length >= 2 && /^[a-z][a-z']+$/i.test(words[0]!) && !UNIT_WORD.test(words[0]!);
}

/**
 * A hint line read: its hint, its arguments and the prose after them ('' when none). When what
 * follows the arguments is no prose, it stays in `args`, for parseHints to refuse. Null: the
 * line is no hint line. (`vmlb migrate` writes a hint and its prose on lines of their own.)
 */
export function readHintLine(line: string): { name: HintName; args: string[]; prose: string } | null {
  const m = HINT_LINE.exec(line);
  if (!m) return null;
  const name = m[1] as HintName;
  const arg = (m[2] ?? '').trim();
  const args = arg === '' ? [] : arg.split(/\s+/);
  if (name === 'args' && LEGACY_ARGS.some((w, i) => args[i] !== w)) return null;
  if (args.length > ARITY[name]) {
    const rest = args.slice(ARITY[name]).join(' ');
    if (ARITY[name] === 0 || isProse(rest)) return { name, args: args.slice(0, ARITY[name]), prose: rest };
  }
  return { name, args, prose: '' };
}

const SCRIPT_KINDS: readonly LayerKind[] = ['create-disk', 'build-layer', 'modify-disk'];

/** Where each hint means something. */
const APPLIES_TO: Record<HintName, readonly LayerKind[]> = {
  nocache: ['base-image', ...SCRIPT_KINDS],
  noshare: ['base-image', ...SCRIPT_KINDS],
  timeout: SCRIPT_KINDS,
  'disk-size': ['create-disk', 'modify-disk'],
  'chroot-bind-mount': ['build-layer'],
  'chroot-mount': ['build-layer'],
  'cache-mount': ['build-layer'],
  network: SCRIPT_KINDS,
  args: ['modify-disk'],
};

export function emptyHints(): LayerHints {
  return { nocache: false, noshare: false, bindMounts: [], partitionMounts: [] };
}

/**
 * Read the hints of a layer's entry script (or base-image file). Every problem is collected,
 * one message per bad line naming the line, the hint, what is wrong and what is expected.
 * A create-disk without `# disk-size` leaves `diskSize` unset: the runner applies
 * DEFAULT_DISK_SIZE, so that `explain` can tell a default from a stated size.
 */
export function parseHints(scriptText: string, kind: LayerKind): { hints: LayerHints; problems: string[] } {
  const hints = emptyHints();
  const problems: string[] = [];
  const seenAt = new Map<HintName, number>();
  const mountTargets = new Map<string, number>();

  const lines = scriptText.split(/\r?\n/);
  lines.forEach((line, i) => {
    const lineNo = i + 1;
    if (i === 0 && line.startsWith('#!')) return;
    const hint = readHintLine(line);
    if (!hint) return;
    // Prose after the arguments is kept out of them; what is no prose stays in, to be refused below.
    const { name, args } = hint;
    const arg = args.join(' ');
    const problem = (what: string): void => {
      problems.push(`line ${lineNo}: # ${name}: ${what}`);
    };

    if (!APPLIES_TO[name].includes(kind)) {
      const where = APPLIES_TO[name].join(', ');
      problem(
        kind === 'base-image'
          ? `does not apply to a base-image file (it runs no script); only # nocache and # noshare do`
          : `does not apply to a ${kind} layer; it is for ${where} only`,
      );
      return;
    }

    const previous = seenAt.get(name);
    seenAt.set(name, previous ?? lineNo);

    switch (name) {
      case 'nocache':
      case 'noshare':
        hints[name] = true;
        return;

      case 'disk-size':
      case 'timeout': {
        if (previous !== undefined) return problem(`given twice (first on line ${previous}); keep one`);
        const example = name === 'disk-size' ? '# disk-size 4G' : '# timeout 10m';
        const what = name === 'disk-size' ? 'SIZE' : 'DURATION';
        if (args.length !== 1) {
          return problem(`expects one ${what}, e.g. "${example}" (found ${args.length === 0 ? 'none' : `"${arg}"`})`);
        }
        let value: number;
        try {
          value = name === 'disk-size' ? parseSize(arg) : parseDuration(arg);
        } catch (e) {
          return problem(`${(e as Error).message}`);
        }
        if (value <= 0) return problem(`must be more than zero (found "${arg}"), e.g. "${example}"`);
        if (name === 'disk-size') hints.diskSize = value;
        else hints.timeoutMs = value;
        return;
      }

      case 'chroot-bind-mount': {
        if (args.length !== 2) {
          return problem(`expects SRC TARGET, e.g. "# chroot-bind-mount ../cache /var/cache/apt" (found ${describeArgs(arg)})`);
        }
        const [source, target] = args as [string, string];
        const bad = checkTarget(target);
        if (bad) return problem(bad);
        if (!claimTarget(target, lineNo)) return;
        hints.bindMounts.push({ source, target });
        return;
      }

      case 'cache-mount': {
        if (args.length !== 1) {
          return problem(`expects one TARGET, e.g. "# cache-mount /var/cache/apt" (found ${describeArgs(arg)})`);
        }
        const target = args[0]!;
        const bad = checkTarget(target);
        if (bad) return problem(bad);
        if (!claimTarget(target, lineNo)) return;
        (hints.cacheMounts ??= []).push({ target });
        return;
      }

      case 'args':
        // (readHintLine reads `# args` only as the one contract: what is left is extra words.)
        if (args.length !== LEGACY_ARGS.length) return problem(`the only contract is "# args source target device" (found "${arg}")`);
        hints.legacyArgs = true;
        return;

      case 'network': {
        if (previous !== undefined) return problem(`given twice (first on line ${previous}); keep one`);
        if (arg !== 'none') return problem(`the only setting is "# network none" (found ${describeArgs(arg)}); without it a layer has outbound network`);
        hints.network = 'none';
        return;
      }

      case 'chroot-mount': {
        if (args.length !== 2) {
          return problem(`expects PARTITION TARGET, e.g. "# chroot-mount 1 /boot/efi" (found ${describeArgs(arg)})`);
        }
        const [n, target] = args as [string, string];
        if (!/^[1-9]\d*$/.test(n) || !Number.isSafeInteger(Number(n))) {
          return problem(`PARTITION must be a partition number (1, 2, …), found "${n}"`);
        }
        const bad = checkTarget(target);
        if (bad) return problem(bad);
        if (!claimTarget(target, lineNo)) return;
        hints.partitionMounts.push({ partition: Number(n), target });
        return;
      }
    }

    function claimTarget(target: string, at: number): boolean {
      const key = target.replace(/\/+$/, '') || '/';
      const first = mountTargets.get(key);
      if (first !== undefined) {
        problem(`TARGET ${target} is already mounted by line ${first}; one mount per TARGET`);
        return false;
      }
      mountTargets.set(key, at);
      return true;
    }
  });
  if (hints.legacyArgs && hints.diskSize !== undefined) {
    problems.push(`line ${seenAt.get('disk-size')}: # disk-size: does not apply with # args source target device (line ${seenAt.get('args')}): the script makes and sizes its overlay itself`);
  }

  return { hints, problems };
}

/** Why a mount TARGET inside the image is not acceptable, or null. */
function checkTarget(target: string): string | null {
  if (!target.startsWith('/')) return `TARGET must be an absolute path inside the image, e.g. /var/cache (found "${target}")`;
  if (target.split('/').includes('..')) return `TARGET must not contain "..", it has to stay inside the image (found "${target}")`;
  if (/^\/+$/.test(target)) return `TARGET cannot be / itself: the image's root is already mounted there`;
  return null;
}

function describeArgs(arg: string): string {
  return arg === '' ? 'nothing' : `"${arg}"`;
}
