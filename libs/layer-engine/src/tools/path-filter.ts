/**
 * `--include` / `--exclude` globs of `vmlb diff`, on absolute paths inside an image:
 *
 * - a pattern with a `/` is anchored at the image's root (`/etc/ssh`, `etc/*.conf`);
 *   one without matches any single name (`*.pyc`, `__pycache__`);
 * - `*` and `?` stay within one name, `**` crosses folders, `[abc]` is a class;
 * - a pattern that matches a folder matches everything under it (`--include /etc`).
 *
 * A path is kept when it matches an include (or there is none) and no exclude.
 */
export interface PathFilter {
  /** Whether a change at this path is reported. */
  keep(p: string): boolean;
  /** Whether a folder's content may hold kept paths (false: the walk skips it). */
  descend(dir: string): boolean;
}

function globToRegExp(glob: string): RegExp {
  let re = '';
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!;
    if (c === '*') {
      if (glob[i + 1] === '*') {
        // `**/` also matches no folder at all: /a/**/b matches /a/b.
        if (glob[i + 2] === '/') {
          re += '(?:.*/)?';
          i += 2;
        } else {
          re += '.*';
          i += 1;
        }
      } else re += '[^/]*';
    } else if (c === '?') re += '[^/]';
    else if (c === '[') {
      const end = glob.indexOf(']', i + 1);
      if (end < 0) re += '\\[';
      else {
        const body = glob.slice(i + 1, end).replace(/^!/, '^').replace(/\\/g, '\\\\');
        re += `[${body}]`;
        i = end;
      }
    } else re += c.replace(/[.+^${}()|\\]/g, '\\$&');
  }
  return new RegExp(`^${re}$`);
}

function compile(pattern: string): (p: string) => boolean {
  const trimmed = pattern.length > 1 ? pattern.replace(/\/+$/, '') : pattern;
  if (!trimmed.includes('/')) {
    const re = globToRegExp(trimmed);
    return (p) => p.split('/').some((name) => name !== '' && re.test(name));
  }
  const re = globToRegExp(trimmed.startsWith('/') ? trimmed : `/${trimmed}`);
  // The path or one of its ancestors.
  return (p) => {
    for (let q = p; q.length > 0; q = q.slice(0, q.lastIndexOf('/'))) if (re.test(q)) return true;
    return re.test('/');
  };
}

export function pathFilter(o: { include?: string[]; exclude?: string[] } = {}): PathFilter {
  const inc = (o.include ?? []).map(compile);
  const exc = (o.exclude ?? []).map(compile);
  return {
    keep: (p) => (inc.length === 0 || inc.some((m) => m(p))) && !exc.some((m) => m(p)),
    // An excluded folder hides all it holds; includes cannot prune (an include may match a
    // name deeper down).
    descend: (dir) => !exc.some((m) => m(dir)),
  };
}
