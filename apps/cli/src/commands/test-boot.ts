import { type Command, InvalidArgumentError, Option } from 'commander';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { bootVm, chooseBootMode, describeAccel, formatSeconds, imageInfo, makeSeedImage, seedFromFiles, type VmNetwork } from '@vmlb/layer-engine';
import { backendOption, durationArg, failsAsInterrupted, intArg, interruptSignal, projectOption, sizeArg, storeFrom, storeOption } from '../cli-options.js';
import { resolveImageArg } from '../image-arg.js';
import { sweepFirst } from '../sweep-first.js';

function regexArg(v: string): RegExp {
  try {
    return new RegExp(v);
  } catch (e) {
    throw new InvalidArgumentError((e as Error).message);
  }
}

/** A TCP port free on 127.0.0.1 right now, for the guest's ssh. */
async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

/**
 * `vmlb test-boot [IMAGE]`: boots an image in qemu without changing it, its serial console on
 * the terminal; with --expect, a smoke test. Ctrl-C stops the VM and releases its disks.
 */
export function registerTestBoot(program: Command): void {
  program
    .command('test-boot')
    .description(
      'boot an image in qemu without changing it (-snapshot), its serial console on the terminal; with --expect, a smoke test that ends as soon as the console shows REGEX',
    )
    .argument('[image]', 'an image file, a layer name (NN_name, its last build in the project) or a layer key (default: the project\'s build/image.qcow2)')
    .addOption(projectOption())
    .addOption(storeOption())
    .addOption(new Option('--expect <regex>', 'exit 0 as soon as the console shows this (a JavaScript regular expression)').argParser(regexArg))
    .addOption(new Option('--timeout <duration>', 'stop the VM after this long (with --expect: fail, printing the console\'s last lines)').argParser(durationArg))
    .addOption(new Option('--accel <name>', 'auto: KVM when it boots a guest here, else software emulation').choices(['auto', 'kvm', 'tcg']).default('auto').env('VMLB_ACCEL'))
    .addOption(new Option('--kvm-probe <duration>', 'how long a KVM boot may show no kernel output before falling back to tcg').argParser(durationArg).default(15_000, '15s'))
    .addOption(new Option('--boot <how>', 'disk: the image\'s boot loader; kernel: the kernel and initramfs in its /boot; auto: disk when it has a boot loader').choices(['auto', 'disk', 'kernel']).default('auto'))
    .option('--append <args>', 'more kernel command line for a kernel boot (after root=/dev/vdaN ro console=ttyS0)')
    .option('--user-data <file>', 'cloud-init user-data for the NoCloud seed (default: an empty #cloud-config)')
    .option('--meta-data <file>', 'cloud-init meta-data for the seed (default: a fresh instance-id)')
    .option('--network-config <file>', 'cloud-init network-config for the seed')
    .option('--no-seed', 'attach no cloud-init seed disk')
    .option('--bridge <name>', 'connect the VM to this host bridge (qemu-bridge-helper) instead of user-mode networking')
    .option('--no-network', 'no network device')
    .addOption(new Option('--ssh-port <port>', 'forward this 127.0.0.1 port to the guest\'s port 22 (user-mode networking; default: a free one)').argParser(intArg))
    .addOption(new Option('--memory <size>', 'guest memory').argParser(sizeArg).default(1024 ** 3, '1G'))
    .addOption(new Option('--cpus <n>', 'virtual CPUs').argParser(intArg).default(2))
    .option('-q, --quiet', 'do not copy the console to the terminal')
    .addOption(backendOption())
    .action(
      failsAsInterrupted(async (ref: string | undefined, o) => {
        const store = storeFrom(o);
        const img = await resolveImageArg(ref, { projectDir: o.project, store });
        const signal = interruptSignal({ doing: 'stopping the VM' });
        const say = (m: string) => process.stderr.write(`test-boot: ${m}\n`);
        const scratch = await mkdtemp(path.join(os.tmpdir(), 'vmlb-boot-'));
        try {
          await sweepFirst();
          const info = await imageInfo(img.file, { signal });
          const boot = await chooseBootMode(img.file, { boot: o.boot, scratch, backend: o.backend, signal });
          say(`booting ${img.label} — ${boot.mode === 'disk' ? 'from its boot loader' : 'direct kernel boot'} (${boot.why})`);
          let seed: string | undefined;
          if (o.seed !== false) {
            seed = path.join(scratch, 'seed.img');
            await makeSeedImage(seed, await seedFromFiles({ userData: o.userData, metaData: o.metaData, networkConfig: o.networkConfig }), { signal });
          }
          let network: VmNetwork;
          if (o.network === false) network = { type: 'none' };
          else if (o.bridge) network = { type: 'bridge', bridge: o.bridge };
          else {
            network = { type: 'user', sshPort: o.sshPort ?? (await freePort()) };
            say(`user-mode networking; the guest's ssh is at 127.0.0.1:${network.sshPort}`);
          }
          const interactive = !o.expect && process.stdin.isTTY === true && !o.quiet;
          if (interactive) say('the console is this terminal: Ctrl-A X stops the VM, Ctrl-A C is qemu\'s monitor');
          const r = await bootVm({
            spec: {
              image: img.file,
              format: info.format,
              boot,
              append: o.append,
              seed,
              memoryMiB: Math.max(64, Math.round(o.memory / 1024 ** 2)),
              cpus: Math.max(1, o.cpus),
              network,
              interactive,
            },
            accel: o.accel,
            // Test doubles of qemu and of the KVM device (test/test-boot.test.ts) come in by name.
            qemu: process.env.VMLB_QEMU || undefined,
            kvmDevice: process.env.VMLB_KVM_DEVICE || undefined,
            expect: o.expect,
            timeoutMs: o.timeout ?? (o.expect ? 5 * 60_000 : undefined),
            kvmProbeMs: o.kvmProbe,
            onConsole: o.quiet ? undefined : (c) => process.stdout.write(c),
            onQemuStderr: (c) => process.stderr.write(c),
            onNotice: say,
            signal,
          });
          if (!o.quiet) process.stdout.write('\n');
          const accel = `accelerator ${describeAccel(r.accel, r.accelWhy)}`;
          if (r.outcome === 'matched') say(`the console showed ${JSON.stringify(r.match)} after ${formatSeconds(r.seconds)} (${accel})`);
          else if (r.outcome === 'stopped') say(`stopped the VM after ${formatSeconds(r.seconds)} (${accel})`);
          else say(`the VM ended after ${formatSeconds(r.seconds)} (${accel})`);
        } finally {
          await rm(scratch, { recursive: true, force: true });
        }
      }),
    );
}
