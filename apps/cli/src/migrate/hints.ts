/** Hints followed by prose, as the original's users wrote them, in the form vmlb build reads. */
import { parseHints, readHintLine, type LayerKind } from '@vmlb/layer-engine';

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
    // The engine's reading of the line (libs/layer-engine/src/project/hints.ts): its hint, arguments and prose.
    const m = i === 0 && bare.startsWith('#!') ? null : readHintLine(bare);
    if (!m || m.prose === '' || parseHints(bare, kind).problems.length > 0) return void out.push(line);
    const hint = ['#', m.name, ...m.args].join(' ');
    let prose = m.prose.replace(/^#+\s*/, '');
    // The prose must not read as a hint itself.
    if (readHintLine(`# ${prose}`)) prose = `(${prose})`;
    const cr = line.endsWith('\r') ? '\r' : '';
    out.push(hint + cr, `# ${prose}${cr}`);
    changes.push({ line: i + 1, from: bare.trim(), hint, prose });
  });
  return { text: out.join('\n'), changes };
}
