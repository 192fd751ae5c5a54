/**
 * Runs inside the nbd test VM (test/nbd-vm/run.ts boots it; guest.sh runs this with
 * test/nbd-vm/vitest.config.ts), where the nbd module is loaded: the nbd backend for real.
 * Not part of `npm test` on the host (its name is not *.test.ts), which has no nbd module.
 *
 * - examples/hello (create-disk, build-layer with every hint, modify-disk adding a partition)
 *   with `--backend nbd`, read back;
 * - a project of the remaining kind, base-image (hello's flattened image), with a build-layer
 *   and a modify-disk on top;
 * - a modify-disk of the original tool's contract (`# args source target device`) run as it
 *   is, growing a busybox disk, with a build-layer on top; and one that attacks the
 *   connect the run does for it (another device, a file outside its folder, a link, a
 *   backing file of its own choosing, an external data file): each refused;
 * - a worker with the nbd backend and no VMLB_WORKER_SLOTS (slots = free nbd devices) against
 *   a fleet in the VM (redis-server, s3rver), building hello through the queue, flatten included.
 * After each: no nbd device left connected, no loop device, mount or daemon left.
 */
import { readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { freeNbdDevices } from '../../apps/worker/src/slots.js';
import { readEvents } from '../../libs/fleet/src/event-stream.js';
import { redisKeys } from '../../libs/fleet/src/names.js';
import type { FleetEvent } from '../../libs/fleet/src/build-record.js';
import type { WorkerRegistration } from '../../libs/fleet/src/workers-registry.js';
import { fleetClients, startFleetServices, type FleetClients, type FleetServices } from '../helpers/fleet-services.js';
import { submitProject } from '../helpers/fleet-submit.js';
import { startWorkerProcess, workerLogs, type WorkerProcess } from '../helpers/worker-process.js';
import { BUSYBOX_BASE, buildJson, builtNames, layerLog, leftovers, readImageFiles, sandbox, sha256sum, writeProject, type Sandbox, type VmlbRun, copyExample } from '../helpers/vmlb.js';
import { GROW, withArgsHint } from '../helpers/original-tool.js';

/** A failed build's stderr and the log of the layer that failed (the VM's temp dirs do not come back). */
function why(r: VmlbRun): string {
  const failed = r.events.find((e) => e.type === 'layer-failed') as { name?: string } | undefined;
  return `${r.stderr}${failed?.name ? `\n--- ${failed.name} printed ---\n${layerLog(r, failed.name).slice(-4000)}` : ''}`;
}

/** nbd devices a qemu-nbd serves now (`/sys/block/nbdN/pid` exists while one does). */
async function connectedNbd(): Promise<string[]> {
  const names = (await readdir('/sys/block')).filter((n) => /^nbd\d+$/.test(n));
  const served: string[] = [];
  for (const n of names) if (await stat(`/sys/block/${n}/pid`).then(() => true, () => false)) served.push(n);
  return served;
}

let sb: Sandbox;
let hello: string;
beforeAll(async () => {
  sb = await sandbox('nbd-guest');
  hello = path.join(sb.dir, 'hello');
  await copyExample('hello', hello);
});
afterEach(async () => {
  expect(await connectedNbd()).toEqual([]);
  expect(await leftovers(sb)).toEqual([]);
});
afterAll(async () => {
  await sb?.cleanup();
});

describe('the nbd backend, in a VM with the nbd module', () => {
  it('the module is loaded with max_part=16 and every device is free', async () => {
    // The kernel keeps 2^k - 1 partitions per device, k the bits of the number asked for:
    // max_part=16 reads back as 31 (nbd_init: part_shift = fls(max_part)).
    expect((await readFile('/sys/module/nbd/parameters/max_part', 'utf8')).trim()).toBe('31');
    expect(await freeNbdDevices()).toBeGreaterThan(0);
    expect(await connectedNbd()).toEqual([]);
  });

  it('builds examples/hello with --backend nbd: all six layers, the new data partition read back', async () => {
    const r = await buildJson(sb, hello, ['--backend', 'nbd', '--plain']);
    expect(r.exitCode, why(r)).toBe(0);
    expect(builtNames(r)).toEqual(['01_base', '02_motd', '03_grow', '04_data', '05_app', '06_stamp']);
    const image = path.join(hello, 'build/image.qcow2');
    const root = await readImageFiles(sb, image, 1, ['/etc/motd', '/usr/local/bin/hello']);
    expect(root['/etc/motd']).toContain('Welcome to the vm-layer-builder hello image.');
    expect(root['/usr/local/bin/hello']).toContain('hello from');
    const data = await readImageFiles(sb, image, 2, ['/hello.txt']);
    expect(data['/hello.txt']).toBe('data written by 04_data');
  });

  it('builds on a base-image (hello flattened), with a build-layer and a modify-disk on top, with --backend nbd', async () => {
    const flat = path.join(sb.dir, 'hello-flat.qcow2');
    const f = await buildJson(sb, hello, ['--backend', 'nbd', '--flatten', '-o', flat]);
    expect(f.exitCode, why(f)).toBe(0);
    const sha = await sha256sum(flat);
    const p = await writeProject(path.join(sb.dir, 'on-base'), {
      '01_base': { kind: 'base-image', script: `source: ${flat}\nsha256: ${sha}` },
      '02_note': { kind: 'build-layer', script: 'cat /etc/hostname > /etc/from-base; echo on nbd >> /etc/from-base' },
      '03_grow': {
        kind: 'modify-disk',
        script: '# disk-size 320M\nset -eu\ngrowpart "$VMLB_DEVICE" 1 || [ $? -eq 1 ]\nroot=$(vmlb-partition 1)\ne2fsck -fy "$root" >/dev/null || [ $? -le 1 ]\nresize2fs "$root"\necho "grew $(basename "$root")"',
      },
    });
    const r = await buildJson(sb, p, ['--backend', 'nbd']);
    expect(r.exitCode, why(r)).toBe(0);
    expect(builtNames(r)).toEqual(['01_base', '02_note', '03_grow']);
    // The partition came from the kernel's view of the nbd device (the sandbox gets it as /dev/vmlb/NAME).
    expect(layerLog(r, '03_grow')).toMatch(/grew nbd\d+p1\b/);
    const image = path.join(p, 'build/image.qcow2');
    const info = JSON.parse(String((await execa('qemu-img', ['info', '-U', '--output=json', image])).stdout)) as { 'virtual-size': number };
    expect(info['virtual-size']).toBe(320 * 1024 * 1024);
    const files = await readImageFiles(sb, image, 1, ['/etc/from-base']);
    expect(files['/etc/from-base']).toBe('hello\non nbd');
  });
});

describe("the original tool's modify-disk contract, on the nbd backend", () => {
  it('a modify-disk that says "# args source target device" runs as it is: it makes, connects and grows its overlay, and a build-layer sees the grown filesystem', async () => {
    const p = await writeProject(path.join(sb.dir, 'original'), {
      '01_base': BUSYBOX_BASE,
      '05_resize': { kind: 'modify-disk', script: withArgsHint(GROW) },
      '10_note': { kind: 'build-layer', script: "df -k / | awk 'NR == 2 { print $2 }' > /etc/root-kib; echo on top > /etc/on-top" },
    });
    const r = await buildJson(sb, p, ['--backend', 'nbd']);
    expect(r.exitCode, why(r)).toBe(0);
    expect(builtNames(r)).toEqual(['01_base', '05_resize', '10_note']);
    // growpart, e2fsck and resize2fs of "${device}p1": the device the script was given.
    expect(layerLog(r, '05_resize')).toMatch(/The filesystem on \/dev\/nbd\d+p1 is now \d+ \(\d+k\) blocks long/);
    const image = path.join(p, 'build/image.qcow2');
    const info = JSON.parse(String((await execa('qemu-img', ['info', '-U', '--output=json', image])).stdout)) as { 'virtual-size': number };
    expect(info['virtual-size']).toBe(128 * 1024 * 1024);
    const files = await readImageFiles(sb, image, 1, ['/etc/root-kib', '/etc/on-top']);
    expect(files['/etc/on-top']).toBe('on top');
    // The 64 MiB base's filesystem is about 60000 KiB; grown into 128 MiB, about twice that.
    expect(Number(files['/etc/root-kib'])).toBeGreaterThan(100_000);
    // Built again: all hits, the overlay is a layer like any other.
    const again = await buildJson(sb, p, ['--backend', 'nbd']);
    expect(again.exitCode, why(again)).toBe(0);
    expect(builtNames(again)).toEqual([]);
  });

  it('refuses what a hostile script asks of the connect: another device, a file outside its folder, a link, its own backing file, an external data file', async () => {
    const attack = `#!/bin/sh
# args source target device
source=$1 target=$2 device=$3
dir=\${target%/*}
try() { # WHAT COMMAND...
  what=$1; shift
  if "$@" > "$dir/out" 2>&1; then echo "ESCAPED: $what"; else echo "refused: $what: $(cat "$dir/out")"; fi
  rm -f "$target"
}
qemu-img create -q -f qcow2 -b "$source" -F qcow2 "$target" 128M
other=/dev/nbd$(( \${device#/dev/nbd} + 1 ))
try "another device" qemu-nbd --connect="$other" "$target"
try "a file outside" qemu-nbd --connect="$device" /etc/hostname
ln -s "$source" "$target"
try "a link" qemu-nbd --connect="$device" "$target"
qemu-img create -q -f qcow2 -b /etc/hostname -F raw "$target" 128M
try "its own backing file" qemu-nbd --connect="$device" "$target"
qemu-img create -q -f qcow2 -b "$source" -F qcow2 -o data_file="$dir/data.raw" "$target" 128M
try "an external data file" qemu-nbd --connect="$device" "$target"
exit 0
`;
    const p = await writeProject(path.join(sb.dir, 'original-attack'), {
      '01_base': BUSYBOX_BASE,
      '05_attack': { kind: 'modify-disk', script: attack },
    });
    const r = await buildJson(sb, p, ['--backend', 'nbd']);
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toContain('05_attack: the script (# args source target device) exited 0 without connecting its target');
    const log = layerLog(r, '05_attack');
    expect(log).not.toContain('ESCAPED');
    expect(log).toMatch(/refused: another device: qemu-nbd: this run may connect \/dev\/nbd\d+ \(the device it was given\) only/);
    expect(log).toMatch(/refused: a file outside: qemu-nbd: the sandbox connects only a file of \S+, the folder of its target \(refused: \/etc\/hostname\)/);
    expect(log).toContain('refused: a link: qemu-nbd: ');
    expect(log).toMatch(/refused: a link: qemu-nbd: \S+ is not a regular file/);
    expect(log).toMatch(/refused: its own backing file: qemu-nbd: the backing file of \S+ must be the source it was given \(\S+\), not \/etc\/hostname/);
    expect(log).toMatch(/refused: an external data file: qemu-nbd: \S+ names an external data file/);
  });
});

describe('a fleet worker with the nbd backend', () => {
  let services: FleetServices;
  let clients: FleetClients;
  let worker: WorkerProcess | undefined;
  beforeAll(async () => {
    services = await startFleetServices('nbd-fleet');
    clients = fleetClients(services);
  });
  afterAll(async () => {
    if (worker && worker.child.exitCode === null) await worker.stop();
    await clients?.close();
    await services?.close();
  });

  it('has as many slots as free nbd devices, and builds hello through the queue, flatten included', async () => {
    const free = await freeNbdDevices();
    // No VMLB_WORKER_SLOTS: the worker counts the free devices itself.
    worker = startWorkerProcess({
      name: 'nbd',
      dir: services.sb.dir,
      redisUrl: services.redis.url,
      sharedUrl: services.sharedUrl,
      s3env: services.s3.env,
      env: { VMLB_BACKEND: 'nbd', VMLB_WORKER_SLOTS: '' },
    });
    const deadline = Date.now() + 180_000;
    let reg: WorkerRegistration | null = null;
    while (!reg) {
      const text = await clients.redis.get(redisKeys.worker(worker.id));
      if (text) reg = JSON.parse(text) as WorkerRegistration;
      else if (Date.now() > deadline) throw new Error(`the worker did not register:\n${workerLogs([worker])}`);
      else await new Promise((r) => setTimeout(r, 200));
    }
    expect(reg.backend).toBe('nbd');
    expect(reg.slots).toBe(free);

    const b = await submitProject(hello, { redisUrl: services.redis.url, shared: clients.shared });
    for (;;) {
      const state = await (await clients.flattenQueue.getJob(b.flattenJobId))?.getState();
      if (state === 'completed') break;
      if (state === 'failed' || Date.now() > deadline + 600_000) throw new Error(`build ${b.buildId}: ${state}\n${workerLogs([worker])}`);
      await new Promise((r) => setTimeout(r, 500));
    }
    const events = (await readEvents(clients.redis, b.buildId, '0', { count: 100_000 })).map((e) => e.event as FleetEvent);
    const built = events.filter((e) => e.type === 'job' && e.status === 'done' && e.seconds !== undefined).map((e) => (e as { index: number }).index);
    expect(built.sort()).toEqual([0, 1, 2, 3, 4, 5]);
    expect(await clients.shared.getManifest(b.chain[4]!)).toBeNull(); // 05_app is # noshare
    expect(await clients.shared.getManifest(b.chain[3]!)).not.toBeNull();
    await worker.stop();
    expect(await connectedNbd()).toEqual([]);
  });
});
