/** A 1 GiB layer: a hit on it vs on a 10 MiB one, and --flatten of its chain vs a bare qemu-img convert. */
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { progress, type BenchOptions, type Row } from './harness.js';
import { median, ratio, secs, summary, times } from './numbers.js';
import { busyboxBase, writeProject, type LayerDef } from './project-files.js';
import { run } from './run-command.js';
import { withSandbox } from './sandbox.js';
import { blobPath, build, chainKeys, eventsOf, sync } from './vmlb-run.js';

// ---------------------------------------------------------------------------------------
// a hit on a 1 GiB layer vs a hit on a 10 MiB layer

/** A busybox base on a 2 GiB disk and a layer that writes `mib` MiB of random data. */
function dataProject(mib: number): Array<[string, LayerDef]> {
  return [
    ['01_base', busyboxBase('2G')],
    ['02_data', { kind: 'build-layer', script: `set -eu\ndd if=/dev/urandom of=/big bs=1M count=${mib}` }],
  ];
}

export async function hitSize(o: BenchOptions): Promise<Row[]> {
  const reps = o.quick ? 3 : 5;
  return withSandbox('hit-size', async (sb) => {
    const big = await writeProject(path.join(sb.dir, 'big'), dataProject(1024));
    const small = await writeProject(path.join(sb.dir, 'small'), dataProject(10));
    progress('hit-size: building the 1 GiB layer (not measured)');
    await build(sb, big, 2);
    progress('hit-size: building the 10 MiB layer (not measured; same base)');
    await build(sb, small, 1);
    const bigMs: number[] = [];
    const smallMs: number[] = [];
    for (let r = 0; r < reps; r++) {
      progress(`hit-size: cached rebuilds ${r + 1}/${reps}`);
      // Alternating which goes first, so that neither always follows the other.
      for (const which of r % 2 ? ['small', 'big'] : ['big', 'small']) {
        if (which === 'big') bigMs.push((await build(sb, big, 0)).ms);
        else smallMs.push((await build(sb, small, 0)).ms);
      }
    }
    // A hit whose seal does not match (the blob was touched, the store copied) costs one full
    // hash of the blob, then it is sealed again: what the seal saves on every other hit.
    const bigKey = chainKeys(await build(sb, big, 0))[1]!;
    const unsealedMs: number[] = [];
    for (let r = 0; r < reps; r++) {
      progress(`hit-size: a hit on the 1 GiB layer without its seal ${r + 1}/${reps}`);
      await rm(path.join(sb.store, 'seals', `${bigKey}.json`), { force: true });
      await sync();
      unsealedMs.push((await build(sb, big, 0)).ms);
    }
    const b = median(bigMs);
    const s = median(smallMs);
    const title = 'hit on a 1 GiB layer vs a 10 MiB layer';
    return [
      {
        benchmark: title,
        what: `wall of the cached rebuild (\`vmlb build\`, all hits) of base + a 1 GiB layer; ${times(reps)}`,
        result: summary(bigMs.map((x) => x / 1000), 2, 's'),
        target: 'same as 10 MiB (no copy)',
        ratio: `${ratio(b, s)} 10 MiB`,
      },
      { benchmark: title, what: `the same, base + a 10 MiB layer; ${times(reps)}`, result: summary(smallMs.map((x) => x / 1000), 2, 's'), target: '—', ratio: '' },
      {
        benchmark: title,
        what: `the 1 GiB rebuild when that layer's seal is gone (one full sha256 of the blob, then sealed again); ${times(reps)}`,
        result: summary(unsealedMs.map((x) => x / 1000), 2, 's'),
        target: 'only after a change',
        ratio: `${ratio(median(unsealedMs), b)} a sealed hit`,
      },
    ];
  });
}

// ---------------------------------------------------------------------------------------
// --flatten vs a bare qemu-img convert of the same chain

export async function flatten(o: BenchOptions): Promise<Row[]> {
  // Twice each at least; a full run takes six, since writing 1 GiB into the page cache
  // varied from 0.3 to 4 s from one run to the next on a busy 2-core machine.
  const reps = o.quick ? 2 : 6;
  return withSandbox('flatten', async (sb) => {
    const project = await writeProject(path.join(sb.dir, 'project'), dataProject(1024));
    progress('flatten: building base + a 1 GiB layer (not measured)');
    const first = await build(sb, project, 2);
    const top = blobPath(sb, chainKeys(first).at(-1)!);
    const x = path.join(sb.dir, 'flat-vmlb.qcow2');
    const y = path.join(sb.dir, 'flat-convert.qcow2');
    const vmlbMs: number[] = [];
    const engineFlatten: number[] = [];
    const convertMs: number[] = [];
    const viaVmlb = async () => {
      await rm(x, { force: true });
      await sync();
      const v = await build(sb, project, 0, ['--flatten', '-o', x]);
      vmlbMs.push(v.ms);
      engineFlatten.push(eventsOf(v, 'output')[0]?.seconds as number);
    };
    const viaConvert = async () => {
      await rm(y, { force: true });
      await sync();
      convertMs.push((await run(['qemu-img', 'convert', '-O', 'qcow2', top, y])).ms);
    };
    for (let r = 0; r < reps; r++) {
      progress(`flatten: vmlb build --flatten and qemu-img convert, alternating (${r + 1}/${reps})`);
      for (const f of r % 2 ? [viaConvert, viaVmlb] : [viaVmlb, viaConvert]) await f();
    }
    await rm(x, { force: true });
    await rm(y, { force: true });
    const v = median(vmlbMs);
    const c = median(convertMs);
    const title = '--flatten vs bare qemu-img convert (1 GiB chain)';
    return [
      {
        benchmark: title,
        what: `wall of \`vmlb build --flatten -o X\`, all cached, CLI start-up included (the engine's own \`output.seconds\` ${secs(median(engineFlatten))}, ${ratio(median(engineFlatten) * 1000, c)} convert); ${times(reps)}, alternating with the convert, \`sync\` before each`,
        result: summary(vmlbMs.map((t) => t / 1000), 2, 's'),
        target: '≤ 1.1× convert',
        ratio: `${ratio(v, c)} convert`,
      },
      {
        benchmark: title,
        what: `wall of \`qemu-img convert -O qcow2 TOP Y\` of the chain's top blob in the store; ${times(reps)}`,
        result: summary(convertMs.map((t) => t / 1000), 2, 's'),
        target: '—',
        ratio: '',
      },
    ];
  });
}
