/**
 * The base image an original SConstruct downloads, read from its text (scons is not run): its
 * URL, the md5 it checks, and its cache folder.
 */

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
