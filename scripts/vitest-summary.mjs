// The closing line of the test commands (scripts/test.sh, scripts/test-radosgw.sh), from
// vitest's JSON reports (npm test's two lanes write one each), summed:
//   node scripts/vitest-summary.mjs REPORT.json [REPORT.json …]
//   vitest: N passed, N failed, N skipped
import { existsSync, readFileSync } from 'node:fs';

const reports = process.argv.slice(2).filter((f) => existsSync(f)).map((f) => JSON.parse(readFileSync(f, 'utf8')));
const sum = (field) => reports.reduce((n, r) => n + (r[field] || 0), 0);
const skipped = sum('numPendingTests') + sum('numTodoTests');
console.log(`vitest: ${sum('numPassedTests')} passed, ${sum('numFailedTests')} failed, ${skipped} skipped`);
