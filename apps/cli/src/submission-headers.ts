import os from 'node:os';
import path from 'node:path';

/**
 * What the fleet's history records of a submission (apps/scheduler/src/submission-meta.ts): the
 * project's name (--name, else its folder's), the git commit and branch of its folder when it is
 * in a git work tree (none when git is missing or it is not) and whether the folder had changes
 * git has not committed (`git status --porcelain -- .`: modified, staged or untracked files under
 * it, ignored ones aside), and who submitted it (VMLB_SUBMITTER, else user@host; the scheduler
 * records the token's name instead when the teams file names the token). Percent-encoded, so
 * any UTF-8 goes through a header.
 */
export async function submissionHeaders(projectDir: string, name: string | undefined): Promise<Record<string, string>> {
  const git = async (...args: string[]): Promise<string | undefined> => {
    const { execFile } = await import('node:child_process');
    return new Promise((resolve) => {
      execFile('git', ['-C', projectDir, ...args], { timeout: 5000 }, (err, stdout) => resolve(err ? undefined : stdout.trim() || undefined));
    });
  };
  const [commit, branch] = [await git('rev-parse', '--verify', '-q', 'HEAD'), await git('symbolic-ref', '--short', '-q', 'HEAD')];
  // Clean is an empty answer, which git() reads as none: ask whether it answered at all.
  const status = commit ? await git('status', '--porcelain', '--untracked-files=normal', '--', '.').then((out) => out ?? '') : undefined;
  let who = process.env.VMLB_SUBMITTER;
  if (!who) {
    try {
      who = `${os.userInfo().username}@${os.hostname()}`;
    } catch {
      who = os.hostname();
    }
  }
  const out: Record<string, string> = {};
  const put = (h: string, v: string | undefined) => {
    if (v) out[h] = encodeURIComponent(v.slice(0, 200));
  };
  put('x-vmlb-project-name', name ?? path.basename(projectDir));
  put('x-vmlb-git-commit', commit && /^[0-9a-f]{4,64}$/.test(commit) ? commit : undefined);
  put('x-vmlb-git-branch', branch);
  if (status !== undefined) out['x-vmlb-git-dirty'] = status === '' ? '0' : '1';
  put('x-vmlb-submitter', who);
  return out;
}
