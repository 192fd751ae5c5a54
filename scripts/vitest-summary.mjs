// The closing line of the test commands (scripts/test.sh, scripts/test-radosgw.sh), from
// vitest's JSON report:   node scripts/vitest-summary.mjs REPORT.json
//   vitest: N passed, N failed, N skipped
import { readFileSync } from 'node:fs';

const r = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const skipped = r.numPendingTests + (r.numTodoTests || 0);
console.log(`vitest: ${r.numPassedTests} passed, ${r.numFailedTests} failed, ${skipped} skipped`);
