/**
 * `npm run test:nbd`: the nbd backend, run for real in a VM. This host has no nbd module; a
 * Debian VM with the cloud kernel (which ships nbd.ko) has. Steps:
 *
 * 1. Build the test-host image with vmlb itself, cached like any project, in
 *    VMLB_NBD_VM_DIR/store: examples/debian's base (01_base, its apt-get layer and 03_grow),
 *    the packages of host-image/packages, the host's own node (Debian 12's nodejs is 18), and
 *    host-image/05_setup (a unit that runs test/nbd-vm/guest.sh at boot, then powers off).
 * 2. Make the repository disk: this repository as it is (built, node_modules included; no
 *    .git), written into a fresh ext4 image with `mke2fs -d` (Debian 12 has no virtiofsd and the
 *    cloud kernel no 9p), label vmlb-repo.
 * 3. Boot: the image's own kernel and initrd, direct kernel boot, no network, the image through
 *    a throw-away snapshot and the repository disk writable; `systemd.unit=vmlb-nbd-check.service`.
 *    KVM when it works here, else software emulation (vmlb test-boot's choice). The guest says
 *    each step on the serial console (`vmlb-nbd: …`), streamed here.
 * 4. After power-off, read the results from the repository disk (mounted read-only):
 *    steps.tsv, the vitest JSON reports, bench.md; print a summary and the benchmark table;
 *    exit 1 when a step failed or a test failed or was skipped that must run, 0 otherwise.
 *
 *   VMLB_NBD_VM_DIR      state: the image store, the repository disk, the results  @default /var/tmp/vmlb-nbd-vm
 *   VMLB_NBD_VM_TIMEOUT  how long the VM may run, in minutes                        @default 75
 *   VMLB_NBD_VM_MEMORY   MiB                                                         @default 6144
 *   VMLB_NBD_VM_ACCEL    auto | kvm | tcg                                            @default auto
 *   VMLB_NBD_VM_ONLY     a development run: only the guest tests whose names match this
 *                        (vitest -t), no attach tests and no benchmark               @default unset
 */
import { execa } from 'execa';
import { chmod, copyFile, cp, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { bootVm, chooseBootMode, type AccelPreference } from '../../libs/layer-engine/src/index.js';

const REPO = fileURLToPath(new URL('../../', import.meta.url));
const HERE = fileURLToPath(new URL('./', import.meta.url));
const VMLB = path.join(REPO, 'apps/cli/bin/vmlb.js');
const STATE = process.env.VMLB_NBD_VM_DIR || '/var/tmp/vmlb-nbd-vm';
const TIMEOUT_MIN = Number(process.env.VMLB_NBD_VM_TIMEOUT || 75);
const MEMORY = Number(process.env.VMLB_NBD_VM_MEMORY || 6144);
const ACCEL = (process.env.VMLB_NBD_VM_ACCEL || 'auto') as AccelPreference;
const ONLY = process.env.VMLB_NBD_VM_ONLY || '';
/** Room on the repository disk for the guest's stores and temp dirs (sparse). */
const REPO_DISK_SIZE = '8G';

const say = (m: string) => process.stderr.write(`test:nbd: ${m}\n`);

/** The test-host project, assembled from examples/debian and host-image/ (same content, same keys). */
async function assembleProject(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  const deb = path.join(REPO, 'examples/debian');
  await cp(path.join(deb, '01_base'), path.join(dir, '01_base'), { recursive: true });
  await mkdir(path.join(dir, '02_packages'));
  await copyFile(path.join(deb, '02_packages/build-layer'), path.join(dir, '02_packages/build-layer'));
  await copyFile(path.join(HERE, 'host-image/packages'), path.join(dir, '02_packages/packages'));
  await cp(path.join(deb, '03_grow'), path.join(dir, '03_grow'), { recursive: true });
  await mkdir(path.join(dir, '04_node'));
  // The host's node binary: in the layer's folder, so in its key (a new node, a new layer).
  await copyFile(process.execPath, path.join(dir, '04_node/node'));
  await writeFile(
    path.join(dir, '04_node/build-layer'),
    '#!/bin/sh\n# The host\'s node (Debian 12\'s nodejs is 18; the project needs 20).\nset -eu\ninstall -m 0755 /mnt/node /usr/local/bin/node\nnode --version\n',
  );
  await chmod(path.join(dir, '04_node/build-layer'), 0o755);
  await cp(path.join(HERE, 'host-image/05_setup'), path.join(dir, '05_setup'), { recursive: true });
}

async function buildImage(project: string, store: string, out: string): Promise<void> {
  say(`building the test-host image (store ${store}; cached after the first run)`);
  const r = await execa(process.execPath, [VMLB, 'build', project, '--plain', '-o', out], {
    env: { ...process.env, VMLB_STORE: store, VMLB_RUN_DIR: path.join(STATE, 'run') },
    stdout: 'inherit',
    stderr: 'inherit',
    reject: false,
  });
  if (r.exitCode !== 0) throw new Error(`vmlb build of the test-host image failed (exit ${r.exitCode})`);
}

async function repositoryDisk(file: string): Promise<void> {
  const stage = path.join(STATE, 'repo-stage');
  await rm(stage, { recursive: true, force: true });
  await mkdir(stage, { recursive: true });
  say(`writing the repository disk ${file} (mke2fs -d)`);
  // The repository as it is here (its builds and node_modules), without .git and earlier results.
  await execa('sh', ['-c', `tar -C "$1" --exclude=./.git --exclude=./test-results --exclude=./.nbd-vm-results --exclude=./.nbd-vm-tmp --exclude=./.nbd-vm-only -cf - . | tar -C "$2" -xf -`, 'sh', REPO, stage]);
  if (ONLY) await writeFile(path.join(stage, '.nbd-vm-only'), ONLY);
  await rm(file, { force: true });
  await execa('mke2fs', ['-q', '-F', '-t', 'ext4', '-L', 'vmlb-repo', '-d', stage, file, REPO_DISK_SIZE]);
  await rm(stage, { recursive: true, force: true });
}

async function readResults(disk: string, into: string): Promise<void> {
  const mnt = path.join(STATE, 'mnt');
  await mkdir(mnt, { recursive: true });
  await execa('mount', ['-o', 'loop,ro', disk, mnt]);
  try {
    await rm(into, { recursive: true, force: true });
    if (existsSync(path.join(mnt, '.nbd-vm-results'))) await cp(path.join(mnt, '.nbd-vm-results'), into, { recursive: true });
  } finally {
    await execa('umount', [mnt]);
  }
}

interface VitestReport {
  numPassedTests: number;
  numFailedTests: number;
  numPendingTests: number;
  testResults: Array<{ name: string; assertionResults: Array<{ fullName: string; status: string; failureMessages?: string[] }> }>;
}

async function report(file: string): Promise<VitestReport | null> {
  return JSON.parse(await readFile(file, 'utf8').catch(() => 'null')) as VitestReport | null;
}

async function main(): Promise<number> {
  if (process.getuid?.() !== 0) {
    say('needs root (vmlb build attaches disks; the results disk is mounted)');
    return 2;
  }
  await mkdir(STATE, { recursive: true });
  const project = path.join(STATE, 'project');
  const image = path.join(STATE, 'host.qcow2');
  const disk = path.join(STATE, 'repo.img');
  const results = path.join(STATE, 'results');
  await assembleProject(project);
  await buildImage(project, path.join(STATE, 'store'), image);
  await repositoryDisk(disk);

  const scratch = path.join(STATE, 'boot');
  await rm(scratch, { recursive: true, force: true });
  await mkdir(scratch, { recursive: true });
  const boot = await chooseBootMode(image, { boot: 'kernel', scratch });
  say(`booting: ${boot.why}; no network; ${MEMORY} MiB, 2 CPUs; at most ${TIMEOUT_MIN} min`);
  let line = '';
  const steps: string[] = [];
  const vm = await bootVm({
    spec: {
      image,
      format: 'qcow2',
      boot,
      append: 'systemd.unit=vmlb-nbd-check.service systemd.show_status=0 loglevel=4',
      extraDrives: [{ file: disk, format: 'raw', writable: true }],
      memoryMiB: MEMORY,
      cpus: 2,
      network: { type: 'none' },
    },
    accel: ACCEL,
    timeoutMs: TIMEOUT_MIN * 60_000,
    onNotice: say,
    onConsole: (chunk) => {
      line += chunk.toString('utf8').replace(/\r/g, '');
      let nl: number;
      while ((nl = line.indexOf('\n')) >= 0) {
        const l = line.slice(0, nl);
        line = line.slice(nl + 1);
        const m = /vmlb-nbd: (.*)$/.exec(l);
        if (m) {
          process.stderr.write(`  guest: ${m[1]}\n`);
          steps.push(m[1]!);
        } else if (process.env.VMLB_NBD_VM_CONSOLE) process.stderr.write(`  console: ${l}\n`);
      }
    },
  });
  say(`the VM ${vm.outcome === 'exited' ? 'powered off' : 'was stopped at the timeout'} after ${vm.seconds.toFixed(0)} s (${vm.accel})`);
  await readResults(disk, results);

  const failures: string[] = [];
  if (vm.outcome !== 'exited') failures.push(`the VM did not finish within ${TIMEOUT_MIN} min`);
  if (!steps.includes('done')) failures.push(`the guest did not get to its end; last console lines:\n${vm.consoleTail}`);
  const tsv = await readFile(path.join(results, 'steps.tsv'), 'utf8').catch(() => '');
  const rows = tsv.trim().split('\n').filter(Boolean).map((l) => l.split('\t'));
  process.stdout.write('\n| step | exit | seconds |\n| --- | --- | --- |\n');
  for (const [name, rc, secs] of rows) {
    process.stdout.write(`| ${name} | ${rc} | ${secs} |\n`);
    if (rc !== '0') failures.push(`step ${name} exited ${rc} (log: ${path.join(results, `${name}.log`)})`);
  }
  const reports = ONLY ? ([['guest', /./]] as const) : ([['attach', /nbd backend/], ['guest', /./]] as const);
  for (const [name, mustRun] of reports) {
    const r = await report(path.join(results, `${name}.json`));
    if (!r) {
      failures.push(`no vitest report ${name}.json`);
      continue;
    }
    const all = r.testResults.flatMap((f) => f.assertionResults);
    const required = all.filter((a) => mustRun.test(a.fullName));
    process.stdout.write(`\n${name}: ${r.numPassedTests} passed, ${r.numFailedTests} failed, ${r.numPendingTests} skipped\n`);
    for (const a of all) process.stdout.write(`  ${a.status === 'passed' ? '✓' : a.status === 'failed' ? '✗' : '-'} ${a.fullName}\n`);
    if (required.length === 0) failures.push(`${name}: no test matching ${mustRun} ran`);
    for (const a of required) if (a.status !== 'passed') failures.push(`${name}: ${a.fullName}: ${a.status}${a.failureMessages?.length ? `\n${a.failureMessages.join('\n').slice(0, 2000)}` : ''}`);
    for (const a of all) if (a.status === 'failed' && !required.includes(a)) failures.push(`${name}: ${a.fullName}: failed`);
  }
  const bench = await readFile(path.join(results, 'bench.md'), 'utf8').catch(() => '');
  if (bench) process.stdout.write(`\nbenchmark (inside the VM, ${vm.accel}):\n${bench}\n`);
  else if (!ONLY) failures.push('no benchmark table (bench.md)');
  if (failures.length) {
    process.stdout.write(`\ntest:nbd: FAILED\n${failures.map((f) => `- ${f}`).join('\n')}\n`);
    return 1;
  }
  process.stdout.write(`\ntest:nbd: all passed (results in ${results})\n`);
  return 0;
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    process.stderr.write(`test:nbd: ${(e as Error).stack ?? String(e)}\n`);
    process.exit(1);
  },
);
