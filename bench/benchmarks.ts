/**
 * The benchmarks: one function each, each in its own sandbox (temp store and run dir), each
 * returning its rows of the table. Repetitions are few (this runs on a 2-core machine in a
 * few minutes); `quick` makes them fewer still.
 */
import { mkdir, rm } from 'node:fs/promises';
import { debian } from './debian.js';
import { debianFleet } from './debian-fleet.js';
import { mkosiPeer } from './mkosi.js';
import { FLEET_BENCHMARKS } from './fleet.js';
import { API_BENCHMARKS } from './api.js';
import { TRANSFER_BENCHMARKS } from './transfer.js';
import { SENTINEL_BENCHMARKS } from './sentinel.js';
import { TAKEOVER_BENCHMARKS } from './takeover.js';
import { HISTORY_BENCHMARKS } from './history.js';
import path from 'node:path';
import {
  BENCH_DIR,
  blobPath,
  build,
  busyboxBase,
  chainKeys,
  doneEvent,
  eventsOf,
  manifest,
  median,
  numbered,
  progress,
  ratio,
  run,
  secs,
  summary,
  sync,
  times,
  trivialLayers,
  vmlb,
  withSandbox,
  writeLayer,
  writeProject,
  type BenchOptions,
  type LayerDef,
  type Row,
  type Sandbox,
  type VmlbRun,
} from './harness.js';

export interface Benchmark {
  name: string;
  title: string;
  run: (o: BenchOptions) => Promise<Row[]>;
}

/** The `true` layer whose comment changes its key (and so every key after it). */
function trueLayer(tag: string): LayerDef {
  return { kind: 'build-layer', script: `# ${tag}\ntrue` };
}

// ---------------------------------------------------------------------------------------
// 1. engine overhead per layer

const OVERHEAD_LAYERS = 10;

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

async function overhead(o: BenchOptions): Promise<Row[]> {
  const reps = o.quick ? 1 : 5;
  const iterationsPerRep = o.quick ? 5 : 8;
  return withSandbox('overhead', async (sb) => {
    const layers = trivialLayers(OVERHEAD_LAYERS);
    const project = await writeProject(path.join(sb.dir, 'project'), layers);
    const [baseName] = layers[0]!;
    const [firstName] = layers[1]!;
    progress('overhead: building the base (not measured)');
    const baseKey = chainKeys(await build(sb, project, 1, ['--last', baseName]))[0]!;

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
// 2. no-op rebuild of a 20-layer project

// ---------------------------------------------------------------------------------------
// engine overhead per layer: nbd vs fuse (npm run test:nbd runs it inside its VM)

async function backendOverhead(o: BenchOptions): Promise<Row[]> {
  const title = 'engine overhead per layer: nbd vs fuse';
  const { nbdBackend } = await import('../libs/layer-engine/src/attach-nbd.js');
  const why = await nbdBackend.unavailableReason();
  if (why) return [{ benchmark: title, what: 'the same 10 `true` layers with `--backend nbd` and `--backend fuse`', result: `not measured: ${why} (npm run test:nbd measures it in a VM)`, target: '—', ratio: '' }];
  const reps = o.quick ? 1 : 3;
  return withSandbox('backend-overhead', async (sb) => {
    const layers = trivialLayers(OVERHEAD_LAYERS);
    const project = await writeProject(path.join(sb.dir, 'project'), layers);
    const [baseName] = layers[0]!;
    const [firstName] = layers[1]!;
    progress('backend-overhead: building the base (not measured)');
    await build(sb, project, 1, ['--last', baseName]);
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

async function noop(o: BenchOptions): Promise<Row[]> {
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
// 3. incremental: the last of 10 layers changed vs all 10 from nothing

async function incremental(o: BenchOptions): Promise<Row[]> {
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

// ---------------------------------------------------------------------------------------
// 4. a hit on a 1 GiB layer vs a hit on a 10 MiB layer

/** A busybox base on a 2 GiB disk and a layer that writes `mib` MiB of random data. */
function dataProject(mib: number): Array<[string, LayerDef]> {
  return [
    ['01_base', busyboxBase('2G')],
    ['02_data', { kind: 'build-layer', script: `set -eu\ndd if=/dev/urandom of=/big bs=1M count=${mib}` }],
  ];
}

async function hitSize(o: BenchOptions): Promise<Row[]> {
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
// 5. --flatten vs a bare qemu-img convert of the same chain

async function flatten(o: BenchOptions): Promise<Row[]> {
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

// ---------------------------------------------------------------------------------------
// 6. writing 500 MiB inside a build-layer vs on a plain loop device

const WRITE_MIB = 500;
const MB = WRITE_MIB * 1024 * 1024 / 1e6;

/**
 * Time stamps around the dd. Busybox's date has no %N (it prints "%N" literally), so the
 * script falls back to /proc/uptime (10 ms resolution, the chroot has /proc).
 */
function writeLayerScript(tag: string): string {
  return `# ${tag}
set -eu
stamp() {
  s=$(date +%s.%N)
  case $s in *N) read -r s _ < /proc/uptime ;; esac
  echo "vmlb-bench $1 $s"
}
stamp start
dd if=/dev/zero of=/data bs=1M count=${WRITE_MIB} conv=fsync
stamp end`;
}

function stampedSeconds(text: string): number {
  const start = /vmlb-bench start ([\d.]+)/.exec(text);
  const end = /vmlb-bench end ([\d.]+)/.exec(text);
  if (!start || !end) throw new Error(`no "vmlb-bench start/end" time stamps in:\n${text.slice(-2000)}`);
  return Number(end[1]) - Number(start[1]);
}

function layerLog(r: VmlbRun, name: string): string {
  return eventsOf(r, 'layer-log')
    .filter((e) => e.name === name)
    .map((e) => e.chunk as string)
    .join('');
}

async function write(o: BenchOptions): Promise<Row[]> {
  const reps = o.quick ? 1 : 5;
  return withSandbox('write', async (sb: Sandbox) => {
    const [baseName, writeName] = numbered(['base', 'write']) as [string, string];
    const project = await writeProject(path.join(sb.dir, 'project'), [[baseName, busyboxBase('2G')]]);
    progress('write: building the base (not measured)');
    await build(sb, project, 1);
    const work = path.join(sb.dir, 'plain');
    await mkdir(work, { recursive: true });
    const layerSecs: number[] = [];
    const layerTotal: number[] = [];
    const plainSecs: number[] = [];
    const inLayer = async (r: number) => {
      // A new comment each time: a new key, so the layer is built again.
      await writeLayer(project, writeName, { kind: 'build-layer', script: writeLayerScript(`rep ${r}`) });
      await sync();
      const b = await build(sb, project, 1);
      layerSecs.push(stampedSeconds(layerLog(b, writeName)));
      layerTotal.push(eventsOf(b, 'layer-done')[0]?.seconds as number);
    };
    const onPlainLoop = async () => {
      // loop-write.sh syncs before its dd.
      const p = await run(['bash', path.join(BENCH_DIR, 'loop-write.sh'), work, '2G', String(WRITE_MIB)]);
      plainSecs.push(stampedSeconds(p.stdout));
    };
    for (let r = 0; r < reps; r++) {
      progress(`write: ${WRITE_MIB} MiB in a build-layer and on a plain loop device, alternating (${r + 1}/${reps})`);
      if (r % 2) {
        await onPlainLoop();
        await inLayer(r);
      } else {
        await inLayer(r);
        await onPlainLoop();
      }
    }
    const rate = (xs: number[]) => xs.map((t) => MB / t);
    const layerRate = MB / median(layerSecs);
    const plainRate = MB / median(plainSecs);
    const title = `write ${WRITE_MIB} MiB (dd conv=fsync)`;
    return [
      {
        benchmark: title,
        what: `inside a build-layer (ext4 on a loop device on the FUSE export of the qcow2 overlay), timed by the script's own stamps around dd; ${times(reps)} (dd ${secs(median(layerSecs))}; the whole layer ${secs(median(layerTotal))})`,
        result: summary(rate(layerSecs), 0, 'MB/s'),
        target: '—',
        ratio: `${ratio(layerRate, plainRate)} plain loop`,
      },
      {
        benchmark: title,
        what: `the same dd onto ext4 on a plain loop device over a sparse raw file (bench/loop-write.sh); ${times(reps)} (dd ${secs(median(plainSecs))})`,
        result: summary(rate(plainSecs), 0, 'MB/s'),
        target: '—',
        ratio: '',
      },
    ];
  });
}

export const BENCHMARKS: Benchmark[] = [
  { name: 'overhead', title: 'engine overhead per layer (10 `true` layers), sandboxed and not, vs the bare primitives', run: overhead },
  { name: 'backend-overhead', title: 'engine overhead per layer, nbd vs fuse (in turns; needs the nbd module: npm run test:nbd runs it in a VM)', run: backendOverhead },
  { name: 'noop', title: 'no-op rebuild of a 20-layer project, all cached', run: noop },
  { name: 'incremental', title: 'the last of 10 layers changed vs all 10 built', run: incremental },
  { name: 'hit-size', title: 'cached rebuild with a 1 GiB layer vs a 10 MiB layer', run: hitSize },
  { name: 'flatten', title: '--flatten vs bare qemu-img convert of the same chain', run: flatten },
  { name: 'write', title: 'writing 500 MiB inside a build-layer vs on a plain loop device', run: write },
  { name: 'debian', title: 'examples/debian: first, no-op and edit-last-layer builds; boot to the marker; diff of two layers', run: debian },
  { name: 'debian-fleet', title: 'examples/debian through npm run fleet vs locally: cold, an edit of the last layer, bytes moved', run: debianFleet },
  { name: 'mkosi-peer', title: 'examples/debian by vmlb and by mkosi (incremental cache): cold, and after a one-file edit', run: mkosiPeer },
  ...FLEET_BENCHMARKS,
  ...API_BENCHMARKS,
  ...TRANSFER_BENCHMARKS,
  ...SENTINEL_BENCHMARKS,
  ...TAKEOVER_BENCHMARKS,
  ...HISTORY_BENCHMARKS,
];
