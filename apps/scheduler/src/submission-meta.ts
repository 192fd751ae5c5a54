import type { IncomingHttpHeaders } from 'node:http';
import type { BuildRecord } from '@vmlb/fleet';
import { HttpError } from './http-error.js';

/**
 * What `vmlb submit` says of a project, in request headers (each optional, percent-encoded
 * UTF-8, at most 200 characters once decoded, no control characters):
 *
 *   x-vmlb-project-name   the project's name (its folder's, or --name)
 *   x-vmlb-git-commit     the commit its folder is at (hex, 4 to 64 digits)
 *   x-vmlb-git-branch     the branch its folder is on
 *   x-vmlb-git-dirty      1 when its folder had uncommitted changes, 0 when clean
 *   x-vmlb-submitter      who submitted it (VMLB_SUBMITTER, else user@host); the name of the
 *                         team's token, when the teams file names it, wins over this
 *
 * They are what the history's filters and search look at; the team is always the token's.
 * A bad one is a 400 naming the header.
 */
export type SubmissionMeta = Pick<BuildRecord, 'projectName' | 'gitCommit' | 'gitBranch' | 'gitDirty' | 'submitter'>;

const FIELDS = [
  ['x-vmlb-project-name', 'projectName'],
  ['x-vmlb-git-commit', 'gitCommit'],
  ['x-vmlb-git-branch', 'gitBranch'],
  ['x-vmlb-submitter', 'submitter'],
] as const;

export function submissionMeta(headers: IncomingHttpHeaders): SubmissionMeta {
  const meta: SubmissionMeta = {};
  const dirty = headers['x-vmlb-git-dirty'];
  if (dirty !== undefined) {
    const v = Array.isArray(dirty) ? null : dirty.trim().toLowerCase();
    if (v === '1' || v === 'true') meta.gitDirty = true;
    else if (v === '0' || v === 'false') meta.gitDirty = false;
    else throw new HttpError(400, 'BAD_HEADER', `x-vmlb-git-dirty: ${v === null ? 'given more than once' : `"${dirty}" is not 1 or 0`}`);
  }
  for (const [header, field] of FIELDS) {
    const raw = headers[header];
    if (raw === undefined) continue;
    const bad = (why: string) => new HttpError(400, 'BAD_HEADER', `${header}: ${why}`);
    if (Array.isArray(raw)) throw bad('given more than once');
    let v: string;
    try {
      v = decodeURIComponent(raw).trim();
    } catch {
      throw bad('not percent-encoded UTF-8');
    }
    if (v === '') continue;
    if (v.length > 200) throw bad(`${v.length} characters; at most 200`);
    // eslint-disable-next-line no-control-regex
    if (/[\u0000-\u001f\u007f]/.test(v)) throw bad('holds a control character');
    if (field === 'gitCommit') {
      if (!/^[0-9a-f]{4,64}$/i.test(v)) throw bad(`"${v}" is not a commit id (4 to 64 hex digits)`);
      v = v.toLowerCase();
    }
    meta[field] = v;
  }
  return meta;
}
