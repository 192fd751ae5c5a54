/** One run of `vmlb migrate`: its options, and the report its stages fill in. */
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { MigrateReport } from './report.js';

export interface MigrateOptions {
  /** The original project. */
  dir: string;
  /** Copy the project here first and migrate the copy (a new or empty folder). */
  out?: string;
  /** How long a download may go without data. */
  stallMs?: number;
  /** Progress lines (downloads). */
  onProgress?: (line: string) => void;
}

/** A layer folder of the project (`NN_name`) and its number. */
export interface LayerDir {
  name: string;
  number: number;
}

export class Migration {
  readonly o: MigrateOptions;
  readonly report: MigrateReport;

  constructor(o: MigrateOptions, project: string) {
    this.o = o;
    this.report = { project, target: project, changed: false, done: [], todo: [], left: [], blocksBuild: false };
  }

  /** Where the migrated project is: the project, or its copy once --out has made it. */
  get target(): string {
    return this.report.target;
  }

  done(where: string, what: string): void {
    this.report.done.push({ where, what });
  }

  todo(where: string, what: string, blocks = true): void {
    this.report.todo.push({ where, what });
    if (blocks) this.report.blocksBuild = true;
  }

  left(where: string, what: string): void {
    this.report.left.push({ where, what });
  }

  /** Writes a file of the target (`rel` to it); the project has changed. */
  async write(rel: string, text: string): Promise<void> {
    await writeFile(path.join(this.target, rel), text);
    this.report.changed = true;
  }
}
