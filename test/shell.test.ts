/**
 * vmlb shell / vmlb run, driven through a real terminal (tmux: send-keys, capture-pane) on
 * examples/hello built into a private store: a layer's files and /mnt, writes that vanish
 * (the blob unchanged) or are kept (--keep), --before, --compare, a failed layer's kept
 * overlay (--failed, build --shell-on-failure), vmlb run's output and status, and nothing
 * attached left behind — after exit, a closed terminal, and SIGKILL followed by the sweep.
 */
import { execa } from 'execa';
import { chmod, mkdir, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { VMLB, buildJson, copyExample, findEvent, leftovers, planKeys, sandbox, sha256sum, vmlb, type Sandbox } from './helpers/vmlb.js';

let sb: Sandbox;
let project: string;
let failing: string;
let keys: Record<string, string>;
/** A tmux server of this file's own (its socket name), stopped at the end. */
const SOCKET = `vmlb-shell-test-${process.pid}`;
let sessions = 0;

beforeAll(async () => {
  sb = await sandbox('shell');
  project = await copyExample('hello', path.join(sb.dir, 'hello'));
  const r = await buildJson(sb, project);
  expect(r.exitCode, r.stderr).toBe(0);
  const names = findEvent(r, 'plan')!.layers.map((l) => l.name);
  keys = Object.fromEntries(planKeys(r).map((k, i) => [names[i]!, k]));
  // The same project with a last layer that writes a file and then fails.
  failing = await copyExample('hello', path.join(sb.dir, 'failing'));
  await mkdir(path.join(failing, '07_fail'));
  await writeFile(path.join(failing, '07_fail/build-layer'), '#!/bin/sh\necho half-done > /etc/half-built\necho "about to fail"\nexit 3\n');
  await chmod(path.join(failing, '07_fail/build-layer'), 0o755);
});
afterEach(async () => {
  expect(await leftovers(sb)).toEqual([]);
  // No session folder (throw-away overlay, mount point) stays in the run dir either.
  expect(await readdir(path.join(sb.runDir, 'shell')).catch(() => [])).toEqual([]);
});
afterAll(async () => {
  await execa('tmux', ['-L', SOCKET, 'kill-server'], { reject: false });
  await sb?.cleanup();
});

const blob = (name: string) => path.join(sb.store, 'layers', `${keys[name]}.qcow2`);

// ---- the terminal ----

const tmux = (...args: string[]) => execa('tmux', ['-L', SOCKET, ...args], { reject: false });
const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/** A terminal running `vmlb ARGS`, then printing its exit status as VMLB-EXIT=N and staying open. */
async function terminal(args: string[]): Promise<string> {
  const name = `s${++sessions}`;
  const env = Object.entries(sb.env).map(([k, v]) => `${k}=${q(v)}`).join(' ');
  const cmd = `env ${env} ${q(process.execPath)} ${q(VMLB)} ${args.map(q).join(' ')}; echo VMLB-EXIT=$?; exec sleep 3600`;
  // bash: it goes on after a child that handled Ctrl-C (vmlb exits 130 itself), as an interactive shell does.
  const r = await tmux('new-session', '-d', '-s', name, '-x', '160', '-y', '50', 'bash', '--norc', '--noprofile', '-c', cmd);
  expect(r.exitCode, String(r.stderr)).toBe(0);
  return name;
}

async function screen(name: string): Promise<string> {
  return String((await tmux('capture-pane', '-p', '-J', '-S', '-500', '-t', name)).stdout);
}

/** Waits until the terminal shows `re` (after `from`, a length of earlier output); returns the screen. */
async function waitFor(name: string, re: RegExp, timeoutMs = 30_000): Promise<string> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const s = await screen(name);
    if (re.test(s)) return s;
    if (Date.now() > until) throw new Error(`the terminal did not show ${re} within ${timeoutMs} ms; it shows:\n${s}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function type(name: string, line: string): Promise<void> {
  await tmux('send-keys', '-t', name, '-l', line);
  await tmux('send-keys', '-t', name, 'Enter');
}

async function close(name: string): Promise<void> {
  await tmux('kill-session', '-t', name);
}

/** The prompt of a shell in LAYER (see apps/cli/src/layer-session.ts). */
const prompt = (layer: string) => new RegExp(`\\(vmlb ${layer}\\) [^\\n]*# $`, 'm');

describe('vmlb shell', () => {
  it("opens the layer's root filesystem with its folder at /mnt and its mounts; writes vanish at exit, the blob unchanged", async () => {
    const before = await sha256sum(blob('02_motd'));
    const t = await terminal(['shell', '02_motd', '-C', project]);
    await waitFor(t, prompt('02_motd'));
    await type(t, 'cat /etc/motd; ls /mnt; cat /srv/files/issue; pwd; echo "user=$(id -u) layer=$VMLB_LAYER"');
    let s = await waitFor(t, /user=\d+ layer=02_motd/);
    expect(s).toContain('Welcome to the vm-layer-builder hello image.');
    expect(s).toMatch(/build-layer\s+files\s+motd/); // /mnt is the layer's folder
    expect(s).toContain('vmlb hello'); // # chroot-bind-mount files /srv/files
    expect(s).toMatch(/^\/mnt$/m);
    expect(s).toContain('user=0 layer=02_motd');
    // /mnt is read-only; job control and Ctrl-C reach the shell's own command only.
    await type(t, 'touch /mnt/x || echo MNT-RO; echo scratch > /etc/written-in-shell && cat /etc/written-in-shell; sleep 60');
    await waitFor(t, /^scratch$/m);
    expect(await screen(t)).toContain('MNT-RO');
    await tmux('send-keys', '-t', t, 'C-c');
    await waitFor(t, /\^C\s*\n\(vmlb 02_motd\)/);
    await type(t, 'exit 4');
    s = await waitFor(t, /VMLB-EXIT=\d+/);
    expect(s).toContain('VMLB-EXIT=4'); // the shell's own status
    await close(t);
    expect(await sha256sum(blob('02_motd'))).toBe(before);
    const r = await vmlb(sb, ['run', '02_motd', '-C', project, '--', 'cat', '/etc/written-in-shell']);
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toContain('No such file');
  });

  it('--keep FILE keeps what was changed, as a qcow2 on the layer', async () => {
    const kept = path.join(sb.dir, 'kept.qcow2');
    const t = await terminal(['shell', '05_app', '-C', project, '--keep', kept]);
    await waitFor(t, prompt('05_app'));
    await type(t, 'echo "kept by hand" > /root/note; exit');
    const s = await waitFor(t, /VMLB-EXIT=\d+/);
    expect(s).toContain('VMLB-EXIT=0');
    expect(s).toContain(`kept what you changed in ${kept}`);
    await close(t);
    const info = JSON.parse(String((await execa('qemu-img', ['info', '-U', '--output=json', kept])).stdout));
    expect(info.format).toBe('qcow2');
    expect(info['backing-filename']).toBe(blob('05_app'));
    const diff = await vmlb(sb, ['diff', '05_app', kept, '-C', project]);
    expect(diff.exitCode, diff.stderr).toBe(0);
    expect(diff.stdout.trim().split('\n')).toEqual(['A /root/note']);
    const r = await vmlb(sb, ['run', kept, '--', 'cat', '/root/note']);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout).toBe('kept by hand');
  });

  it("--before LAYER opens its parent's state with LAYER's folder at /mnt", async () => {
    const t = await terminal(['shell', '--before', '05_app', '-C', project]);
    await waitFor(t, prompt('05_app'));
    await type(t, 'test -e /usr/local/bin/hello && echo HAS-HELLO || echo NO-HELLO; ls /mnt; cat /etc/motd');
    const s = await waitFor(t, /-HELLO/);
    expect(s).toContain('NO-HELLO');
    expect(s).toMatch(/build-layer\s+hello/);
    await type(t, 'sh /mnt/build-layer && echo SCRIPT-OK; exit');
    expect(await waitFor(t, /VMLB-EXIT=\d+/)).toContain('SCRIPT-OK');
    await close(t);
  });

  it('--compare B mounts B read-only at /compare', async () => {
    const t = await terminal(['shell', '02_motd', '--compare', '05_app', '-C', project]);
    await waitFor(t, prompt('02_motd'));
    await type(t, 'ls /compare/usr/local/bin; test -e /usr/local/bin/hello || echo NOT-HERE; touch /compare/x 2>&1; echo done-$VMLB_COMPARE');
    const s = await waitFor(t, /done-\/compare/);
    expect(s).toMatch(/^hello$/m);
    expect(s).toContain('NOT-HERE');
    expect(s).toContain('Read-only file system');
    await type(t, 'exit');
    await waitFor(t, /VMLB-EXIT=0/);
    await close(t);
  });

  it('--json says what it opened, its exit status and what it kept', async () => {
    const kept = path.join(sb.dir, 'kept-json.qcow2');
    // No terminal: the shell reads its (empty) stdin and ends at once.
    const r = await vmlb(sb, ['shell', '02_motd', '-C', project, '--keep', kept, '--json']);
    expect(r.exitCode, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j).toMatchObject({ command: 'shell', layer: '02_motd', key: keys['02_motd'], image: blob('02_motd'), exitCode: 0, kept: { file: kept, backing: blob('02_motd') } });
    expect(j.kept.bytes).toBeGreaterThan(0);
    // A usage error is exit 2: an existing --keep file, a layer never built.
    expect((await vmlb(sb, ['shell', '02_motd', '-C', project, '--keep', kept])).exitCode).toBe(2);
    expect((await vmlb(sb, ['run', '99_none', '-C', project, '--', 'true'])).exitCode).toBe(2);
  });

  it("a closed terminal ends the session and releases what it attached", async () => {
    const t = await terminal(['shell', '04_data', '-C', project]);
    await waitFor(t, prompt('04_data'));
    await type(t, 'cat /data/hello.txt');
    await waitFor(t, /data written by 04_data/); // # chroot-mount 2 /data
    await close(t);
    // leftovers() (afterEach) waits a moment for the kernel's auto-clear.
    for (let i = 0; i < 50 && (await readdir(path.join(sb.runDir, 'shell')).catch(() => [])).length > 0; i++) await new Promise((r) => setTimeout(r, 100));
  });

  it('after SIGKILL of vmlb, the sweep releases everything', async () => {
    const t = await terminal(['shell', '02_motd', '-C', project]);
    await waitFor(t, prompt('02_motd'));
    const ps = String((await execa('ps', ['-eo', 'pid,args'])).stdout);
    const pids = ps
      .split('\n')
      .filter((l) => l.includes(VMLB) && l.includes(' shell 02_motd ') && l.includes(project))
      .map((l) => Number(l.trim().split(/\s+/)[0]));
    expect(pids).toHaveLength(1);
    // While it runs, the session has its disk attached (so the checks after it are not vacuous).
    expect((await leftovers(sb)).length).toBeGreaterThan(0);
    process.kill(pids[0]!, 'SIGKILL');
    await waitFor(t, /VMLB-EXIT=137/);
    await close(t);
    const r = await vmlb(sb, ['sweep']);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout).toContain('removed 1 vmlb shell session folder');
  });
});

describe('vmlb run', () => {
  it("streams the command's output and exits with its status", async () => {
    const r = await vmlb(sb, ['run', '04_data', '-C', project, '--', 'sh', '-c', 'cat /data/hello.txt; echo to-stderr >&2; exit 7']);
    expect(r.exitCode).toBe(7);
    expect(r.stdout).toBe('data written by 04_data');
    expect(r.stderr).toContain('to-stderr');
    const ok = await vmlb(sb, ['run', '05_app', '-C', project, '--', '/usr/local/bin/hello']);
    expect(ok.exitCode, ok.stderr).toBe(0);
    expect(ok.stdout).toContain('hello from hello');
  });

  it('through a terminal too, and a command that is not in the image is 127', async () => {
    const t = await terminal(['run', '02_motd', '-C', project, '--', 'sh', '-c', 'echo "on $VMLB_LAYER"; exit 9']);
    const s = await waitFor(t, /VMLB-EXIT=\d+/);
    expect(s).toContain('on 02_motd');
    expect(s).toContain('VMLB-EXIT=9');
    await close(t);
    const r = await vmlb(sb, ['run', '02_motd', '-C', project, '--', 'no-such-command']);
    expect(r.exitCode).toBe(127);
    expect(r.stderr).toContain('could not start no-such-command');
  });

  it('Ctrl-C stops the command and releases everything (exit 130)', async () => {
    const t = await terminal(['run', '04_data', '-C', project, '--', 'sh', '-c', 'echo started; sleep 60']);
    await waitFor(t, /^started$/m);
    await tmux('send-keys', '-t', t, 'C-c');
    const s = await waitFor(t, /VMLB-EXIT=\d+/);
    expect(s).toContain('VMLB-EXIT=130');
    await close(t);
  });
});

describe('a failed layer', () => {
  it('keeps its half-built overlay, which vmlb shell --failed opens with the file the script wrote', async () => {
    const r = await buildJson(sb, failing);
    expect(r.exitCode).toBe(1);
    const failed = findEvent(r, 'layer-failed')!;
    expect(failed.name).toBe('07_fail');
    expect(failed.overlay).toBe(path.join(sb.store, 'layers', `${failed.key}.failed.qcow2`));
    const t = await terminal(['shell', '--failed', '-C', failing]);
    await waitFor(t, prompt('07_fail'));
    await type(t, 'cat /etc/half-built; ls /mnt');
    const s = await waitFor(t, /^build-layer$/m);
    expect(s).toMatch(/^half-done$/m);
    await type(t, 'exit');
    await waitFor(t, /VMLB-EXIT=0/);
    await close(t);
    // The plain sweep keeps it; sweep --failed removes it.
    const sw = await vmlb(sb, ['sweep']);
    expect(sw.stdout).toContain('nothing to clean up');
    expect((await vmlb(sb, ['run', '--failed', '-C', failing, '--', 'cat', '/etc/half-built'])).stdout).toBe('half-done');
  });

  it('vmlb build --shell-on-failure drops into it at once; the build still fails', async () => {
    const t = await terminal(['build', failing, '--shell-on-failure']);
    await waitFor(t, prompt('07_fail'), 60_000);
    await type(t, 'cat /etc/half-built');
    await waitFor(t, /^half-done$/m);
    await type(t, 'exit');
    const s = await waitFor(t, /VMLB-EXIT=\d+/);
    expect(s).toContain('VMLB-EXIT=1');
    expect(s).toContain('vmlb shell --failed opens it');
    await close(t);
    const sw = await vmlb(sb, ['sweep', '--failed']);
    expect(sw.stdout).toMatch(/removed 1 failed layer overlay .*07_fail/);
    const none = await vmlb(sb, ['shell', '--failed', '-C', failing]);
    expect(none.exitCode).toBe(2);
    expect(none.stderr).toContain('no failed layer');
  });

  it('the next build of that layer drops its kept overlay, whether it fails again or not', async () => {
    expect((await buildJson(sb, failing)).exitCode).toBe(1);
    const kept = findEvent(await buildJson(sb, failing), 'layer-failed')!.overlay!;
    // Failed again: one overlay, the newest.
    expect((await readdir(path.join(sb.store, 'layers'))).filter((n) => n.endsWith('.failed.qcow2'))).toEqual([path.basename(kept)]);
    await writeFile(path.join(failing, '07_fail/build-layer'), '#!/bin/sh\necho fixed > /etc/half-built\n');
    const ok = await buildJson(sb, failing);
    expect(ok.exitCode, ok.stderr).toBe(0);
    expect((await readdir(path.join(sb.store, 'layers'))).filter((n) => n.includes('.failed.qcow2') || n.endsWith('.failed.json'))).toEqual([]);
    expect((await vmlb(sb, ['shell', '--failed', '-C', failing])).exitCode).toBe(2);
  });
});
