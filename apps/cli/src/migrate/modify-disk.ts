/**
 * A modify-disk read as a whole: the original's grow-the-disk pattern (`modify-disk SOURCE
 * TARGET DEVICE`), this tool's form, or something else; the original's pattern rewritten as
 * `# disk-size SIZE` + growpart/e2fsck/resize2fs on `$VMLB_DEVICE` and `vmlb-partition N`.
 */
import { readHintLine } from '@vmlb/layer-engine';
import { fitStep, type PatternState } from './modify-disk-steps.js';
import { splitTop, stripComment, words } from './shell-words.js';

/** What a `||` may lead to after a step: ignoring its failure, or some of its exit codes. */
const TOLERATED_FAILURE = /^(?:true|:|\[\s+"?\$\?"?\s+-(?:eq|le|lt)\s+\d\s+\])$/;

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
    const hint = readHintLine(line);
    if (hint && hint.name !== 'disk-size') hints.push(line.trim());
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
