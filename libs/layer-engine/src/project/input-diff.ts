import type { InputChange } from '../build/events.js';
import type { LayerFile, LayerInputs } from '../types.js';

export interface DiffOptions {
  /**
   * The layer is not cacheable (computeKeys' `cacheable: false`). With no nonce of its own this
   * means it follows a `# nocache` layer; its parent key is then new on every build, so the
   * parent change is not reported separately.
   */
  uncacheable?: boolean;
}

/**
 * Why a layer has to be built again: what changed in its inputs against the last build of the
 * same layer name (`previous`, from that build's manifest), in a fixed order — new, nocache,
 * recipe, kind, parent, then files by path. An empty list means the inputs are the same.
 */
export function diffInputs(previous: LayerInputs | undefined, current: LayerInputs, opts: DiffOptions = {}): InputChange[] {
  const changes: InputChange[] = [];
  const followsNocache = current.nonce === undefined && opts.uncacheable === true;
  if (!previous) changes.push({ what: 'new', detail: 'no earlier build of this layer' });
  if (current.nonce !== undefined) changes.push({ what: 'nocache', detail: '# nocache: rebuilt on every build' });
  else if (followsNocache) changes.push({ what: 'nocache', detail: 'follows a # nocache layer' });
  if (!previous) return changes;

  if (previous.recipe !== current.recipe) {
    changes.push({ what: 'recipe', detail: `engine recipe changed: v${previous.recipe} → v${current.recipe}` });
  }
  if (previous.kind !== current.kind) {
    changes.push({ what: 'kind', detail: `kind changed: ${previous.kind} → ${current.kind}` });
  }
  if (previous.parent !== current.parent && !followsNocache) {
    changes.push({ what: 'parent', detail: `parent changed: ${short(previous.parent)} → ${short(current.parent)}` });
  }
  changes.push(...diffFiles(previous.files, current.files));
  return changes;
}

function diffFiles(before: LayerFile[], after: LayerFile[]): InputChange[] {
  const old = new Map(before.map((f) => [f.path, f]));
  const now = new Map(after.map((f) => [f.path, f]));
  const paths = [...new Set([...old.keys(), ...now.keys()])].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const changes: InputChange[] = [];
  for (const path of paths) {
    const a = old.get(path);
    const b = now.get(path);
    if (!a && b) {
      changes.push({ what: 'file-added', path, detail: `added${b.type === 'symlink' ? ' (symlink)' : b.executable ? ' (executable)' : ''}` });
    } else if (a && !b) {
      changes.push({ what: 'file-removed', path, detail: 'removed' });
    } else if (a && b) {
      if (a.type !== b.type) {
        changes.push({ what: 'file-changed', path, detail: `changed from ${a.type} to ${b.type}` });
        continue;
      }
      if (a.digest !== b.digest) {
        changes.push({ what: 'file-changed', path, detail: a.type === 'symlink' ? 'symlink target changed' : 'content changed' });
      }
      if (a.executable !== b.executable) {
        changes.push({ what: 'mode-changed', path, detail: b.executable ? 'became executable' : 'no longer executable' });
      }
    }
  }
  return changes;
}

/** One readable line for a change, e.g. `files/motd: content changed`. */
export function describeChange(c: InputChange): string {
  return 'path' in c ? `${c.path}: ${c.detail}` : c.detail;
}

function short(key: string | null): string {
  return key === null ? 'none' : key.slice(0, 8);
}
