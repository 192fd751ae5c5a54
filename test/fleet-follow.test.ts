/**
 * Following a fleet build again, and who and what it was of, against a real fleet: a private
 * redis-server and S3 test server, the scheduler as its own process (configured from the
 * environment, a teams file whose tokens have names), a real worker process building real
 * layers. Everything through the `vmlb` CLI as a user runs it:
 *
 *   vmlb submit --detach of a git work tree, then `vmlb watch` to its end (exit 0), from
 *   another process → `vmlb logs` of every layer and of one (by name, short name, position),
 *   `--json` → `vmlb logs --follow` of a running build → a failing build watched (exit 1) and
 *   its failed layer's log → no such build (2), an unreachable scheduler (3) → the dirty flag
 *   and the token's name in the records, `vmlb builds` and its --dirty/--clean/--submitter.
 */
import { execa } from 'execa';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sha256Hex } from '../apps/scheduler/src/index.js';
import { apiFor, waitFor } from './helpers/fleet-api.js';
import { startFleetServices, type FleetServices } from './helpers/fleet-services.js';
import { withTestDatabase } from './helpers/postgres.js';
import { freePort } from './helpers/redis-server.js';
import { startSchedulerProcess, type SchedulerProcess } from './helpers/scheduler-process.js';
import { BUSYBOX_BASE, VMLB, writeProject, type Sandbox } from './helpers/vmlb.js';
import { startWorkerProcess, workerLogs, type WorkerProcess } from './helpers/worker-process.js';

/** Team web's two named tokens, team data's unnamed one. */
const TOK = { alice: 'tok-follow-alice-0123456789', ci: 'tok-follow-ci-0123456789', data: 'tok-follow-data-0123456789' } as const;
const TEAMS = {
  teams: [
    { team: 'web', tokens: [{ name: 'alice', tokenSha256: sha256Hex(TOK.alice) }, { name: 'ci', tokenSha256: sha256Hex(TOK.ci) }] },
    { team: 'data', tokenSha256: sha256Hex(TOK.data) },
  ],
};

let services: FleetServices;
let sb: Sandbox;
let sched: SchedulerProcess;
let worker: WorkerProcess;

/** `vmlb` as the user runs it, its output exactly as written (execa would strip the last newline). */
function spawnVmlb(_sb: Sandbox, args: string[], env: Record<string, string>) {
  return execa(process.execPath, [VMLB, ...args], { env: { ...sb.env, ...env, CI: '1' }, reject: false, stdin: 'ignore', stripFinalNewline: false });
}
async function vmlb(_sb: Sandbox, args: string[], env: Record<string, string>): Promise<{ exitCode: number | undefined; stdout: string; stderr: string }> {
  const r = await spawnVmlb(sb, args, env);
  return { exitCode: r.exitCode, stdout: String(r.stdout), stderr: String(r.stderr) };
}

/** The CLI's environment for a token; VMLB_SUBMITTER is what the CLI says of the user. */
const as = (token: string) => ({ VMLB_SERVER: sched.url, VMLB_TOKEN: token, VMLB_SUBMITTER: 'someone@laptop' });
const why = (r: { stdout: string; stderr: string }) => `${r.stdout}\n${r.stderr}\n${workerLogs([worker], 15)}\n${sched.log.slice(-10).join('\n')}`;

async function git(dir: string, ...args: string[]): Promise<string> {
  const r = await execa('git', ['-C', dir, '-c', 'user.name=Test', '-c', 'user.email=test@example.com', ...args]);
  return String(r.stdout).trim();
}

/** A git work tree of one project, committed: busybox base, a layer that prints, one more. */
async function gitProject(name: string, second: string, third = 'echo third layer'): Promise<{ dir: string; commit: string }> {
  const dir = await writeProject(path.join(sb.dir, name), {
    '01_base': BUSYBOX_BASE,
    '02_hello': { kind: 'build-layer', script: second },
    '03_more': { kind: 'build-layer', script: third },
  });
  await git(dir, 'init', '-q', '-b', 'main');
  await git(dir, 'add', '.');
  await git(dir, 'commit', '-q', '-m', 'first');
  return { dir, commit: await git(dir, 'rev-parse', 'HEAD') };
}

async function submitDetached(dir: string, token: string, extra: string[] = []): Promise<string> {
  const r = await vmlb(sb, ['submit', dir, '--detach', ...extra], as(token));
  expect(r.exitCode, why(r)).toBe(0);
  expect(r.stdout).toMatch(/^b[0-9a-z]+\n$/);
  return r.stdout.trim();
}

const api = apiFor(() => sched.url, TOK.alice);
const record = async (id: string) => (await api.json('GET', `/v1/builds/${id}`)).body;

beforeAll(async () => {
  services = await startFleetServices('fleet-follow');
  sb = services.sb;
  const teamsFile = path.join(sb.dir, 'teams.json');
  await writeFile(teamsFile, JSON.stringify(TEAMS));
  sched = await startSchedulerProcess({ name: 'follow', env: await withTestDatabase(services.env), teamsFile });
  worker = startWorkerProcess({ name: 'follow', dir: sb.dir, redisUrl: services.redis.url, sharedUrl: services.sharedUrl, s3env: services.s3.env, shortLocks: false });
  await waitFor('the worker to register', async () => {
    const f = await api.json<{ workers: Array<{ id: string }> }>('GET', '/v1/fleet');
    return f.body?.workers?.some((w) => w.id === worker.id);
  }, 60_000, 200);
});

afterAll(async () => {
  await worker?.stop();
  await sched?.stop();
  await services?.close();
});

describe('vmlb watch and vmlb logs against a running fleet', () => {
  let okId = '';
  let commit = '';

  it('vmlb watch follows a build sent with --detach to its end with the display of vmlb submit, and exits 0', async () => {
    const p = await gitProject('hello', 'echo "hello from 02"; sleep 2; echo "02 done"');
    commit = p.commit;
    okId = await submitDetached(p.dir, TOK.alice);
    const w = await vmlb(sb, ['watch', okId, '--plain'], as(TOK.alice));
    expect(w.exitCode, why(w)).toBe(0);
    const lines = w.stdout.split('\n');
    expect([`following build ${okId} on ${sched.url} (queued); on the dashboard: ${sched.url}/#/builds/${okId}`, `following build ${okId} on ${sched.url} (building); on the dashboard: ${sched.url}/#/builds/${okId}`]).toContain(lines[0]);
    expect(w.stdout).toMatch(/^3 layers: 0 cached, 3 to build$/m);
    expect(w.stdout).toMatch(/^#1 \[1\/3\] 01_base create-disk building$/m);
    expect(w.stdout).toMatch(/^#1 base ready$/m);
    expect(w.stdout).toMatch(/^#2 hello from 02$/m);
    expect(w.stdout).toMatch(/^#2 02 done$/m);
    expect(w.stdout).toMatch(/^#3 third layer$/m);
    expect(w.stdout).toMatch(/^built 3, cached 0 in /m);
    expect(w.stderr).toBe('');

    // The same again once it is over: told from its record and stream, still exit 0.
    const again = await vmlb(sb, ['watch', okId, '--plain'], as(TOK.ci));
    expect(again.exitCode, why(again)).toBe(0);
    expect(again.stdout.split('\n')[0]).toBe(`following build ${okId} on ${sched.url} (done); on the dashboard: ${sched.url}/#/builds/${okId}`);
    expect(again.stdout).toMatch(/^built 3, cached 0 in /m);

    // --json: the events as JSON lines, the last one the build's end.
    const json = await vmlb(sb, ['watch', okId, '--json'], as(TOK.alice));
    expect(json.exitCode, why(json)).toBe(0);
    const events = json.stdout.trim().split('\n').map((l) => JSON.parse(l) as { type: string; name?: string });
    expect(events[0]!.type).toBe('notice');
    expect(events.filter((e) => e.type === 'layer-done').map((e) => e.name)).toEqual(['01_base', '02_hello', '03_more']);
  });

  it('vmlb logs prints every layer\'s log under a header, or one layer\'s as it is (by folder name, name or position); --json', async () => {
    const all = await vmlb(sb, ['logs', okId], as(TOK.alice));
    expect(all.exitCode, why(all)).toBe(0);
    expect(all.stdout).toMatch(/^==> \[1\/3\] 01_base \(built\) <==\n(.*\n)*base ready\n\n==> \[2\/3\] 02_hello \(built\) <==\nhello from 02\n02 done\n\n==> \[3\/3\] 03_more \(built\) <==\nthird layer\n$/);
    for (const arg of ['02_hello', 'hello', '2']) {
      const one = await vmlb(sb, ['logs', okId, arg], as(TOK.alice));
      expect(one.exitCode, why(one)).toBe(0);
      expect(one.stdout).toBe('hello from 02\n02 done\n');
    }
    const json = await vmlb(sb, ['logs', okId, '--json'], as(TOK.alice));
    expect(json.exitCode, why(json)).toBe(0);
    const parsed = JSON.parse(json.stdout) as { id: string; state: string; layers: Array<{ index: number; name: string; status: string; log: string | null }> };
    expect(parsed.id).toBe(okId);
    expect(parsed.state).toBe('done');
    expect(parsed.layers.map((l) => [l.index, l.name, l.status])).toEqual([[0, '01_base', 'done'], [1, '02_hello', 'done'], [2, '03_more', 'done']]);
    expect(parsed.layers[1]!.log).toBe('hello from 02\n02 done\n');
    const oneJson = JSON.parse((await vmlb(sb, ['logs', okId, 'more', '--json'], as(TOK.alice))).stdout);
    expect(oneJson).toEqual({ id: okId, state: 'done', index: 2, name: '03_more', status: 'done', log: 'third layer\n' });

    const bad = await vmlb(sb, ['logs', okId, 'nope'], as(TOK.alice));
    expect(bad.exitCode).toBe(2);
    expect(bad.stderr).toBe(`vmlb: build ${okId} has no layer "nope" (its layers: 1 01_base, 2 02_hello, 3 03_more)\n`);
    expect(bad.stdout).toBe('');
  });

  it('vmlb logs --follow prints a running build\'s layers as they print, and ends with the build', async () => {
    const p = await gitProject('slow', 'for i in 1 2 3; do echo "tick $i"; sleep 1; done', 'echo "last words"');
    const id = await submitDetached(p.dir, TOK.alice);
    // Started while the build runs (it is queued or building: a cold busybox layer takes seconds).
    expect(['queued', 'building']).toContain((await record(id)).state);
    const f = await vmlb(sb, ['logs', id, '--follow'], as(TOK.alice));
    expect(f.exitCode, why(f)).toBe(0);
    // 01_base is a hit (the same busybox layer as project hello's): only the built layers print.
    expect(f.stdout).toBe('==> [2/3] 02_hello <==\ntick 1\ntick 2\ntick 3\n\n==> [3/3] 03_more <==\nlast words\n');
    expect(f.stderr).toBe('');
    // One layer of a running build: only its lines (not 03_more's).
    await writeFile(path.join(p.dir, '02_hello', 'build-layer'), '#!/bin/sh\nfor i in 1 2; do echo "tock $i"; sleep 1; done\n');
    const id2 = await submitDetached(p.dir, TOK.alice, ['--name', 'slow-again']);
    const one = await vmlb(sb, ['logs', id2, 'hello', '-f'], as(TOK.alice));
    expect(one.exitCode, why(one)).toBe(0);
    expect(one.stdout).toBe('tock 1\ntock 2\n');
    expect(await record(id2)).toMatchObject({ state: 'done', projectName: 'slow-again' });
    // Of a finished build whose layer was a hit: the log of the build that made it.
    const id3 = await submitDetached(p.dir, TOK.alice, ['--name', 'slow-again']);
    expect((await record(id3)).state).toBe('done');
    const hit = await vmlb(sb, ['logs', id3], as(TOK.alice));
    expect(hit.exitCode, why(hit)).toBe(0);
    expect(hit.stdout).toMatch(/\n==> \[2\/3\] 02_hello \(cached\) <==\ntock 1\ntock 2\n\n==> \[3\/3\] 03_more \(cached\) <==\nlast words\n$/);
  });

  it('a failing build: vmlb watch shows it and exits 1; vmlb logs shows the failed layer\'s log', async () => {
    const p = await gitProject('broken', 'echo "about to fail"; exit 3', 'echo never');
    const id = await submitDetached(p.dir, TOK.alice);
    const w = await vmlb(sb, ['watch', id, '--plain'], as(TOK.alice));
    expect(w.exitCode, why(w)).toBe(1);
    expect(w.stdout).toMatch(/^#2 about to fail$/m);
    expect(w.stdout).toMatch(/^#2 ERROR exit 3/m);
    expect(w.stdout).not.toMatch(/never/);
    expect(w.stderr).toMatch(new RegExp(`^vmlb: build ${id} failed: .*02_hello.*\\n$`));
    const log = await vmlb(sb, ['logs', id, '02_hello'], as(TOK.alice));
    expect(log.exitCode, why(log)).toBe(0);
    expect(log.stdout).toBe('about to fail\n');
    const all = await vmlb(sb, ['logs', id], as(TOK.alice));
    expect(all.exitCode, why(all)).toBe(0);
    expect(all.stdout).toMatch(/\n==> \[2\/3\] 02_hello \(failed\) <==\nabout to fail\n\n==> \[3\/3\] 03_more \(cancelled; no log\) <==\n$/);
    // --follow of a finished failed build prints its logs and exits 0 (it is data), watch 1.
    const one = await vmlb(sb, ['logs', id, '2', '--follow'], as(TOK.alice));
    expect(one.exitCode).toBe(0);
    expect(one.stdout).toBe('about to fail\n');
  });

  it('no such build is a usage error (2); an unreachable scheduler exits 3; another team\'s build is not there', async () => {
    const none = await vmlb(sb, ['watch', 'b000000000000000000'], as(TOK.alice));
    expect(none.exitCode).toBe(2);
    expect(none.stderr).toBe('vmlb: watching build b000000000000000000: there is no build b000000000000000000\n');
    const other = await vmlb(sb, ['logs', okId], as(TOK.data));
    expect(other.exitCode).toBe(2);
    expect(other.stderr).toBe(`vmlb: reading build ${okId}'s logs: there is no build ${okId}\n`);
    const port = await freePort();
    for (const cmd of [['watch', okId], ['logs', okId]]) {
      const down = await vmlb(sb, [...cmd, '--server', `http://127.0.0.1:${port}`], as(TOK.alice));
      expect(down.exitCode, why(down)).toBe(3);
      expect(down.stderr).toBe(`vmlb: cannot reach the scheduler at http://127.0.0.1:${port}: ECONNREFUSED\n`);
    }
    const bad = await vmlb(sb, ['watch', 'not-an-id'], as(TOK.alice));
    expect(bad.exitCode).toBe(2);
  });

  it('Ctrl-C stops watching and leaves the build running (exit 130)', async () => {
    const p = await gitProject('interrupted', 'echo start; sleep 6; echo end');
    const id = await submitDetached(p.dir, TOK.alice, ['--name', 'interrupted']);
    const child = spawnVmlb(sb, ['watch', id, '--plain'], as(TOK.alice));
    let out = '';
    child.stdout!.on('data', (b: Buffer) => (out += b.toString()));
    await waitFor('the watch to show the plan', async () => /3 layers: /.test(out), 60_000, 100);
    child.kill('SIGINT');
    const r = await child;
    expect(r.exitCode).toBe(130);
    expect(String(r.stderr)).toBe(`\nvmlb: stopped following; build ${id} goes on in the fleet (vmlb builds; vmlb pull ${id} -o FILE; vmlb cancel ${id})\n`);
    const after = await vmlb(sb, ['watch', id, '--plain'], as(TOK.alice));
    expect(after.exitCode, why(after)).toBe(0);
  });

  it('records the work tree\'s dirty flag and the token\'s name as submitter; vmlb builds shows and filters them', async () => {
    const clean = await record(okId);
    expect(clean).toMatchObject({ projectName: 'hello', gitBranch: 'main', gitCommit: commit, gitDirty: false, submitter: 'alice' });
    // The same work tree with an edit not committed, sent with team web's other token.
    const dir = path.join(sb.dir, 'hello');
    await writeFile(path.join(dir, '03_more', 'build-layer'), '#!/bin/sh\necho edited third\n');
    const dirtyId = await submitDetached(dir, TOK.ci);
    const w = await vmlb(sb, ['watch', dirtyId, '--plain'], as(TOK.ci));
    expect(w.exitCode, why(w)).toBe(0);
    expect(await record(dirtyId)).toMatchObject({ projectName: 'hello', gitBranch: 'main', gitCommit: commit, gitDirty: true, submitter: 'ci' });
    // A token with no name: the submitter is what the CLI says; a folder that is no git work tree: no git fields.
    const plain = await writeProject(path.join(sb.dir, 'nogit'), { '01_base': BUSYBOX_BASE });
    const dataId = await submitDetached(plain, TOK.data);
    const d = (await (await fetch(`${sched.url}/v1/builds/${dataId}`, { headers: { authorization: `Bearer ${TOK.data}` } })).json()) as Record<string, unknown>;
    expect(d.submitter).toBe('someone@laptop');
    expect(d.projectName).toBe('nogit');
    expect(d).not.toHaveProperty('gitDirty');
    expect(d).not.toHaveProperty('gitCommit');

    const short = commit.slice(0, 8);
    const table = await vmlb(sb, ['builds', '--project', 'hello'], as(TOK.alice));
    expect(table.exitCode, why(table)).toBe(0);
    const rows = table.stdout.trim().split('\n').filter((r) => /^(BUILD|b[0-9a-z]+) /.test(r));
    expect(rows[0]).toMatch(/^BUILD\s+TEAM\s+POOL\s+PROJECT\s+SUBMITTER\s+STATE\s+LAYERS\s+CREATED\s+TOOK$/);
    expect(rows, table.stdout).toHaveLength(3);
    expect(rows[1]).toMatch(new RegExp(`^${dirtyId}\\s+web\\s+default\\s+hello@main ${short}-dirty\\s+ci\\s+done\\s+3 \\(2 cached, 1 built\\)`));
    expect(rows[2]).toMatch(new RegExp(`^${okId}\\s+web\\s+default\\s+hello@main ${short}\\s+alice\\s+done\\s+3 \\(0 cached, 3 built\\)`));
    const ids = async (...args: string[]) => {
      const r = await vmlb(sb, ['builds', '--json', ...args], as(TOK.alice));
      expect(r.exitCode, why(r)).toBe(0);
      return (JSON.parse(r.stdout) as Array<{ id: string }>).map((b) => b.id);
    };
    expect(await ids('--project', 'hello', '--dirty')).toEqual([dirtyId]);
    expect(await ids('--project', 'hello', '--clean')).toEqual([okId]);
    expect(await ids('--project', 'hello', '--submitter', 'ci')).toEqual([dirtyId]);
    expect(await ids('--search', 'alice', '--project', 'hello')).toEqual([okId]);
    expect(await ids('--project', 'hello', '--branch', 'main')).toEqual([dirtyId, okId]);
    expect(await ids('--project', 'hello', '--branch', 'no-such-branch')).toEqual([]);
    expect(await ids('--commit', short, '--project', 'hello', '--submitter', 'alice')).toEqual([okId]);
    const both = await vmlb(sb, ['builds', '--dirty', '--clean'], as(TOK.alice));
    expect(both.exitCode).toBe(2);
    expect(both.stderr).toBe('vmlb: give --dirty or --clean, not both\n');
  });
});
