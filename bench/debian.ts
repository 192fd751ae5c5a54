/**
 * The Debian example (examples/debian) in a fresh store, sandboxed (the default): the first
 * build (mmdebstrap, a kernel, systemd — from the host's apt sources), a no-op rebuild and an
 * edit of the last cached layer, side by side, the edit also unsandboxed; a boot to the marker a layer wrote, under KVM where a guest boots under it and
 * under software emulation; and `vmlb diff` of two of its layers.
 */
import { appendFile, cp, open } from 'node:fs/promises';
import path from 'node:path';
import { progress, REPO, VMLB, type BenchOptions, type Row } from './harness.js';
import { median, ratio, secs, summary, times } from './numbers.js';
import { run } from './run-command.js';
import { withSandbox } from './sandbox.js';
import { build, eventsOf, vmlb } from './vmlb-run.js';

/** Why KVM cannot be measured here, or null when /dev/kvm opens. */
async function kvmUnusable(): Promise<string | null> {
  try {
    await (await open('/dev/kvm', 'r+')).close();
    return null;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ENOENT' ? '/dev/kvm does not exist on this host' : `/dev/kvm cannot be opened (${(e as NodeJS.ErrnoException).code})`;
  }
}

export async function debian(o: BenchOptions): Promise<Row[]> {
  const reps = o.quick ? 1 : 3;
  return withSandbox('debian', async (sb) => {
    const project = path.join(sb.dir, 'debian');
    await cp(path.join(REPO, 'examples/debian'), project, { recursive: true, filter: (s) => path.basename(s) !== 'build' });
    progress('debian: first build, empty store (mmdebstrap from the host\'s apt sources; a few minutes)');
    const first = await build(sb, project, 6);
    const layerSecs = Object.fromEntries(eventsOf(first, 'layer-done').map((e) => [e.name as string, e.seconds as number]));

    const noop: number[] = [];
    const edit: number[] = [];
    const editLayer: number[] = [];
    const editPlain: number[] = [];
    for (let r = 0; r < Math.max(reps, 3); r++) {
      progress(`debian: no-op rebuild, then 05_config edited, sandboxed and --no-sandbox (${r + 1})`);
      // Only the # nocache stamp is built on a no-op rebuild.
      noop.push((await build(sb, project, 1)).ms);
      await appendFile(path.join(project, '05_config/files/issue'), `edit ${r}\n`);
      const b = await build(sb, project, 2);
      edit.push(b.ms);
      editLayer.push(eventsOf(b, 'layer-done').find((e) => e.name === '05_config')?.seconds as number);
      // The same edit unsandboxed, on the same cached chain (the sandbox is not in a key).
      await appendFile(path.join(project, '05_config/files/issue'), `edit ${r} unsandboxed\n`);
      editPlain.push((await build(sb, project, 2, ['--no-sandbox'])).ms);
    }

    const boot = async (accel: 'tcg' | 'auto') => {
      const r = await run([process.execPath, VMLB, 'test-boot', '-C', project, '--accel', accel, '--expect', 'vmlb-debian: ready', '--timeout', '10m', '--quiet'], {
        env: { ...process.env, ...sb.env, CI: '1' },
        stopSignal: 'SIGINT',
      });
      const m = /after ([\d.]+)s/.exec(r.stderr);
      return { seconds: m ? Number(m[1]) : r.ms / 1000, accel: /accelerator (kvm|tcg)/.exec(r.stderr)?.[1] ?? '?', stderr: r.stderr };
    };
    const tcg: number[] = [];
    const bootReps = o.quick ? 1 : 2;
    for (let r = 0; r < bootReps; r++) {
      progress(`debian: boot to the marker under software emulation (${r + 1}/${bootReps})`);
      tcg.push((await boot('tcg')).seconds);
    }
    const noKvm = await kvmUnusable();
    let kvmRow: Row;
    if (noKvm) {
      kvmRow = { benchmark: 'Debian example: boot to the marker', what: 'under KVM (`--accel auto` where /dev/kvm works)', result: `not measured: ${noKvm}`, target: '—', ratio: '' };
    } else {
      progress('debian: boot to the marker with --accel auto (KVM, or the fall-back to tcg)');
      const k = await boot('auto');
      kvmRow = {
        benchmark: 'Debian example: boot to the marker',
        what: `\`--accel auto\`: KVM when a guest boots under it (/dev/kvm opens here); ran under ${k.accel}${k.accel === 'tcg' ? ' after the KVM probe failed (probe time included)' : ''}; one run`,
        result: `${k.seconds.toFixed(1)} s`,
        target: '—',
        ratio: k.accel === 'kvm' ? ratio(k.seconds, median(tcg)) + ' tcg' : '',
      };
    }

    const diffs: number[] = [];
    for (let r = 0; r < reps; r++) {
      progress(`debian: vmlb diff 01_base 02_packages (${r + 1}/${reps})`);
      diffs.push((await vmlb(sb, ['diff', '01_base', '02_packages', '-C', project])).ms);
    }
    const diffOut = await run([process.execPath, VMLB, 'diff', '01_base', '02_packages', '-C', project], { env: { ...process.env, ...sb.env, CI: '1' } });
    const changed = diffOut.stdout.trim().split('\n').length;

    const f = first.ms / 1000;
    const title = 'Debian example (examples/debian, 6 layers)';
    return [
      {
        benchmark: title,
        what: `first build, empty store, sandboxed: wall of \`vmlb build\` (01_base mmdebstrap ${secs(layerSecs['01_base'] ?? NaN)}, 02_packages apt-get ${secs(layerSecs['02_packages'] ?? NaN)}, the other four ${secs(['03_grow', '04_user', '05_config', '06_stamp'].reduce((s, n) => s + (layerSecs[n] ?? 0), 0))}); one run`,
        result: `${f.toFixed(1)} s`,
        target: '—',
        ratio: '',
      },
      {
        benchmark: title,
        what: `no-op rebuild (5 cached, the # nocache stamp built): wall; ${times(noop.length)} (the engine's \`done.seconds\` included)`,
        result: summary(noop.map((x) => x / 1000), 2, 's'),
        target: 'seconds',
        ratio: `${ratio(median(noop) / 1000, f)} first`,
      },
      {
        benchmark: title,
        what: `05_config (the last cached layer) edited, sandboxed: 05_config and the stamp built, 4 cached; wall; ${times(edit.length)} (05_config's own \`seconds\` ${secs(median(editLayer))})`,
        result: summary(edit.map((x) => x / 1000), 2, 's'),
        target: 'seconds, not the base\'s minute',
        ratio: `${ratio(median(edit) / 1000, f)} first`,
      },
      {
        benchmark: title,
        what: `the same edit with \`--no-sandbox\`, in turns with the sandboxed one; wall; ${times(editPlain.length)}`,
        result: summary(editPlain.map((x) => x / 1000), 2, 's'),
        target: '—',
        ratio: `${ratio(median(edit), median(editPlain))} (sandboxed ÷ this)`,
      },
      {
        benchmark: 'Debian example: boot to the marker',
        what: `\`vmlb test-boot --accel tcg --expect 'vmlb-debian: ready'\` (software emulation, 2 vCPU, 1 GiB, direct kernel boot from the image's /boot, -snapshot): seconds from qemu's start to the marker a layer's systemd unit prints; ${times(tcg.length)}`,
        result: summary(tcg, 1, 's'),
        target: '—',
        ratio: '',
      },
      kvmRow,
      {
        benchmark: 'vmlb diff of two Debian layers',
        what: `wall of \`vmlb diff 01_base 02_packages\` (${changed} paths differ; both images attached and mounted read-only, both trees walked); ${times(diffs.length)}`,
        result: summary(diffs.map((x) => x / 1000), 2, 's'),
        target: 'seconds',
        ratio: '',
      },
    ];
  });
}
