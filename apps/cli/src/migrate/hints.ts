/** Hints followed by prose, as the original's users wrote them, in the form vmlb build reads. */
import { parseHints, type LayerKind } from '@vmlb/layer-engine';

/** A hint line as the engine reads it (libs/layer-engine/src/hints.ts). */
export const HINT_LINE = /^\s*#\s*(nocache|noshare|chroot-bind-mount|chroot-mount|cache-mount|disk-size|timeout|network)(?![\w-])\s*(.*?)\s*$/;
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
