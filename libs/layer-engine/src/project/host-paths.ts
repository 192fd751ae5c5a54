import path from 'node:path';
import type { ProjectProblem } from '../errors.js';
import type { ImageProject } from '../types.js';

/**
 * What a project may not do when it comes from someone else (a fleet submission): name a host
 * path. A `# chroot-bind-mount` whose source is absolute or leads out of the project is one
 * problem each, naming the layer, the line's hint and what to use instead. Locally, host binds
 * are the user's own business and allowed.
 */
export function hostPathProblems(project: ImageProject): ProjectProblem[] {
  const problems: ProjectProblem[] = [];
  for (const layer of project.layers) {
    for (const b of layer.hints.bindMounts) {
      const why = hostBindReason(project.dir, layer.dir, b.source);
      if (why) {
        problems.push({
          where: layer.name,
          problem: `# chroot-bind-mount ${b.source} ${b.target}: a submitted project names no host path (${why}); bind a folder of the project, or keep a folder across builds with # cache-mount ${b.target}`,
        });
      }
    }
  }
  return problems;
}

/** Why a `# chroot-bind-mount` source names a host path (absolute, or out of the project), or null. */
export function hostBindReason(projectDir: string, layerDir: string, source: string): string | null {
  if (path.isAbsolute(source)) return 'the source is absolute';
  const resolved = path.resolve(layerDir, source);
  return resolved === projectDir || resolved.startsWith(projectDir + path.sep) ? null : 'the source leads out of the project';
}
