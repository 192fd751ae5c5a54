/** The rest of the command line: new-layer, explain, store cap and eviction, output modes. */
import { access, constants, readdir, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { execa } from 'execa';
import { BUSYBOX_BASE, VMLB, buildJson, builtNames, leftovers, planKeys, sandbox, vmlb, writeProject, type Sandbox } from './helpers/vmlb.js';

let sb: Sandbox;
beforeAll(async () => {
  sb = await sandbox('cli');
});
afterEach(async () => {
  expect(await leftovers(sb)).toEqual([]);
});
afterAll(async () => {
  await sb?.cleanup();
});

describe('vmlb new-layer', () => {
  it('scaffolds the next number with an executable build-layer that builds', async () => {
    const p = await writeProject(path.join(sb.dir, 'scaffold'), { '01_base': BUSYBOX_BASE });
    const r = await vmlb(sb, ['new-layer', 'users', '-C', p]);
    expect(r.exitCode, r.stderr).toBe(0);
    const script = path.join(p, '02_users/build-layer');
    await access(script, constants.X_OK);
    const b = await buildJson(sb, p);
    expect(b.exitCode, b.stderr).toBe(0);
    expect(builtNames(b)).toContain('02_users');
    const dup = await vmlb(sb, ['new-layer', 'bad name', '-C', p]);
    expect(dup.exitCode).toBe(2);
    expect(dup.stderr).toContain('bad name');
  });
});

describe('output modes', () => {
  it('plain output has one line per layer and a summary; --json is one event per line', async () => {
    const p = await writeProject(path.join(sb.dir, 'modes'), {
      '01_base': BUSYBOX_BASE,
      '02_hello': { kind: 'build-layer', script: 'echo hello-output' },
    });
    const plain = await vmlb(sb, ['build', p, '--plain']);
    expect(plain.exitCode, plain.stderr).toBe(0);
    expect(plain.stdout).toMatch(/hello-output/);
    expect(plain.stdout).toMatch(/built \d+, cached \d+ in/);
    expect(plain.stdout).not.toMatch(/\x1b\[/);
    const json = await vmlb(sb, ['build', p, '--json']);
    expect(json.exitCode).toBe(0);
    for (const line of json.stdout.trim().split('\n')) expect(() => JSON.parse(line)).not.toThrow();
    expect(json.events.at(-1)).toMatchObject({ type: 'done', built: 0, cached: 2 });
  });
});

describe('the store cap', () => {
  it('evicts least-recently-used layers above the cap, never a chain an output on disk uses', async () => {
    // A store of its own: outputs of the other tests would pin their chains here.
    const own = await sandbox('cap');
    const sb = own;
    const a = await writeProject(path.join(sb.dir, 'cap-a'), {
      '01_base': BUSYBOX_BASE,
      '02_a': { kind: 'build-layer', script: 'echo a > /etc/a' },
    });
    const b = await writeProject(path.join(sb.dir, 'cap-b'), {
      '01_base': { ...BUSYBOX_BASE, script: BUSYBOX_BASE.script + '\necho b > etc/b' },
      '02_b': { kind: 'build-layer', script: 'echo b > /etc/b2' },
    });
    const cap = ['--store-cap', '1K'];
    expect((await buildJson(sb, a, cap)).exitCode).toBe(0);
    expect((await buildJson(sb, b, cap)).exitCode).toBe(0);
    // a's output still exists: its chain is pinned and survives the cap.
    expect(builtNames(await buildJson(sb, a, cap))).toEqual([]);
    await rm(path.join(a, 'build'), { recursive: true });
    const rb = await buildJson(sb, b, cap);
    expect(builtNames(rb)).toEqual([]);
    const keysB = planKeys(rb);
    const left = (await readdir(path.join(sb.store, 'layers'))).filter((f) => f.endsWith('.json')).map((f) => f.slice(0, -5));
    expect(left.sort()).toEqual([...keysB].sort());
    await stat(path.join(b, 'build/image.qcow2'));
    expect(await leftovers(own)).toEqual([]);
    await own.cleanup();
  });
});

describe('not root', () => {
  const asNobody = (args: string[]) =>
    execa('setpriv', ['--reuid', '65534', '--regid', '65534', '--clear-groups', process.execPath, VMLB, ...args], { reject: false, env: { ...sb.env, HOME: sb.dir, CI: '1' } });

  it('vmlb build, sweep, diff as a normal user: one line saying root is needed, exit 2, nothing touched', async () => {
    const p = await writeProject(path.join(sb.dir, 'not-root'), { '01_base': BUSYBOX_BASE });
    // The CLI must be readable by that user at all (a checkout under /root is not): else there is nothing to test.
    const readable = await execa('setpriv', ['--reuid', '65534', '--regid', '65534', '--clear-groups', 'test', '-r', VMLB], { reject: false });
    if (readable.exitCode !== 0) return console.warn(`cli.test.ts: ${VMLB} is not readable by uid 65534; the not-root check is skipped`);
    for (const [cmd, ...rest] of [['build', p], ['sweep'], ['diff', 'a', 'b']] as const) {
      const r = await asNobody([cmd, ...rest]);
      expect(r.exitCode, `${cmd}: ${r.stderr}`).toBe(2);
      expect(r.stderr).toBe(`vmlb: ${cmd} needs root: it attaches disks (loop devices, FUSE, mounts) and makes namespaces for the layer sandbox; run it as root (e.g. sudo vmlb ${cmd} …)`);
      expect(r.stdout).toBe('');
    }
    await expect(stat(path.join(p, 'build'))).rejects.toThrow();
  });
});

describe('exit status', () => {
  it('an unknown command, an unknown flag or a missing argument is usage (exit 2), printed once on stderr; --help is 0', async () => {
    for (const args of [['nosuch'], ['build', '--bogus'], ['cancel']]) {
      const r = await vmlb(sb, args);
      expect(r.exitCode, `${args.join(' ')}: ${r.stderr}`).toBe(2);
      expect(r.stdout).toBe('');
      expect(r.stderr.split('\n')[0]).toMatch(/^vmlb: (unknown command 'nosuch'|unknown option '--bogus'|missing required argument 'build')$/);
    }
    const help = await vmlb(sb, ['build', '--help']);
    expect(help.exitCode).toBe(0);
    expect(help.stdout).toContain('--flatten');
  });
});
