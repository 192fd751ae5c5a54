import { shortHash } from './format';
import { href } from './hooks';
import type { BuildSummary } from './types';
import { Mono } from './ui-kit';

type Labelled = Pick<BuildSummary, 'project' | 'projectName' | 'gitBranch' | 'gitCommit' | 'gitDirty' | 'submitter'>;

/**
 * What a build is of, in words: the project's name (a link to its project page), its branch,
 * its commit (short), a dirty mark when the work tree had uncommitted changes, and who sent it.
 * A build from before names (or sent without one) shows its project's hash, as before.
 */
export function ProjectLabel({ b, submitter = true }: { b: Labelled; submitter?: boolean }) {
  if (!b.projectName) {
    return (
      <span class="project-label" data-testid="project-label" title={`project sha256 ${b.project}`}>
        project <Mono>{shortHash(b.project)}</Mono>
        {submitter && b.submitter && <span class="project-by"> · by {b.submitter}</span>}
      </span>
    );
  }
  return (
    <span class="project-label" data-testid="project-label" title={`project sha256 ${b.project}`}>
      <a class="project-name" href={href(['projects', b.projectName])} data-testid="project-link">
        {b.projectName}
      </a>
      {b.gitBranch && <span class="project-branch" data-testid="project-branch">{b.gitBranch}</span>}
      {b.gitCommit && (
        <Mono title={b.gitCommit}>
          <span data-testid="project-commit">{b.gitCommit.slice(0, 8)}</span>
        </Mono>
      )}
      {b.gitDirty && (
        <span class="dirty-mark" data-testid="project-dirty" title="the work tree had uncommitted changes when it was submitted">
          dirty
        </span>
      )}
      {submitter && b.submitter && (
        <span class="project-by" data-testid="project-submitter">
          by {b.submitter}
        </span>
      )}
    </span>
  );
}
