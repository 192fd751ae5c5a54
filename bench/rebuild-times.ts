/** Rebuilds: a no-op rebuild of 20 cached layers, and the last of 10 layers changed vs all 10 built. */
import path from 'node:path';
import { progress, type BenchOptions, type Row } from './harness.js';
import { median, ratio, secs, summary, times } from './numbers.js';
import { trivialLayers, trueLayer, writeLayer, writeProject } from './project-files.js';
import { withSandbox } from './sandbox.js';
import { build, doneEvent, eventsOf, vmlb } from './vmlb-run.js';

// ---------------------------------------------------------------------------------------
// no-op rebuild of a 20-layer project

export async function noop(o: BenchOptions): Promise<Row[]> {
  const reps = o.quick ? 3 : 5;
  return withSandbox('noop', async (sb) => {
    const project = await writeProject(path.join(sb.dir, 'project'), trivialLayers(19));
    progress('noop: building the 20 layers (not measured)');
    await build(sb, project, 20);
    const walls: number[] = [];
    const engine: number[] = [];
    const startup: number[] = [];
    for (let r = 0; r < reps; r++) {
      progress(`noop: no-op build ${r + 1}/${reps}`);
      const b = await build(sb, project, 0);
      walls.push(b.ms);
      engine.push(doneEvent(b).seconds as number);
      startup.push((await vmlb(sb, ['--version'])).ms);
    }
    return [
      {
        benchmark: 'no-op rebuild, 20 layers all cached',
        what: `wall of \`vmlb build --json\` (CLI start-up included), ${times(reps)} (engine's own \`done.seconds\` ${secs(median(engine))}; \`vmlb --version\` ${secs(median(startup) / 1000)})`,
        result: summary(walls.map((w) => w / 1000), 2, 's'),
        target: '≤ 0.5 s',
        ratio: '',
      },
    ];
  });
}

// ---------------------------------------------------------------------------------------
// incremental: the last of 10 layers changed vs all 10 from nothing

export async function incremental(o: BenchOptions): Promise<Row[]> {
  const reps = o.quick ? 1 : 5;
  const n = 10;
  return withSandbox('incremental', async (sb) => {
    const layers = trivialLayers(n);
    const project = await writeProject(path.join(sb.dir, 'project'), layers);
    const [baseName] = layers[0]!;
    const [firstName] = layers[1]!;
    const [lastName] = layers[n]!;
    progress('incremental: building the base (not measured)');
    await build(sb, project, 1, ['--last', baseName]);
    const full: number[] = [];
    const incr: number[] = [];
    const incrLayer: number[] = [];
    const incrEngine: number[] = [];
    for (let r = 0; r < reps; r++) {
      progress(`incremental: all ${n} layers, then the last one changed (${r + 1}/${reps})`);
      await writeLayer(project, firstName, trueLayer(`rep ${r}`));
      full.push((await build(sb, project, n)).ms);
      await writeLayer(project, lastName, trueLayer(`rep ${r} changed`));
      const b = await build(sb, project, 1);
      incr.push(b.ms);
      incrLayer.push(eventsOf(b, 'layer-done')[0]?.seconds as number);
      incrEngine.push(doneEvent(b).seconds as number);
    }
    const f = median(full);
    const i = median(incr);
    const title = `incremental, ${n} layers (base cached)`;
    return [
      {
        benchmark: title,
        what: `wall of \`vmlb build\`, all ${n} layers from nothing; ${times(reps)}`,
        result: summary(full.map((x) => x / 1000), 2, 's'),
        target: '—',
        ratio: '',
      },
      {
        benchmark: title,
        what: `wall of \`vmlb build\`, only the last layer's script changed; ${times(reps)} (that layer's own \`seconds\` ${secs(median(incrLayer))}; the engine's \`done.seconds\` ${secs(median(incrEngine))}; the rest is CLI start-up and exit)`,
        result: summary(incr.map((x) => x / 1000), 2, 's'),
        target: '—',
        ratio: `${ratio(i, f)} all ${n}`,
      },
    ];
  });
}
