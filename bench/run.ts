/**
 * `npm run bench` (scripts/bench.sh builds the TypeScript first): runs the benchmarks side by
 * side and prints ONE markdown table — benchmark, what is measured, result, target, ratio — on
 * stdout, and writes it to bench/results.md with a line saying where and when it was measured.
 * Progress goes to stderr. Not part of the test suite: it measures, it never asserts a time.
 *
 *   bash scripts/bench.sh [--quick] [--only NAME[,NAME…]]
 *
 * Environment: VMLB_BENCH_TMP (where the temp stores go; default /var/tmp), VMLB_BACKEND
 * (passed to vmlb like any other variable).
 */
import { existsSync } from 'node:fs';
import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { BENCHMARKS } from './benchmarks.js';
import { BENCH_DIR, progress, REPO, VMLB, type Row } from './harness.js';
import { installSignalHandlers, interrupted, run } from './run-command.js';
import { warnings } from './sandbox.js';

const USAGE = `usage: bash scripts/bench.sh [--quick] [--only NAME[,NAME...]]

  --quick        fewer repetitions (a quick look, not numbers for the README)
  --only NAMES   run only these benchmarks (comma-separated):
${BENCHMARKS.map((b) => `                   ${b.name.padEnd(17)} ${b.title}`).join('\n')}

Prints one markdown table on stdout (progress on stderr) and writes it to bench/results.md.`;

function usageError(msg: string): never {
  process.stderr.write(`bench: ${msg}\n\n${USAGE}\n`);
  process.exit(2);
}

function parseArgs(argv: string[]): { quick: boolean; only: string[] | null } {
  let quick = false;
  let only: string[] | null = null;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--quick') quick = true;
    else if (a === '--only' || a.startsWith('--only=')) {
      const v = a === '--only' ? argv[++i] : a.slice('--only='.length);
      if (!v) usageError('--only needs a list of benchmark names');
      only = [...(only ?? []), ...v.split(',').map((s) => s.trim()).filter(Boolean)];
    } else if (a === '--help' || a === '-h') {
      process.stdout.write(USAGE + '\n');
      process.exit(0);
    } else usageError(`unknown argument ${a}`);
  }
  const unknown = (only ?? []).filter((n) => !BENCHMARKS.some((b) => b.name === n));
  if (unknown.length) usageError(`no benchmark named ${unknown.join(', ')}`);
  return { quick, only };
}

function cell(s: string): string {
  return s.replace(/\|/g, '\\|').replace(/\s*\n\s*/g, ' ');
}

function table(rows: Row[]): string {
  const lines = ['| benchmark | what is measured | result | target | ratio |', '| --- | --- | --- | --- | --- |'];
  for (const r of rows) lines.push(`| ${[r.benchmark, r.what, r.result, r.target, r.ratio].map(cell).join(' | ')} |`);
  return lines.join('\n');
}

async function context(opts: { quick: boolean; only: string[] | null }, seconds: number, loadBefore: number): Promise<string> {
  // A command that is not there (git in npm run test:nbd's VM, which has no .git either) says nothing.
  const output = async (argv: string[]) => (await run(argv, { check: false }).catch(() => ({ stdout: '', code: 1 }))).stdout;
  const line = async (argv: string[]) => (await output(argv)).split('\n')[0]?.trim() ?? '';
  const commit = await line(['git', '-C', REPO, 'rev-parse', '--short', 'HEAD']);
  const dirty = (await output(['git', '-C', REPO, 'status', '--porcelain', '--untracked-files=no'])).trim() !== '';
  const qemu = (await line(['qemu-img', '--version'])).replace(/^qemu-img version /, '');
  const backend = process.env.VMLB_BACKEND || (existsSync('/dev/nbd0') ? 'nbd' : 'fuse');
  const cpus = os.cpus();
  return [
    `Measured ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC`,
    `commit ${commit || '?'}${dirty ? ' with uncommitted changes' : ''}`,
    `${cpus.length} × ${cpus[0]?.model.trim() ?? 'CPU'}, ${Math.round(os.totalmem() / 2 ** 30)} GiB`,
    `node ${process.version}, qemu ${qemu}, backend ${backend}`,
    `load average ${loadBefore.toFixed(2)} before, ${os.loadavg()[0]!.toFixed(2)} after`,
    `${opts.quick ? '--quick' : 'full'} run${opts.only ? ` of ${opts.only.join(', ')}` : ''} in ${Math.round(seconds)} s`,
    '`npm run bench`',
  ].join(' · ');
}

/**
 * The module bin/vmlb.js loads must be newer than the engine's compiled files, or the
 * benchmarks time an older CLI (it is a bundle that includes the engine).
 */
async function staleCli(): Promise<string | null> {
  const bin = await readFile(VMLB, 'utf8');
  const target = /import\s+['"]([^'"]+)['"]/.exec(bin)?.[1];
  if (!target) return null;
  const entry = path.resolve(path.dirname(VMLB), target);
  if (!existsSync(entry)) return `${entry} (what ${VMLB} loads) does not exist: run the benchmarks through scripts/bench.sh`;
  const engineDist = path.join(REPO, 'libs/layer-engine/dist');
  const files = (await readdir(engineDist)).filter((f) => f.endsWith('.js')).map((f) => path.join(engineDist, f));
  const newest = Math.max(...(await Promise.all(files.map(async (f) => (await stat(f)).mtimeMs))));
  return (await stat(entry)).mtimeMs + 1000 < newest
    ? `${path.relative(REPO, entry)} is older than libs/layer-engine/dist: the CLI may not include the engine as built; run the benchmarks through scripts/bench.sh`
    : null;
}

async function main(): Promise<number> {
  const opts = parseArgs(process.argv.slice(2));
  if (process.getuid?.() !== 0) usageError('vmlb attaches disks (loop devices, FUSE, mounts): run the benchmarks as root');
  const stale = await staleCli();
  if (stale) progress(`warning: ${stale}`);
  installSignalHandlers();

  // Other builds or test runs on the machine move every number here: say so.
  const loadBefore = os.loadavg()[0]!;
  if (loadBefore > 0.5) progress(`the machine is busy (load average ${loadBefore.toFixed(2)}): the numbers will be noisy`);

  const selected = BENCHMARKS.filter((b) => !opts.only || opts.only.includes(b.name));
  const rows: Row[] = [];
  let failed = 0;
  const started = performance.now();
  for (const b of selected) {
    if (interrupted()) break;
    progress(`── ${b.name}: ${b.title}`);
    const t = performance.now();
    try {
      rows.push(...(await b.run({ quick: opts.quick })));
      progress(`── ${b.name}: done in ${((performance.now() - t) / 1000).toFixed(1)} s`);
    } catch (e) {
      if (!interrupted()) {
        failed++;
        const msg = (e as Error).message;
        progress(`── ${b.name}: FAILED: ${msg}`);
        const oneLine = msg.replace(/\s*\n\s*/g, ' ');
        rows.push({ benchmark: `✗ ${b.name}`, what: b.title, result: `failed: ${oneLine.length > 400 ? oneLine.slice(0, 400) + '…' : oneLine}`, target: '', ratio: '' });
      }
    }
    rows.push(...warnings.splice(0));
  }

  const out = table(rows);
  if (interrupted()) {
    progress('interrupted: bench/results.md left as it was');
    if (rows.length) process.stdout.write(out + '\n');
    return 130;
  }
  process.stdout.write(out + '\n');
  const ctx = await context(opts, (performance.now() - started) / 1000, loadBefore);
  await writeFile(path.join(BENCH_DIR, 'results.md'), `${out}\n\n${ctx}\n`);
  progress(`wrote ${path.relative(process.cwd(), path.join(BENCH_DIR, 'results.md'))}`);
  return failed ? 1 : 0;
}

process.exitCode = await main();
