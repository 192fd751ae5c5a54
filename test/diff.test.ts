/** vmlb diff: exactly what a layer script changed, by layer name, key or image file; filters; --json. */
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { BUSYBOX_BASE, buildJson, leftovers, planKeys, sandbox, vmlb, writeProject, type Sandbox } from './helpers/vmlb.js';

let sb: Sandbox;
let project: string;
let keys: string[];
beforeAll(async () => {
  sb = await sandbox('diff');
  project = await writeProject(path.join(sb.dir, 'p'), {
    '01_base': {
      ...BUSYBOX_BASE,
      script: `${BUSYBOX_BASE.script}
mkdir -p etc/app srv/old
echo aaaa > etc/app/same-size
echo short > etc/app/grows
echo keep > etc/app/mode
echo keep > etc/app/owner
echo gone > etc/app/removed
echo file > etc/app/becomes-link
ln -s /etc/app/mode etc/app/link
echo x > srv/old/a
echo 'not touched' > etc/untouched`,
    },
    '02_change': {
      kind: 'build-layer',
      script: `set -eu
echo bbbb > /etc/app/same-size
echo 'much longer now' > /etc/app/grows
chmod 755 /etc/app/mode
chown 1000:1000 /etc/app/owner
rm /etc/app/removed
rm /etc/app/becomes-link && ln -s mode /etc/app/becomes-link
ln -sf /etc/app/owner /etc/app/link
mkdir /etc/app/new-dir && echo new > /etc/app/new-dir/new-file
rm -r /srv/old`,
    },
  });
  const r = await buildJson(sb, project);
  expect(r.exitCode, r.stderr).toBe(0);
  keys = planKeys(r);
});
afterEach(async () => {
  expect(await leftovers(sb)).toEqual([]);
});
afterAll(async () => {
  await sb?.cleanup();
});

const EXPECTED = [
  'M /etc/app/becomes-link (type file→symlink)',
  'M /etc/app/grows (content)',
  'M /etc/app/link (target /etc/app/mode→/etc/app/owner)',
  'M /etc/app/mode (mode 644→755)',
  'A /etc/app/new-dir',
  'A /etc/app/new-dir/new-file',
  'M /etc/app/owner (owner 0:0→1000:1000)',
  'D /etc/app/removed',
  'M /etc/app/same-size (content)',
  'D /srv/old',
  'D /srv/old/a',
];

describe('vmlb diff', () => {
  it('lists exactly the files a layer script changed, by layer name', async () => {
    const r = await vmlb(sb, ['diff', '01_base', '02_change', '-C', project]);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout.trim().split('\n')).toEqual(EXPECTED);
    expect(r.stderr).toMatch(/2 added, 3 removed, 6 changed from 01_base \([0-9a-f]{12}\) to 02_change \([0-9a-f]{12}\)/);
  });

  it('takes keys (or a unique prefix) and image files, and --checksum gives the same answer', async () => {
    const image = path.join(project, 'build/image.qcow2');
    const r = await vmlb(sb, ['diff', keys[0]!.slice(0, 12), image, '--checksum']);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout.trim().split('\n')).toEqual(EXPECTED);
  });

  it('says there is no difference between an image and the layer it is built on, and --exit-code tells', async () => {
    const image = path.join(project, 'build/image.qcow2');
    const same = await vmlb(sb, ['diff', image, keys[1]!, '--exit-code']);
    expect(same.exitCode, same.stderr).toBe(0);
    expect(same.stdout).toBe('');
    expect(same.stderr).toContain('no differences');
    const differ = await vmlb(sb, ['diff', keys[0]!, keys[1]!, '--exit-code']);
    expect(differ.exitCode).toBe(1);
  });

  it('filters with --include and --exclude globs', async () => {
    const r = await vmlb(sb, ['diff', '01_base', '02_change', '-C', project, '--include', '/etc/app', '--exclude', 'new-dir', '--exclude', '*-size']);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout.trim().split('\n')).toEqual(EXPECTED.filter((l) => l.includes('/etc/app/') && !l.includes('new-dir') && !l.includes('same-size')));
    const srv = await vmlb(sb, ['diff', '01_base', '02_change', '-C', project, '--include', '/srv/**']);
    expect(srv.stdout.trim().split('\n')).toEqual(['D /srv/old', 'D /srv/old/a']);
  });

  it('--json gives each change with its before and after', async () => {
    const r = await vmlb(sb, ['diff', '01_base', '02_change', '-C', project, '--json']);
    expect(r.exitCode, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j).toMatchObject({ added: 2, removed: 3, modified: 6, a: { ref: '01_base', key: keys[0] }, b: { ref: '02_change', key: keys[1] } });
    const owner = j.changes.find((c: { path: string }) => c.path === '/etc/app/owner');
    expect(owner).toMatchObject({ change: 'modified', aspects: ['owner'], before: { uid: 0, gid: 0, mode: '644' }, after: { uid: 1000, gid: 1000 } });
  });

  it('names what it cannot find (exit 2)', async () => {
    const r = await vmlb(sb, ['diff', '07_nope', '02_change', '-C', project]);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toContain('has no build of layer 07_nope');
    const k = await vmlb(sb, ['diff', 'deadbeefdeadbeef', '02_change', '-C', project]);
    expect(k.exitCode).toBe(2);
    expect(k.stderr).toContain('no layer with that key');
  });
});
