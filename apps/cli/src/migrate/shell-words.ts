/** Shell lines, as far as the original's modify-disk scripts need them. */

/** The line without a trailing `# comment` (a `#` that starts a word, outside quotes). */
export function stripComment(line: string): string {
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
export function splitTop(code: string, sep: ';' | '&&' | '||'): string[] {
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
export function words(stmt: string): string[] {
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
export function unquote(word: string): string {
  return word.replace(/\\(.)|["']/g, (_m, esc: string | undefined) => esc ?? '');
}
