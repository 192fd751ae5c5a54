/**
 * The engine's overhead per layer: 10 `true` layers, sandboxed and not, vs the bare primitives
 * in a shell loop (bench/primitives.sh); and the same on nbd vs fuse.
 */
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { BENCH_DIR, progress, type BenchOptions, type Row } from './harness.js';
import { median, ratio, summary, times } from './numbers.js';
import { trivialLayers, trueLayer, writeLayer, writeProject } from './project-files.js';
import { run } from './run-command.js';
import { withSandbox, type Sandbox } from './sandbox.js';
import { blobPath, build, chainKeys, eventsOf, manifest } from './vmlb-run.js';

const OVERHEAD_LAYERS = 10;

/**
 * The measured project in the sandbox: a busybox base, built (not measured), and OVERHEAD_LAYERS
 * `true` layers over it; the first of them is the one a benchmark rewrites to rebuild them all.
 */
async function overheadProject(sb: Sandbox): Promise<{ project: string; firstName: string; baseKey: string }> {
  const layers = trivialLayers(OVERHEAD_LAYERS);
  const project = await writeProject(path.join(sb.dir, 'project'), layers);
  const [baseName] = layers[0]!;
  const [firstName] = layers[1]!;
  progress(`${sb.name}: building the base (not measured)`);
  const baseKey = chainKeys(await build(sb, project, 1, ['--last', baseName]))[0]!;
  return { project, firstName, baseKey };
}

/** Per-step milliseconds of the bare primitives (bench/primitives.sh), n iterations. */
async function primitives(sb: Sandbox, baseKey: string, n: number, into: Map<string, number[]>): Promise<void> {
  const m = await manifest(sb, baseKey);
  const work = path.join(sb.dir, 'primitives');
  await mkdir(work, { recursive: true });
  const r = await run(['bash', path.join(BENCH_DIR, 'primitives.sh'), blobPath(sb, baseKey), String(m.root.start), String(m.root.size), work, String(n)]);
  for (const line of r.stdout.trim().split('\n')) {
    for (const kv of line.trim().split(/\s+/)) {
      const [k, v] = kv.split('=');
      if (k && v) into.set(k, [...(into.get(k) ?? []), Number(v) * 1000]);
    }
  }
}

export async function overhead(o: BenchOptions): Promise<Row[]> {
  const reps = o.quick ? 1 : 5;
  const iterationsPerRep = o.quick ? 5 : 8;
  return withSandbox('overhead', async (sb) => {
    const { project, firstName, baseKey } = await overheadProject(sb);

    // Sandboxed (the default), unsandboxed (--no-sandbox) and the bare primitives take turns,
    // so that the machine's load (other builds, write-back) falls on all three alike.
    const wall = { sandboxed: [] as number[], unsandboxed: [] as number[] };
    const engine = { sandboxed: [] as number[], unsandboxed: [] as number[] };
    const steps = new Map<string, number[]>();
    for (let r = 0; r < reps; r++) {
      for (const mode of ['sandboxed', 'unsandboxed'] as const) {
        // A new comment in the first of the ten gives all ten new keys (the sandbox is not an
        // input of a key: each mode needs its own comment); the base stays a hit.
        await writeLayer(project, firstName, trueLayer(`rep ${r} ${mode}`));
        progress(`overhead: ${OVERHEAD_LAYERS} layers ${mode} and a no-op build (${r + 1}/${reps})`);
        const flags = mode === 'sandboxed' ? [] : ['--no-sandbox'];
        const full = await build(sb, project, OVERHEAD_LAYERS, flags);
        const noop = await build(sb, project, 0, flags);
        wall[mode].push((full.ms - noop.ms) / OVERHEAD_LAYERS);
        for (const e of eventsOf(full, 'layer-done')) engine[mode].push((e.seconds as number) * 1000);
      }
      progress(`overhead: ${iterationsPerRep} bare iterations (${r + 1}/${reps})`);
      await primitives(sb, baseKey, iterationsPerRep, steps);
    }

    const total = steps.get('total') ?? [];
    const primMs = median(total);
    const breakdown = [...steps.entries()]
      .filter(([k]) => k !== 'total')
      .map(([k, v]) => `${k} ${median(v).toFixed(0)}`)
      .join(', ');
    const cost = median(wall.sandboxed) - median(wall.unsandboxed);
    const engineCost = median(engine.sandboxed) - median(engine.unsandboxed);
    const title = 'engine overhead per layer';
    const what = `(wall of \`vmlb build\` of ${OVERHEAD_LAYERS} \`true\` layers, base cached − wall of a no-op build of the same project) ÷ ${OVERHEAD_LAYERS}; ${times(reps)}`;
    return [
      {
        benchmark: `${title}, sandboxed (the default)`,
        what,
        result: summary(wall.sandboxed, 0, 'ms / layer'),
        target: '≤ 150 ms / layer',
        ratio: `${ratio(median(wall.sandboxed), primMs)} primitives`,
      },
      {
        benchmark: `${title}, unsandboxed (\`--no-sandbox\`)`,
        what: `${what}, in turns with the sandboxed builds`,
        result: summary(wall.unsandboxed, 0, 'ms / layer'),
        target: '—',
        ratio: `${ratio(median(wall.unsandboxed), primMs)} primitives`,
      },
      {
        benchmark: `${title}: the sandbox's cost`,
        what: `sandboxed − unsandboxed, medians of the two rows above (the engine's own \`seconds\` per layer: ${median(engine.sandboxed).toFixed(0)} vs ${median(engine.unsandboxed).toFixed(0)} ms, +${engineCost.toFixed(0)} ms): user and network namespaces, idmapped mounts, slirp4netns, bwrap`,
        result: `+${cost.toFixed(0)} ms / layer`,
        target: '≤ 30 ms / layer',
        ratio: `${ratio(median(wall.sandboxed), median(wall.unsandboxed))} unsandboxed`,
      },
      {
        benchmark: `${title}: reference`,
        what: `the bare primitives in a shell loop (bench/primitives.sh), per iteration: qemu-img create overlay, qemu-storage-daemon FUSE export, losetup, mount, chroot true, umount, losetup -d, daemon stop; median of ${total.length} (ms: ${breakdown})`,
        result: summary(total, 0, 'ms'),
        target: '—',
        ratio: '',
      },
    ];
  });
}

// ---------------------------------------------------------------------------------------
// engine overhead per layer: nbd vs fuse (npm run test:nbd runs it inside its VM)

export async function backendOverhead(o: BenchOptions): Promise<Row[]> {
  const title = 'engine overhead per layer: nbd vs fuse';
  const { nbdBackend } = await import('../libs/layer-engine/src/disk/attach-nbd.js');
  const why = await nbdBackend.unavailableReason();
  if (why) return [{ benchmark: title, what: 'the same 10 `true` layers with `--backend nbd` and `--backend fuse`', result: `not measured: ${why} (npm run test:nbd measures it in a VM)`, target: '—', ratio: '' }];
  const reps = o.quick ? 1 : 3;
  return withSandbox('backend-overhead', async (sb) => {
    const { project, firstName } = await overheadProject(sb);
    const wall = { nbd: [] as number[], fuse: [] as number[] };
    const engine = { nbd: [] as number[], fuse: [] as number[] };
    for (let r = 0; r < reps; r++) {
      // The two take turns, so that the machine's load falls on both alike.
      for (const backend of ['nbd', 'fuse'] as const) {
        await writeLayer(project, firstName, trueLayer(`rep ${r} ${backend}`));
        progress(`backend-overhead: ${OVERHEAD_LAYERS} layers on ${backend} and a no-op build (${r + 1}/${reps})`);
        const flags = ['--backend', backend];
        const full = await build(sb, project, OVERHEAD_LAYERS, flags);
        const noop = await build(sb, project, 0, flags);
        wall[backend].push((full.ms - noop.ms) / OVERHEAD_LAYERS);
        for (const e of eventsOf(full, 'layer-done')) engine[backend].push((e.seconds as number) * 1000);
      }
    }
    const what = (b: string) =>
      `(wall of \`vmlb build --backend ${b}\` of ${OVERHEAD_LAYERS} \`true\` layers, base cached − wall of a no-op build) ÷ ${OVERHEAD_LAYERS}, sandboxed; ${times(reps)}, in turns (the engine's own seconds per layer: ${median(engine[b as 'nbd' | 'fuse']).toFixed(0)} ms)`;
    return [
      { benchmark: `${title} (nbd)`, what: what('nbd'), result: summary(wall.nbd, 0, 'ms / layer'), target: '—', ratio: `${ratio(median(wall.nbd), median(wall.fuse))} fuse` },
      { benchmark: `${title} (fuse)`, what: what('fuse'), result: summary(wall.fuse, 0, 'ms / layer'), target: '—', ratio: '1.00×' },
    ];
  });
}
