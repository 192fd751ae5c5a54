/**
 * `vmlb test-boot`: runs an image in qemu-system-x86_64 without changing it (-snapshot), with
 * its serial console streamed to the caller, and, as a smoke test, waits for a regular
 * expression on that console. The VM always ends: on a match, on the timeout, on an abort
 * (Ctrl-C), and — qemu is started with a parent-death signal — when this process dies.
 *
 * KVM is used when /dev/kvm opens *and* a guest actually runs under it: on some hosts the
 * device opens but qemu aborts (an MSR the host refuses) or the guest goes silent after the
 * real-mode setup code. So a KVM boot is a probe: if qemu dies or the console shows no kernel
 * output within a short deadline, the VM is stopped and booted again under TCG (software
 * emulation), and the result says which accelerator ran and why.
 */
import { open } from 'node:fs/promises';
import type { ResultPromise } from 'execa';
import type { BootMode } from './boot-media.js';
import { AbortedError, VmlbError, tail } from '../errors.js';
import { settled, spawnChild, stopChild } from '../host/exec.js';
import { qemuOptValue as qemuOpt } from '../host/qemu-img.js';

export type Accel = 'kvm' | 'tcg';
export type AccelPreference = 'auto' | Accel;

export type VmNetwork = { type: 'user'; sshPort?: number } | { type: 'bridge'; bridge: string } | { type: 'none' };

export interface VmSpec {
  image: string;
  /** qcow2 or raw. */
  format: string;
  boot: BootMode;
  /** Extra kernel command line for a direct kernel boot. */
  append?: string;
  /** A cloud-init seed disk (vfat, label CIDATA). */
  seed?: string;
  /**
   * More virtio disks after the image (and the seed), in order (vdb, vdc, … after them). A
   * `writable` one is written for real; the others, like the image, through a throw-away
   * snapshot (qemu's -snapshot, per drive when one is writable).
   */
  extraDrives?: Array<{ file: string; format: string; writable?: boolean }>;
  /** @default 1024 */
  memoryMiB?: number;
  /** @default 2 */
  cpus?: number;
  /** @default { type: 'user' } */
  network?: VmNetwork;
  /** The console is also the user's keyboard (stdin is a terminal): qemu's monitor is on Ctrl-A C. */
  interactive?: boolean;
}

export const QEMU_SYSTEM = 'qemu-system-x86_64';
/** How long a KVM boot may stay without kernel output before it is judged stuck. */
export const DEFAULT_KVM_PROBE_MS = 15_000;
/** Console output that shows a kernel (or a boot loader that loads one) is running. */
const ALIVE = /Linux version \d|\[\s*\d+\.\d+\] |GRUB|Booting |login: /;
const CONSOLE_WINDOW = 64 * 1024;
const STOP_GRACE_MS = 3000;

/** The kernel command line of a direct kernel boot: the image's root partition, the serial console. */
export function kernelCommandLine(rootPartition: number, extra?: string): string {
  const root = rootPartition > 0 ? `/dev/vda${rootPartition}` : '/dev/vda';
  return [`root=${root}`, 'ro', 'console=ttyS0,115200', extra].filter(Boolean).join(' ');
}

/** The qemu command line (pure: unit-tested). */
export function qemuArgv(spec: VmSpec, accel: Accel, qemu = QEMU_SYSTEM): string[] {
  // -snapshot applies to every drive, even one given snapshot=off: with a writable drive, each
  // other drive gets snapshot=on instead.
  const perDrive = spec.extraDrives?.some((d) => d.writable) ?? false;
  const snap = perDrive ? ',snapshot=on' : '';
  const argv = [qemu, '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot', ...(perDrive ? [] : ['-snapshot'])];
  argv.push('-accel', accel);
  // The host's CPU under KVM; under TCG the default model, which every guest kernel boots on.
  if (accel === 'kvm') argv.push('-cpu', 'host');
  argv.push('-m', String(spec.memoryMiB ?? 1024), '-smp', String(spec.cpus ?? 2));
  argv.push('-drive', `file=${qemuOpt(spec.image)},format=${spec.format},if=virtio${snap}`);
  if (spec.seed) argv.push('-drive', `file=${qemuOpt(spec.seed)},format=raw,if=virtio,readonly=on`);
  for (const d of spec.extraDrives ?? []) argv.push('-drive', `file=${qemuOpt(d.file)},format=${d.format},if=virtio${d.writable ? '' : snap}`);
  if (spec.boot.mode === 'kernel') {
    argv.push('-kernel', spec.boot.kernel);
    if (spec.boot.initrd) argv.push('-initrd', spec.boot.initrd);
    argv.push('-append', kernelCommandLine(spec.boot.rootPartition, spec.append));
  }
  const net = spec.network ?? { type: 'user' };
  if (net.type === 'user') {
    const fwd = net.sshPort ? `,hostfwd=tcp:127.0.0.1:${net.sshPort}-:22` : '';
    argv.push('-netdev', `user,id=net0${fwd}`, '-device', 'virtio-net-pci,netdev=net0');
  } else if (net.type === 'bridge') {
    argv.push('-netdev', `bridge,id=net0,br=${net.bridge}`, '-device', 'virtio-net-pci,netdev=net0');
  }
  // Interactive: the serial console and qemu's monitor share the terminal (Ctrl-A X quits,
  // Ctrl-A C is the monitor). Otherwise the console only, read from a pipe.
  argv.push('-serial', spec.interactive ? 'mon:stdio' : 'stdio');
  return argv;
}

/** Whether KVM can be tried here: the device (`/dev/kvm`) opens read-write. Not proof that it works. */
export async function kvmStatus(device = '/dev/kvm'): Promise<{ usable: boolean; reason: string }> {
  try {
    const fh = await open(device, 'r+');
    await fh.close();
    return { usable: true, reason: `${device} opens` };
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    return { usable: false, reason: code === 'ENOENT' ? `${device} does not exist` : `${device} cannot be opened (${code ?? (e as Error).message})` };
  }
}

export interface BootVmOptions {
  spec: VmSpec;
  /** @default 'auto': KVM when it works here, else TCG */
  accel?: AccelPreference;
  /** Smoke test: succeed as soon as the console shows this. */
  expect?: RegExp;
  /** Stop the VM after this long (with `expect`: fail). */
  timeoutMs?: number;
  /** @default DEFAULT_KVM_PROBE_MS */
  kvmProbeMs?: number;
  /** The qemu binary (the CLI: VMLB_QEMU). @default qemu-system-x86_64 */
  qemu?: string;
  /** The KVM device whose opening says KVM can be tried (the CLI: VMLB_KVM_DEVICE). @default /dev/kvm */
  kvmDevice?: string;
  /** Console output as qemu writes it (escape sequences included): for the terminal. */
  onConsole?: (chunk: Buffer) => void;
  /** qemu's own messages (stderr). */
  onQemuStderr?: (chunk: Buffer) => void;
  /** What the boot is doing: the accelerator chosen, a fall-back. */
  onNotice?: (message: string) => void;
  signal?: AbortSignal;
}

export interface BootVmResult {
  accel: Accel;
  /** Why that accelerator (e.g. `/dev/kvm does not exist`); see describeAccel. */
  accelWhy: string;
  /** matched: the console showed `expect`; exited: the VM ended by itself; stopped: the timeout without `expect`. */
  outcome: 'matched' | 'exited' | 'stopped';
  match?: string;
  exitCode?: number;
  seconds: number;
  /** The last console lines (escape sequences removed). */
  consoleTail: string;
  argv: string[];
}

/** The VM did not show what was expected: the timeout passed, or it ended first. */
export class BootCheckError extends VmlbError {
  readonly consoleTail: string;
  readonly accel: Accel;
  constructor(code: 'BOOT_TIMEOUT' | 'VM_EXITED', message: string, consoleTail: string, accel: Accel) {
    super(code, `${message}\n--- last lines of the console ---\n${consoleTail || '(nothing)'}`);
    this.consoleTail = consoleTail;
    this.accel = accel;
  }
}

type AttemptEnd =
  | { kind: 'matched'; text: string }
  | { kind: 'exited'; exitCode?: number; signal?: string; stderr: string }
  | { kind: 'timeout' }
  | { kind: 'stuck' }
  | { kind: 'aborted' };

/** Strips terminal escape sequences and carriage returns, for matching and for error messages. */
export function consoleText(raw: string): string {
  // eslint-disable-next-line no-control-regex
  return raw.replace(/\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>]/g, '').replace(/\r/g, '');
}

export async function bootVm(o: BootVmOptions): Promise<BootVmResult> {
  const started = performance.now();
  const qemu = o.qemu ?? QEMU_SYSTEM;
  const deadline = o.timeoutMs !== undefined ? started + o.timeoutMs : undefined;
  const notice = (m: string) => o.onNotice?.(m);

  let plan: Array<{ accel: Accel; probe: boolean }>;
  let why: string;
  const pref = o.accel ?? 'auto';
  if (pref === 'tcg') {
    plan = [{ accel: 'tcg', probe: false }];
    why = 'as asked (--accel tcg)';
  } else {
    const kvm = await kvmStatus(o.kvmDevice);
    if (pref === 'kvm') {
      if (!kvm.usable) throw new VmlbError('KVM_UNAVAILABLE', `--accel kvm: ${kvm.reason}`);
      plan = [{ accel: 'kvm', probe: false }];
      why = 'as asked (--accel kvm)';
    } else if (kvm.usable) {
      plan = [
        { accel: 'kvm', probe: true },
        { accel: 'tcg', probe: false },
      ];
      why = kvm.reason;
    } else {
      plan = [{ accel: 'tcg', probe: false }];
      why = kvm.reason;
    }
  }

  let consoleTail = '';
  for (const step of plan) {
    const probeNote = step.probe ? `; falling back to software emulation if the guest shows no kernel output within ${formatMs(o.kvmProbeMs ?? DEFAULT_KVM_PROBE_MS)}` : '';
    notice(`accelerator: ${describeAccel(step.accel, why)}${probeNote}`);
    const argv = qemuArgv(o.spec, step.accel, qemu);
    const r = await attempt(argv, {
      interactive: o.spec.interactive ?? false,
      expect: o.expect,
      deadline,
      probeMs: step.probe ? (o.kvmProbeMs ?? DEFAULT_KVM_PROBE_MS) : undefined,
      onConsole: o.onConsole,
      onQemuStderr: o.onQemuStderr,
      signal: o.signal,
    });
    consoleTail = tail(r.console, 30);
    const seconds = (performance.now() - started) / 1000;
    const base = { accel: step.accel, accelWhy: why, seconds, consoleTail, argv };
    const end = r.end;
    if (step.probe && (end.kind === 'stuck' || (end.kind === 'exited' && !r.alive))) {
      const what =
        end.kind === 'stuck'
          ? `the console showed no kernel output within ${formatMs(o.kvmProbeMs ?? DEFAULT_KVM_PROBE_MS)}`
          : `qemu exited with ${end.signal ?? end.exitCode}${end.stderr ? `: ${tail(end.stderr, 3).replace(/\n/g, ' | ')}` : ''}`;
      why = `a KVM boot failed here: ${what}`;
      notice(`KVM did not boot the guest (${what}); booting again under software emulation (tcg)`);
      continue;
    }
    switch (end.kind) {
      case 'matched':
        return { ...base, outcome: 'matched', match: end.text };
      case 'aborted':
        throw new AbortedError('test-boot was interrupted; the VM was stopped');
      case 'timeout':
        if (o.expect) {
          throw new BootCheckError('BOOT_TIMEOUT', `the console did not show /${o.expect.source}/ within ${formatMs(o.timeoutMs!)} (${step.accel}); the VM was stopped`, consoleTail, step.accel);
        }
        return { ...base, outcome: 'stopped' };
      case 'stuck': // a probe judged stuck is handled above; without a probe there is no deadline
      case 'exited': {
        const code = end.kind === 'exited' ? end.exitCode : undefined;
        if (o.expect) {
          const how = end.kind === 'exited' ? `exited with ${end.signal ?? end.exitCode}` : 'stopped';
          const qemuSaid = end.kind === 'exited' && end.stderr ? `\nqemu: ${tail(end.stderr, 5)}` : '';
          throw new BootCheckError('VM_EXITED', `the VM ${how} before the console showed /${o.expect.source}/ (${step.accel})${qemuSaid}`, consoleTail, step.accel);
        }
        if (end.kind === 'exited' && (end.exitCode ?? 1) !== 0) {
          throw new VmlbError('VM_FAILED', `${qemu} exited with ${end.signal ?? end.exitCode}${end.stderr ? `:\n${tail(end.stderr, 10)}` : ''}`);
        }
        return { ...base, outcome: 'exited', exitCode: code };
      }
    }
  }
  throw new VmlbError('INTERNAL', 'test-boot: no accelerator left to try');
}

/** `tcg (software emulation): /dev/kvm does not exist`, `kvm: /dev/kvm opens`. */
export function describeAccel(accel: Accel, why: string): string {
  return `${accel === 'kvm' ? 'kvm' : 'tcg (software emulation)'}: ${why}`;
}

function formatMs(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000} s` : `${(ms / 1000).toFixed(1)} s`;
}

/**
 * One qemu run, to its end: a match, its own exit, the deadline, a KVM probe that saw no
 * kernel, or an abort. qemu is always stopped and reaped before this returns.
 */
async function attempt(
  argv: string[],
  o: {
    interactive: boolean;
    expect?: RegExp;
    deadline?: number;
    probeMs?: number;
    onConsole?: (chunk: Buffer) => void;
    onQemuStderr?: (chunk: Buffer) => void;
    signal?: AbortSignal;
  },
): Promise<{ end: AttemptEnd; console: string; alive: boolean }> {
  let child: ResultPromise;
  try {
    child = spawnChild(['setpriv', '--pdeathsig', 'KILL', '--', ...argv], {
      describe: argv.join(' '),
      stdin: o.interactive ? 'inherit' : 'ignore',
      // A console on the user's terminal stays in the terminal's process group (qemu puts
      // the terminal in raw mode and restores it); otherwise Ctrl-C reaches only us, and we stop it.
      detached: !o.interactive,
      // execa's own default; stop() below SIGKILLs it sooner anyway.
      killGraceMs: 5000,
    });
  } catch (e) {
    throw new VmlbError('VM_START', `cannot start ${argv[0]}: ${(e as Error).message}`);
  }
  let text = '';
  let stderr = '';
  let alive = false;
  let finish!: (e: AttemptEnd) => void;
  const ended = new Promise<AttemptEnd>((resolve) => (finish = resolve));
  let done = false;
  const end = (e: AttemptEnd) => {
    if (done) return;
    done = true;
    finish(e);
  };

  child.stdout?.on('data', (chunk: Buffer) => {
    o.onConsole?.(chunk);
    text = (text + consoleText(chunk.toString('utf8'))).slice(-CONSOLE_WINDOW);
    if (!alive && ALIVE.test(text)) alive = true;
    if (o.expect) {
      const m = o.expect.exec(text);
      if (m) end({ kind: 'matched', text: m[0] });
    }
  });
  child.stderr?.on('data', (chunk: Buffer) => {
    // Once we stop it, qemu's "terminating on signal 15" is no news.
    if (!done) o.onQemuStderr?.(chunk);
    stderr = (stderr + chunk.toString('utf8')).slice(-CONSOLE_WINDOW);
  });
  const exited = settled(child) as Promise<{ exitCode?: number; signal?: string }>;
  void exited.then((r) => {
    // Let the last console bytes arrive before judging (a match in the final output counts).
    setImmediate(() => end({ kind: 'exited', exitCode: typeof r.exitCode === 'number' ? r.exitCode : undefined, signal: r.signal ?? undefined, stderr }));
  });

  const timers: NodeJS.Timeout[] = [];
  if (o.deadline !== undefined) timers.push(setTimeout(() => end({ kind: 'timeout' }), Math.max(0, o.deadline - performance.now())));
  if (o.probeMs !== undefined) {
    timers.push(
      setTimeout(() => {
        if (!alive) end({ kind: 'stuck' });
      }, o.probeMs),
    );
  }
  const onAbort = () => end({ kind: 'aborted' });
  if (o.signal?.aborted) onAbort();
  o.signal?.addEventListener('abort', onAbort, { once: true });

  const result = await ended;
  for (const t of timers) clearTimeout(t);
  o.signal?.removeEventListener('abort', onAbort);
  // SIGTERM (qemu quits cleanly and restores the terminal), then SIGKILL; always reaped.
  await stopChild(child, { exited, graceMs: STOP_GRACE_MS });
  return { end: result, console: text, alive };
}
