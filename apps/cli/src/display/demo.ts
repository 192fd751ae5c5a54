/**
 * Replays a realistic build through the display with real timing, to look at it while working
 * on it: `npx tsx apps/cli/src/display/demo.ts [--plain|--json] [--explain] [--ok] [--fast]`.
 * By default layer 04 fails; `--ok` builds all five and writes the image.
 */
import type { BuildEvent, PlannedLayer } from '@vmlb/layer-engine';
import { chooseMode, createDisplay } from './index.js';

const args = new Set(process.argv.slice(2));
const ok = args.has('--ok');
const speed = args.has('--fast') ? 0.1 : 1;
const display = createDisplay(
  chooseMode({ json: args.has('--json'), plain: args.has('--plain') }, process.stdout),
  process.stdout,
  { verbose: args.has('--explain') },
);

const key = (seed: string) => Array.from({ length: 64 }, (_, i) => ((seed.charCodeAt(i % seed.length) * (i + 7)) % 16).toString(16)).join('');
const layers: PlannedLayer[] = [
  { index: 0, name: '01_base', kind: 'base-image', key: key('base'), status: 'hit', source: 'local', cacheable: true },
  { index: 1, name: '02_packages', kind: 'build-layer', key: key('pkgs'), status: 'hit', source: 'shared', cacheable: true },
  {
    index: 2, name: '03_users', kind: 'build-layer', key: key('users'), status: 'miss', cacheable: true,
    changes: [{ what: 'file-changed', path: 'build-layer', detail: 'content' }, { what: 'file-added', path: 'files/sudoers', detail: '' }],
  },
  {
    index: 3, name: '04_app', kind: 'build-layer', key: key('app'), status: 'miss', cacheable: true,
    changes: [{ what: 'parent', detail: `${key('old')} → ${key('users')}` }],
  },
  {
    index: 4, name: '05_grow_disk', kind: 'modify-disk', key: key('grow'), status: 'miss', cacheable: true,
    changes: [{ what: 'new', detail: 'no earlier build of this layer' }],
  },
];

const started = Date.now();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms * speed));
const emit = (e: BuildEvent) => display.onEvent(e);
const at = () => Date.now();
const secs = () => (Date.now() - started) / 1000;

async function runLayer(l: PlannedLayer, script: () => Promise<void>): Promise<number> {
  const t0 = Date.now();
  emit({ type: 'layer-start', at: at(), index: l.index, name: l.name, kind: l.kind, key: l.key });
  await script();
  return (Date.now() - t0) / 1000;
}

const log = (l: PlannedLayer, chunk: string) => emit({ type: 'layer-log', at: at(), index: l.index, name: l.name, chunk });
const step = (l: PlannedLayer, s: string) => emit({ type: 'layer-step', at: at(), index: l.index, name: l.name, step: s });

async function main(): Promise<void> {
  await sleep(300);
  emit({ type: 'plan', at: at(), project: '/home/ana/images/debian-web', layers, total: layers.length });
  await sleep(50);
  const [base, pkgs, users, app, grow] = layers as [PlannedLayer, PlannedLayer, PlannedLayer, PlannedLayer, PlannedLayer];
  emit({ type: 'layer-cached', at: at(), index: 0, name: base.name, key: base.key, source: 'local', bytes: 512 * 1024 ** 2 });
  step(pkgs, 'fetching from the shared store');
  await sleep(700);
  emit({ type: 'layer-cached', at: at(), index: 1, name: pkgs.name, key: pkgs.key, source: 'shared', bytes: 312 * 1024 ** 2 });

  const usersSeconds = await runLayer(users, async () => {
    step(users, 'attaching disk');
    await sleep(400);
    step(users, 'running build-layer');
    const names = ['alice', 'bob', 'carol', 'dave', 'erin', 'frank', 'grace', 'heidi'];
    for (const n of names) {
      log(users, `+ useradd --create-home --shell /bin/bash ${n}\n`);
      await sleep(80);
      log(users, `useradd: warning: the home directory /home/${n} already exists.\n`);
      await sleep(60);
    }
    log(users, '\x1b[1m+ apt-get install -y sudo openssh-server\x1b[0m\n');
    for (let p = 0; p <= 100; p += 10) {
      log(users, `\rGet:1 http://deb.debian.org/debian bookworm/main amd64 openssh-server [${p}%]${p === 100 ? '\n' : ''}`);
      await sleep(70);
    }
    for (let i = 0; i < 10; i++) {
      log(users, `Setting up package-${i} (1.${i}-2+deb12u1) ... ${'with a long trail of words that runs far past the edge of any terminal '.repeat(2)}\n`);
      await sleep(90);
    }
    log(users, 'Processing triggers for man-db (2.11.2-2) ...'); // no final newline
    await sleep(200);
    step(users, 'detaching disk');
    await sleep(150);
  });
  emit({ type: 'layer-done', at: at(), index: 2, name: users.name, key: users.key, seconds: usersSeconds, bytes: 12.4 * 1024 ** 2 });

  const appLines = ['+ cd /mnt', '+ install -m 0755 app /usr/local/bin/app', '+ systemctl enable app.service'];
  const t0 = Date.now();
  const appSeconds = await runLayer(app, async () => {
    step(app, 'attaching disk');
    await sleep(300);
    step(app, 'running build-layer');
    for (const l of appLines) {
      log(app, `${l}\n`);
      await sleep(250);
    }
    if (!ok) {
      log(app, 'Failed to enable unit: Unit file app.service does not exist.\n');
      await sleep(100);
    }
  });
  if (!ok) {
    emit({
      type: 'layer-failed', at: at(), index: 3, name: app.name, key: app.key, seconds: (Date.now() - t0) / 1000,
      message: '04_app/build-layer exited with status 3', exitCode: 3, timedOut: false,
      logPath: '/home/ana/.cache/vmlb/logs/04_app-77ab0e12.log',
      logTail: [...appLines, 'Failed to enable unit: Unit file app.service does not exist.', ''].join('\n'),
    });
    emit({ type: 'failed', at: at(), message: 'layer 04_app failed: build-layer exited with status 3 (log: /home/ana/.cache/vmlb/logs/04_app-77ab0e12.log)', code: 'LAYER_FAILED', seconds: secs() });
    display.close();
    process.exitCode = 1;
    return;
  }
  emit({ type: 'layer-done', at: at(), index: 3, name: app.name, key: app.key, seconds: appSeconds, bytes: 196 * 1024 });

  const growSeconds = await runLayer(grow, async () => {
    step(grow, 'growing disk to 20 GiB');
    await sleep(500);
    step(grow, 'attaching disk');
    await sleep(300);
    step(grow, 'running modify-disk');
    log(grow, 'CHANGED: partition=1 start=2048 old: size=8386527 end=8388574 new: size=41940959 end=41943006\n');
    await sleep(400);
    log(grow, 'resize2fs 1.47.0 (5-Feb-2023)\nResizing the filesystem on /dev/loop7 to 5242619 (4k) blocks.\n');
    await sleep(600);
    log(grow, 'The filesystem on /dev/loop7 is now 5242619 (4k) blocks long.\n\n');
  });
  emit({ type: 'layer-done', at: at(), index: 4, name: grow.name, key: grow.key, seconds: growSeconds, bytes: 1.6 * 1024 ** 2 });
  emit({ type: 'output', at: at(), path: `${process.cwd()}/build/image.qcow2`, flattened: false, seconds: 0.02, bytes: 196 * 1024 });
  emit({ type: 'done', at: at(), built: 3, cached: 2, seconds: secs(), image: 'build/image.qcow2' });
  display.close();
}

await main();
