/** What `vmlb migrate` says it did (done), what is left by hand (todo) and what it left alone (left). */
import path from 'node:path';

export interface MigrateItem {
  /** The file or folder it is about, relative to the project ('.' for the project itself). */
  where: string;
  what: string;
}

export interface MigrateReport {
  /** The project read. */
  project: string;
  /** Where the migrated project is: --out, or the project itself. */
  target: string;
  /** Whether anything was written (false: a second run, nothing left that it can do). */
  changed: boolean;
  done: MigrateItem[];
  /** What is left to do by hand. */
  todo: MigrateItem[];
  /** The original's files left alone, each with what vmlb offers instead. */
  left: MigrateItem[];
  /** Whether vmlb build refuses or fails the project until the todo items are done. */
  blocksBuild: boolean;
}

/** The report as lines of text: one per item, then a summary line. */
export function formatReport(r: MigrateReport): string[] {
  const lines: string[] = [];
  const where = (w: string) => (w === '.' ? 'project' : w);
  for (const d of r.done) lines.push(`done  ${where(d.where)}: ${d.what}`);
  for (const t of r.todo) lines.push(`todo  ${where(t.where)}: ${t.what}`);
  for (const l of r.left) lines.push(`left  ${where(l.where)}: ${l.what}`);
  lines.push(summaryLine(r));
  return lines;
}

export function summaryLine(r: MigrateReport): string {
  const rel = path.relative(process.cwd(), r.target) || '.';
  const n = r.todo.length;
  if (n === 0) return `${r.changed ? '' : "nothing changed: the project is in vmlb's form already; "}nothing left to do by hand: vmlb build ${rel} builds it`;
  const unchanged = r.changed ? '' : 'nothing changed: what vmlb migrate can do is done; ';
  return `${unchanged}${n} thing${n === 1 ? '' : 's'} left to do by hand (the todo lines)${r.blocksBuild ? '; the project will not build until they are done' : ''}`;
}
