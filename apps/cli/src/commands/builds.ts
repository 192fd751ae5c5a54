import { type Command, Option } from 'commander';
import type { BuildSummary } from '@vmlb/fleet';
import { VmlbError } from '@vmlb/layer-engine';
import { check, request } from '../fleet-client.js';
import { endpointFrom, serverOption, tokenOption, type ConnOpts } from '../fleet-endpoint.js';

/** `name@branch commit`, `-dirty` after the commit when the work tree had changes; `-` for none. */
export function projectLabel(b: Pick<BuildSummary, 'projectName' | 'gitBranch' | 'gitCommit' | 'gitDirty'>): string {
  const name = b.projectName ?? '';
  const at = b.gitBranch ? `@${b.gitBranch}` : '';
  const commit = b.gitCommit ? ` ${b.gitCommit.slice(0, 8)}${b.gitDirty ? '-dirty' : ''}` : b.gitDirty ? ' dirty' : '';
  return `${name}${at}${commit}`.trim() || '-';
}

function ago(iso: string): string {
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 90) return `${Math.round(s)}s ago`;
  if (s < 5400) return `${Math.round(s / 60)}m ago`;
  if (s < 48 * 3600) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86400)}d ago`;
}

function duration(b: { createdAt: string; finishedAt?: string }): string {
  const end = b.finishedAt ? Date.parse(b.finishedAt) : Date.now();
  const s = Math.max(0, Math.round((end - Date.parse(b.createdAt)) / 1000));
  return s < 60 ? `${s}s` : `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
}


/** `vmlb builds`: the team's builds in the fleet, newest first, filtered as the history's search filters them. */
export function registerBuilds(program: Command): void {
  program
    .command('builds')
    .description('list your team\'s builds in the fleet, newest first')
    .addOption(serverOption())
    .addOption(tokenOption())
    .addOption(new Option('--state <state>', 'only builds in this state').choices(['active', 'queued', 'building', 'done', 'failed', 'cancelled']))
    .option('--team <team>', 'another team\'s builds (admin tokens only)')
    .option('--pool <pool>', 'only builds of this pool (the pool a build ran in)')
    .option('--search <text>', 'only builds whose project name, git branch, commit or submitter holds this text')
    .option('--project <name>', 'only builds of this project name')
    .option('--branch <branch>', 'only builds of this git branch')
    .option('--commit <sha>', 'only builds of this git commit (or a prefix of it)')
    .option('--submitter <who>', 'only builds this submitter sent (the token\'s name, when the teams file names it)')
    .option('--dirty', 'only builds of a work tree with uncommitted changes')
    .option('--clean', 'only builds of a clean git work tree')
    .option('--since <time>', 'only builds submitted since this ISO time (e.g. 2026-12-01)')
    .option('--limit <n>', 'at most this many', '20')
    .option('--json', 'print the list as JSON')
    .action(async (o: ConnOpts & { state?: string; team?: string; pool?: string; limit: string; json?: boolean; search?: string; project?: string; branch?: string; commit?: string; submitter?: string; since?: string; dirty?: boolean; clean?: boolean }) => {
      if (o.dirty && o.clean) throw new VmlbError('FLEET_USAGE', 'give --dirty or --clean, not both');
      const ep = await endpointFrom(o);
      const q = new URLSearchParams({ limit: o.limit });
      if (o.state) q.set('state', o.state);
      if (o.team) q.set('team', o.team);
      if (o.pool) q.set('pool', o.pool);
      if (o.search) q.set('q', o.search);
      for (const k of ['project', 'branch', 'commit', 'submitter', 'since'] as const) if (o[k]) q.set(k, o[k]!);
      if (o.dirty || o.clean) q.set('dirty', o.dirty ? '1' : '0');
      const res = await check(await request(ep, 'GET', `/v1/builds?${q}`), 'listing builds');
      const listed = (await res.json()) as { builds: Array<BuildSummary> };
      // A summary from before pools names none: it is pool default's.
      const builds = listed.builds.map((b) => ({ ...b, pool: b.pool ?? 'default' }));
      if (o.json) {
        process.stdout.write(JSON.stringify(builds, null, 2) + '\n');
        return;
      }
      if (builds.length === 0) {
        process.stdout.write('no builds\n');
        return;
      }
      const rows = [
        ['BUILD', 'TEAM', 'POOL', 'PROJECT', 'SUBMITTER', 'STATE', 'LAYERS', 'CREATED', 'TOOK'],
        ...builds.map((b) => [b.id, b.team, b.pool, projectLabel(b), b.submitter ?? '-', b.state, `${b.layers} (${b.hits} cached, ${b.built} built)`, ago(b.createdAt), duration(b)]),
      ];
      const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
      for (const r of rows) process.stdout.write(r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ') + '\n');
      // The hit rate of the builds listed, counted as the metrics and the dashboard count it (docs/metrics.md).
      const hits = builds.reduce((n, b) => n + b.hits, 0);
      const lookups = builds.reduce((n, b) => n + (b.lookups ?? b.layers), 0);
      process.stdout.write(`cache: ${hits} hits of ${lookups} lookups${lookups ? ` (${((100 * hits) / lookups).toFixed(1)} %)` : ''} in these ${builds.length} builds\n`);
    });
}
