/**
 * The layer sandbox, attacked for real by a hostile team's layers (helpers/hostile.ts and
 * fixtures/escape.c) in local builds: the host's root through /proc and every other way back,
 * the host's processes and environment, block devices (in /dev, made with mknod, or planted in
 * a crafted base image), the kernel, the host's loopback and addresses, the engine's requests,
 * symbolic links planted where the engine mounts, another build's files. Every try must be
 * blocked; the same tries run unsandboxed (--no-sandbox) as a control must get through, so the
 * tries are real. Plus what a well-behaved layer keeps: outbound network, `# network none`,
 * `# cache-mount`, owners on disk, the same image as unsandboxed. Nothing attached is left.
 * The same attacks through the fleet are in sandbox-fleet.test.ts.
 */
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { chmod, cp, mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { buildEscapeTool, escapeLayer, escapeLines, hostAddresses, hostMarker, hostToolsAttack, listen, otherBuildPair, type Listener } from './helpers/hostile.js';
import { BUSYBOX_BASE, buildJson, builtNames, layerLog, leftovers, readImageFiles, sandbox, sha256sum, vmlb, writeProject, type Sandbox, copyExample } from './helpers/vmlb.js';

let sb: Sandbox;
let escape: string;
let marker: { file: string; secret: string };
let loopback: Listener;
let anyAddress: Listener;
/** A value the engine's own environment holds (as a worker's holds S3_SECRET_KEY); no layer may see it. */
const CANARY = `canary-${Math.random().toString(36).slice(2)}`;
const hostEnv = { S3_SECRET_KEY: CANARY, REDIS_URL: `redis://:${CANARY}@127.0.0.1:6379` };
let outbound: string | null = null;

beforeAll(async () => {
  sb = await sandbox('sandbox');
  escape = await buildEscapeTool(sb.dir);
  marker = await hostMarker(sb.dir);
  loopback = await listen('127.0.0.1');
  anyAddress = await listen('0.0.0.0');
  // Outbound network for the layer is tried against the apt mirror this host uses, when the host reaches it.
  outbound = await fetch('http://deb.debian.org/debian/dists/bookworm/Release', { signal: AbortSignal.timeout(10_000) })
    .then((r) => (r.ok ? 'http://deb.debian.org/debian/dists/bookworm/Release' : null))
    .catch(() => null);
  if (!outbound) console.warn('sandbox.test.ts: deb.debian.org is not reachable from this host; the outbound-network check is skipped');
});
afterEach(async () => {
  expect(await leftovers(sb)).toEqual([]);
});
afterAll(async () => {
  await loopback?.close();
  await anyAddress?.close();
  await sb?.cleanup();
});

const connects = () => [
  { name: 'host-loopback', host: '127.0.0.1', port: loopback.port },
  ...hostAddresses().map((a, i) => ({ name: `host-address-${i}`, host: a, port: anyAddress.port })),
  // slirp4netns' gateway is the host; with host loopback disabled it must lead nowhere.
  { name: 'slirp-gateway', host: '10.0.2.2', port: loopback.port },
  { name: 'metadata', host: '169.254.169.254', port: 80 },
];

async function hostileProject(name: string): Promise<string> {
  const dir = path.join(sb.dir, name);
  const layer = escapeLayer({ escape, marker: marker.file, secret: marker.secret, connects: connects(), canary: CANARY });
  await writeProject(dir, {
    '01_base': { kind: 'create-disk', script: `${BUSYBOX_BASE.script}\n${hostToolsAttack({ marker: marker.file, secret: marker.secret, canary: CANARY })}` },
    '02_escape': layer,
    '03_modify': { kind: 'modify-disk', script: `# disk-size 96M\n${hostToolsAttack({ marker: marker.file, secret: marker.secret, canary: CANARY })}` },
  });
  await cp(escape, path.join(dir, '02_escape/escape'));
  return dir;
}

describe('a hostile layer, sandboxed', () => {
  it('reaches nothing of the host: every try of every layer kind is blocked', async () => {
    const project = await hostileProject('hostile');
    const before = [loopback.connections(), anyAddress.connections()];
    const run = await vmlb(sb, ['build', project, '--json'], hostEnv);
    expect(run.exitCode, run.stderr).toBe(0);
    for (const layer of ['01_base', '02_escape', '03_modify']) {
      const tries = escapeLines(layerLog(run, layer));
      expect(tries.length, `${layer} tried nothing:\n${layerLog(run, layer)}`).toBeGreaterThan(10);
      expect(tries.filter((t) => t.outcome === 'OPEN').map((t) => t.line), layer).toEqual([]);
    }
    // Every try of the escape tool ran (it prints its summary last).
    expect(layerLog(run, '02_escape')).toMatch(/ESCAPE-SUMMARY 0 open/);
    // Nothing reached the listeners, nothing was written on the host.
    expect([loopback.connections(), anyAddress.connections()]).toEqual(before);
    expect(existsSync(`${marker.file}.written`)).toBe(false);
    expect(existsSync('/tmp/pwned')).toBe(false);
    // The layer's root is root of its own user namespace, not of the host.
    const uidMap = /ESCAPE-INFO uid_map: *0 +(\d+) +65536/.exec(layerLog(run, '02_escape'));
    expect(uidMap, layerLog(run, '02_escape')).not.toBeNull();
    expect(Number(uidMap![1])).toBeGreaterThanOrEqual(65536);
  });

  it('gets through unsandboxed (--no-sandbox, the control: the tries are real)', async () => {
    const project = await hostileProject('hostile-control');
    const before = loopback.connections();
    // A store of its own: the layers' keys are those of the sandboxed run (the sandbox is not an input).
    const run = await vmlb(sb, ['build', project, '--json', '--no-sandbox', '--last', '02_escape'], { ...hostEnv, VMLB_STORE: path.join(sb.dir, 'store-control') });
    expect(run.exitCode, run.stderr).toBe(0);
    expect(run.stdout).toMatch(/sandbox off \(--no-sandbox, VMLB_SANDBOX=0\): layer scripts run unconfined, as root of this host/);
    const open = new Set(escapeLines(layerLog(run, '02_escape')).filter((t) => t.outcome === 'OPEN').map((t) => t.name));
    for (const name of ['proc-1-root', 'chroot-escape', 'open-by-handle', 'dev-block', 'mount-ext4', 'net-host-loopback']) expect(open, layerLog(run, '02_escape')).toContain(name);
    expect(loopback.connections()).toBeGreaterThan(before);
    const host = new Set(escapeLines(layerLog(run, '01_base')).filter((t) => t.outcome === 'OPEN').map((t) => t.name));
    for (const name of ['host-file', 'host-disks', 'losetup']) expect(host, layerLog(run, '01_base')).toContain(name);
    await execa('sh', ['-c', 'for l in $(losetup -j /etc/hostname | cut -d: -f1); do losetup -d "$l"; done']);
  });

  it('VMLB_SANDBOX=0 is --no-sandbox, said by the build; another value is refused (exit 2)', async () => {
    const dir = await writeProject(path.join(sb.dir, 'setting'), { '01_base': BUSYBOX_BASE, '02_id': { kind: 'build-layer', script: '# nocache\ncat /proc/self/uid_map' } });
    const off = await vmlb(sb, ['build', dir, '--json'], { VMLB_SANDBOX: '0' });
    expect(off.exitCode, off.stderr).toBe(0);
    expect(off.stdout).toMatch(/sandbox off \(--no-sandbox, VMLB_SANDBOX=0\)/);
    expect(layerLog(off, '02_id')).toMatch(/^\s*0\s+0\s+4294967295$/m);
    const on = await vmlb(sb, ['build', dir, '--json'], { VMLB_SANDBOX: '1' });
    expect(layerLog(on, '02_id')).toMatch(/^\s*0\s+\d{7,}\s+65536$/m);
    const bad = await vmlb(sb, ['build', dir], { VMLB_SANDBOX: 'maybe' });
    expect(bad.exitCode).toBe(2);
    expect(bad.stderr).toBe('vmlb: VMLB_SANDBOX must be 0 (layers run unconfined) or 1 (sandboxed, the default), not "maybe"');
  });

  it('cannot open a block device planted in a crafted base image', async () => {
    // A host disk with a secret on it (a loop device over a file of the test: this machine's
    // own disk cannot be opened even by its root), as a node in the image: what a hostile
    // team's base image can hold.
    const diskFile = path.join(sb.dir, 'host-disk.img');
    await writeFile(diskFile, Buffer.concat([Buffer.from(`${marker.secret}\n`), Buffer.alloc(1 << 20)]));
    const loop = String((await execa('losetup', ['--find', '--show', diskFile])).stdout).trim();
    try {
      const [major, minor] = String((await execa('stat', ['-L', '-c', '%t %T', loop])).stdout).trim().split(' ').map((h) => parseInt(h, 16));
      const dir = path.join(sb.dir, 'crafted');
      const root = path.join(sb.dir, 'crafted-root');
      await mkdir(path.join(root, 'bin'), { recursive: true });
      for (const d of ['etc', 'proc', 'sys', 'dev', 'tmp', 'mnt']) await mkdir(path.join(root, d), { recursive: true });
      await cp('/bin/busybox', path.join(root, 'bin/busybox'));
      for (const a of ['sh', 'head', 'grep', 'echo', 'cat']) await execa('ln', ['-sf', 'busybox', path.join(root, 'bin', a)]);
      await execa('mknod', [path.join(root, 'host-disk'), 'b', String(major), String(minor)]);
      await mkdir(path.join(dir, '01_base'), { recursive: true });
      const raw = path.join(dir, '01_base/disk.raw');
      await execa('truncate', ['-s', '64M', raw]);
      await execa('sfdisk', ['--quiet', raw], { input: 'label: gpt\nstart=2048, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709\n' });
      await execa('mke2fs', ['-q', '-F', '-t', 'ext4', '-d', root, '-E', 'offset=1048576', raw, '60M']);
      await writeFile(path.join(dir, '01_base/base-image'), `source: disk.raw\nsha256: ${await sha256sum(raw)}\n`);
      await writeProject(dir, {
        '02_read': { kind: 'build-layer', script: `if head -c 100 /host-disk | grep -q '${marker.secret}'; then echo "ESCAPE planted-node OPEN"; else echo "ESCAPE planted-node blocked"; fi` },
      });
      const run = await buildJson(sb, dir);
      expect(run.exitCode, run.stderr).toBe(0);
      expect(layerLog(run, '02_read')).toMatch(/ESCAPE planted-node blocked/);
      // Unsandboxed the node is the host's disk (the control).
      const control = await vmlb(sb, ['build', dir, '--json', '--no-sandbox'], { VMLB_STORE: path.join(sb.dir, 'store-control-crafted') });
      expect(control.exitCode, control.stderr).toBe(0);
      expect(layerLog(control, '02_read')).toMatch(/ESCAPE planted-node OPEN/);
    } finally {
      await execa('losetup', ['--detach', loop]);
    }
  });

  it('refuses to mount through a symbolic link an earlier layer planted, and writes nothing on the host', async () => {
    const target = path.join(sb.dir, 'host-files', 'planted');
    await mkdir(target, { recursive: true });
    await chmod(target, 0o777);
    const dir = await writeProject(path.join(sb.dir, 'planted'), {
      '01_base': BUSYBOX_BASE,
      '02_plant': { kind: 'build-layer', script: `set -eu\nmkdir -p /var\nln -s ${target} /var/cache\nmv /etc /etc.real\nln -s ${target} /etc\necho planted` },
      '03_victim': { kind: 'build-layer', script: '# cache-mount /var/cache/apt\necho victim ran' },
    });
    const run = await buildJson(sb, dir);
    expect(run.exitCode).toBe(1);
    const failed = run.events.find((e) => e.type === 'layer-failed');
    expect(failed?.name).toBe('03_victim');
    expect(failed?.message).toMatch(/the image's \/etc is a symbolic link; the engine mounts on \/etc, so it must not be one/);
    expect(await readdir(target)).toEqual([]);
  });

  it("cannot see another build's files running at the same time on the host", async () => {
    const pair = await otherBuildPair(sb.dir);
    // The base first (both share it), then both layers at once.
    expect((await buildJson(sb, pair.a, ['--last', '01_base'])).exitCode).toBe(0);
    const [ra, rb] = await Promise.all([buildJson(sb, pair.a), buildJson(sb, pair.b)]);
    expect(ra.exitCode, ra.stderr).toBe(0);
    expect(rb.exitCode, rb.stderr).toBe(0);
    pair.expectIsolated(layerLog(ra, '02_secret'), layerLog(rb, '02_look'));
  });
});

describe('a well-behaved layer, sandboxed', () => {
  it('has outbound network (as apt needs), and none with # network none', async () => {
    const dir = await writeProject(path.join(sb.dir, 'net'), {
      '01_base': BUSYBOX_BASE,
      '02_online': {
        kind: 'build-layer',
        script: [
          'set -u',
          outbound ? `wget -q -O- ${outbound} | head -1` : 'echo no outbound check',
          'grep nameserver /etc/resolv.conf',
          'ip -o link | cut -d: -f2 | tr -d " " | sort | tr "\\n" " "; echo',
        ].join('\n'),
      },
      '03_offline': {
        kind: 'build-layer',
        script: [
          '# network none',
          'set -u',
          outbound ? `if wget -q -T 3 -O- ${outbound} >/dev/null 2>&1; then echo "offline: reached the mirror"; else echo "offline: no network"; fi` : 'echo offline: no network',
          'ip -o link | cut -d: -f2 | tr -d " " | sort | tr "\\n" " "; echo',
          'ip -o addr show lo | grep -q 127.0.0.1 && echo "offline: loopback up"',
        ].join('\n'),
      },
    });
    const run = await buildJson(sb, dir);
    expect(run.exitCode, run.stderr).toBe(0);
    const online = layerLog(run, '02_online');
    if (outbound) expect(online).toMatch(/^Origin: Debian$/m);
    // The host's resolvers answer through slirp4netns: the host's own resolv.conf (tools such as
    // mmdebstrap copy it into the image); a loopback or denied resolver gets slirp's forwarder.
    const hostResolvers = [...(await readFile('/etc/resolv.conf', 'utf8')).matchAll(/^nameserver\s+(\S+)/gm)].map((m) => m[1]!);
    const direct = hostResolvers.length > 0 && hostResolvers.every((r) => !/^127\.|^::1$/.test(r));
    expect(online).toMatch(direct ? new RegExp(`nameserver ${hostResolvers[0]!.replace(/\./g, '\\.')}`) : /nameserver 10\.0\.2\.3/);
    expect(online).toMatch(/^lo tap0 $/m);
    if (direct) {
      // Deny the host's resolvers (VMLB_SANDBOX_DENY): names still resolve, through slirp4netns' forwarder.
      const denied = await vmlb(sb, ['build', dir, '--json'], { VMLB_SANDBOX_DENY: hostResolvers.join(','), VMLB_STORE: path.join(sb.dir, 'store-deny') });
      expect(denied.exitCode, denied.stderr).toBe(0);
      expect(layerLog(denied, '02_online')).toMatch(/nameserver 10\.0\.2\.3/);
      if (outbound) expect(layerLog(denied, '02_online')).toMatch(/^Origin: Debian$/m);
    }
    const offline = layerLog(run, '03_offline');
    expect(offline).toMatch(/offline: no network/);
    expect(offline).toMatch(/^lo $/m);
    expect(offline).toMatch(/offline: loopback up/);
  });

  it('keeps a # cache-mount folder across builds, outside the image and the key', async () => {
    const dir = await writeProject(path.join(sb.dir, 'cache'), {
      '01_base': BUSYBOX_BASE,
      '02_cached': {
        kind: 'build-layer',
        script: ['# cache-mount /var/cache/things', '# nocache', 'set -eu', 'n=$(cat /var/cache/things/count 2>/dev/null || echo 0)', 'n=$((n + 1)); echo $n > /var/cache/things/count', 'chown 1000:1000 /var/cache/things/count', 'echo "count $n"'].join('\n'),
      },
    });
    const first = await buildJson(sb, dir);
    expect(first.exitCode, first.stderr).toBe(0);
    expect(layerLog(first, '02_cached')).toMatch(/count 1/);
    const second = await buildJson(sb, dir);
    expect(layerLog(second, '02_cached')).toMatch(/count 2/);
    // In the store (per store locally), owned as the layer chowned it; not in the image.
    const kept = (await readdir(path.join(sb.store, 'cache-mounts'))).filter((n) => n.startsWith('var_cache_things'));
    expect(kept).toHaveLength(1);
    expect(kept[0]).toMatch(/^var_cache_things-[0-9a-f]{8}$/);
    const count = path.join(sb.store, 'cache-mounts', kept[0]!, 'count');
    expect((await readFile(count, 'utf8')).trim()).toBe('2');
    expect(String((await execa('stat', ['-c', '%u:%g', count])).stdout)).toBe('1000:1000');
    const files = await readImageFiles(sb, path.join(dir, 'build/image.qcow2'), 1, ['/var/cache/things/count']);
    expect(files['/var/cache/things/count']).toBe('');
  });

  it('writes files with their owners on disk, and examples/hello is the same image as unsandboxed', async () => {
    const project = path.join(sb.dir, 'hello');
    await copyExample('hello', project);
    await writeProject(project, {
      '07_owners': { kind: 'build-layer', script: 'set -eu\ntouch /root-file /user-file\nchown 1000:1000 /user-file\nchown 0:0 /root-file\ncp -a /mnt/given /given\nstat -c "%n %u:%g" /root-file /user-file /given' , files: { given: 'from the layer folder\n' } },
    });
    const sandboxed = await buildJson(sb, project, ['-o', path.join(sb.dir, 'hello-sandboxed.qcow2')]);
    expect(sandboxed.exitCode, sandboxed.stderr).toBe(0);
    expect(layerLog(sandboxed, '07_owners')).toMatch(/\/root-file 0:0\n\/user-file 1000:1000\n\/given 0:0/);
    const plain = await vmlb(sb, ['build', project, '--json', '--no-sandbox', '-o', path.join(sb.dir, 'hello-unsandboxed.qcow2')], { VMLB_STORE: path.join(sb.dir, 'store-unsandboxed') });
    expect(plain.exitCode, plain.stderr).toBe(0);
    expect(builtNames(plain)).toHaveLength(7);
    const diff = await vmlb(sb, ['diff', path.join(sb.dir, 'hello-unsandboxed.qcow2'), path.join(sb.dir, 'hello-sandboxed.qcow2'), '--json']);
    expect(diff.exitCode, diff.stderr).toBe(0);
    const changes = (JSON.parse(diff.stdout) as { changes: Array<{ path: string; change: string; aspects: string[] }> }).changes;
    // Only the # nocache stamp (its date), nothing of owners, modes or other contents.
    expect(changes.map((c) => `${c.change} ${c.path} ${c.aspects.join(',')}`)).toEqual(['modified /etc/build-info content']);
    await rm(path.join(sb.dir, 'store-unsandboxed'), { recursive: true, force: true });
  });
});
