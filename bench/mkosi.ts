/**
 * A peer, side by side: the examples/debian image built by `vmlb build` and by mkosi (Debian's
 * package, with its incremental cache) in one run, cold (a fresh vmlb store; a fresh mkosi
 * project folder: no incremental cache, no package cache) and after the same one-file edit
 * (`edit N` appended to 05_config's `issue`, which mkosi has in `mkosi.extra/etc/issue`).
 *
 * The mkosi project is written by bench/mkosi/assemble.sh from examples/debian's own files;
 * bench/mkosi/README.md says what mkosi needs on this machine and how the two images differ.
 * Everything mkosi writes (its output, its cache image, its workspace) is inside the
 * benchmark's temp dir (its workspace: --workspace-dir), so the harness's leftover checks and
 * clean-up cover it.
 */
import { appendFile, cp, mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { BENCH_DIR, progress, REPO, type BenchOptions, type Row } from './harness.js';
import { median, ratio, summary, times } from './numbers.js';
import { run } from './run-command.js';
import { withSandbox, type Sandbox } from './sandbox.js';
import { build } from './vmlb-run.js';

const TITLE = 'mkosi peer: examples/debian, vmlb vs mkosi';

/** mkosi's version line, or null when it is not installed. */
async function mkosiVersion(): Promise<string | null> {
  try {
    const r = await run(['mkosi', '--version'], { check: false });
    return r.code === 0 ? r.stdout.trim() : null;
  } catch {
    return null;
  }
}

/** The sandbox with its own, fresh store (the run dir is shared). */
function withStore(sb: Sandbox, store: string): Sandbox {
  return { ...sb, store, env: { ...sb.env, VMLB_STORE: store } };
}

interface MkosiRun {
  ms: number;
  log: string;
}

/** `mkosi -C DIR ARGS… build`, its workspace in the temp dir; checks what it was meant to do. */
async function mkosi(sb: Sandbox, dir: string, args: string[], expectCached: boolean): Promise<MkosiRun> {
  const workspace = path.join(sb.dir, 'mkosi-workspace');
  await mkdir(workspace, { recursive: true });
  // Not TMPDIR: mkosi 14 passes its environment on to apt and dpkg in the image, whose
  // maintainer scripts (ca-certificates, openssh-server) then fail on a host-only TMPDIR.
  const env = { ...process.env };
  delete env.TMPDIR;
  const r = await run(['mkosi', '-C', dir, `--workspace-dir=${workspace}`, ...args, 'build'], {
    env,
    // mkosi (Python) unwinds its mounts and loop devices on KeyboardInterrupt.
    stopSignal: 'SIGINT',
    check: false,
  });
  const log = r.stdout + r.stderr;
  if (r.code !== 0) {
    const errors = log.split('\n').filter((l) => /^(E:|dpkg: error|mktemp: )|error exit status|Errors were encountered/.test(l)).slice(0, 8);
    throw new Error(`mkosi -C ${dir} ${args.join(' ')} build exited with status ${String(r.code)}: ${errors.join(' / ') || log.trimEnd().split('\n').slice(-10).join(' / ')}`);
  }
  const cached = log.includes('Basing off cached image');
  const installed = /Running prepare script/.test(log);
  if (expectCached && (!cached || installed)) throw new Error(`mkosi ${args.join(' ')}: expected a build from its incremental cache, but it ${installed ? 'installed the distribution again' : 'did not use the cache'}`);
  if (!expectCached && !installed) throw new Error(`mkosi ${args.join(' ')}: expected a cold build (debootstrap, apt, the prepare script), but it did not install anything`);
  if (!log.includes('Running postinstall script') || !log.includes('Copying in extra file trees')) throw new Error(`mkosi ${args.join(' ')}: did not copy mkosi.extra/ and run mkosi.postinst`);
  return { ms: r.ms, log };
}

/** The image mkosi wrote (its size, for the table). */
async function mkosiImage(dir: string): Promise<string> {
  const out = await run(['sh', '-c', 'ls -d "$1"/mkosi.output/*/image.qcow2', 'sh', dir]);
  return out.stdout.trim().split('\n')[0]!;
}

async function mib(file: string): Promise<number> {
  const r = await run(['du', '-m', '--apparent-size', file]);
  return Number(r.stdout.split(/\s+/)[0]);
}

export async function mkosiPeer(o: BenchOptions): Promise<Row[]> {
  const version = await mkosiVersion();
  if (!version) {
    return [{ benchmark: TITLE, what: 'mkosi (Debian\'s package) against `vmlb build`, cold and after a one-file edit', result: 'not measured: mkosi is not installed (`apt-get install mkosi`; see bench/mkosi/README.md)', target: '—', ratio: '' }];
  }
  // A cold build of each takes one to two minutes here: two of each in a full run, in turns.
  const coldReps = o.quick ? 1 : 2;
  const editReps = o.quick ? 1 : 3;
  return withSandbox('mkosi-peer', async (sb) => {
    const project = path.join(sb.dir, 'debian');
    await cp(path.join(REPO, 'examples/debian'), project, { recursive: true, filter: (s) => path.basename(s) !== 'build' });
    const assemble = path.join(BENCH_DIR, 'mkosi/assemble.sh');

    const vmlbCold: number[] = [];
    const mkosiCold: number[] = [];
    let store = '';
    let mkosiDir = '';
    const coldVmlb = async (r: number) => {
      if (store) await rm(store, { recursive: true, force: true });
      store = path.join(sb.dir, `store-${r}`);
      await rm(path.join(project, 'build'), { recursive: true, force: true });
      progress(`mkosi-peer: vmlb cold build, a fresh store (${r + 1}/${coldReps})`);
      vmlbCold.push((await build(withStore(sb, store), project, 6)).ms);
    };
    const coldMkosi = async (r: number) => {
      if (mkosiDir) await rm(mkosiDir, { recursive: true, force: true });
      mkosiDir = path.join(sb.dir, `mkosi-${r}`);
      await run(['sh', assemble, mkosiDir]);
      progress(`mkosi-peer: mkosi cold build, a fresh project folder: no cache (${r + 1}/${coldReps})`);
      mkosiCold.push((await mkosi(sb, mkosiDir, ['--incremental'], false)).ms);
    };
    for (let r = 0; r < coldReps; r++) {
      for (const f of r % 2 ? [coldMkosi, coldVmlb] : [coldVmlb, coldMkosi]) await f(r);
    }
    const mkosiColdMib = await mib(await mkosiImage(mkosiDir));
    const vsb = withStore(sb, store);

    // The same edit for both: a line appended to examples/debian/05_config/files/issue, which
    // is mkosi.extra/etc/issue in the mkosi project. vmlb builds 05_config and the stamp; vmlb
    // --flatten also writes one standalone qcow2, as mkosi does; mkosi copies its cached disk,
    // copies mkosi.extra/ in, runs mkosi.postinst and converts the disk to qcow2.
    const vmlbEdit: number[] = [];
    const vmlbFlat: number[] = [];
    const mkosiEdit: number[] = [];
    const flatOut = path.join(sb.dir, 'vmlb-flat.qcow2');
    let n = 0;
    const editVmlb = async () => {
      await appendFile(path.join(project, '05_config/files/issue'), `edit ${n++}\n`);
      vmlbEdit.push((await build(vsb, project, 2)).ms);
    };
    const editVmlbFlat = async () => {
      await appendFile(path.join(project, '05_config/files/issue'), `edit ${n++}\n`);
      await rm(flatOut, { force: true });
      vmlbFlat.push((await build(vsb, project, 2, ['--flatten', '-o', flatOut])).ms);
    };
    const editMkosi = async () => {
      await appendFile(path.join(mkosiDir, 'mkosi.extra/etc/issue'), `edit ${n++}\n`);
      mkosiEdit.push((await mkosi(sb, mkosiDir, ['--incremental', '-f'], true)).ms);
    };
    for (let r = 0; r < editReps; r++) {
      progress(`mkosi-peer: the one-file edit, vmlb, vmlb --flatten and mkosi in turns (${r + 1}/${editReps})`);
      const order = [editVmlb, editVmlbFlat, editMkosi];
      for (let i = 0; i < order.length; i++) await order[(i + r) % order.length]!();
    }
    const flatMib = await mib(flatOut);
    const mkosiImageFile = await mkosiImage(mkosiDir);
    const mkosiEditMib = await mib(mkosiImageFile);
    await rm(mkosiDir, { recursive: true, force: true });
    await rm(store, { recursive: true, force: true });

    const s = (xs: number[]) => summary(xs.map((x) => x / 1000), 1, 's');
    const vc = median(vmlbCold);
    const mc = median(mkosiCold);
    const ve = median(vmlbEdit);
    const vf = median(vmlbFlat);
    const me = median(mkosiEdit);
    return [
      {
        benchmark: `${TITLE}: cold`,
        what: `\`vmlb build\` of examples/debian, a fresh store (mmdebstrap, apt, the six layers; the image a thin qcow2 overlay on the store's chain); wall; ${times(vmlbCold.length)}, in turns with mkosi`,
        result: s(vmlbCold),
        target: '—',
        ratio: '',
      },
      {
        benchmark: `${TITLE}: cold`,
        what: `\`mkosi --incremental build\` (${version}) of bench/mkosi (the same packages, user, files and mirror), a fresh project folder: no incremental cache, no package cache (debootstrap, apt, mkosi.prepare, saving the cache image, mkosi.extra/, mkosi.postinst, qcow2 conversion: a ${mkosiColdMib} MiB standalone qcow2); wall; ${times(mkosiCold.length)}`,
        result: s(mkosiCold),
        target: '—',
        ratio: `${ratio(mc, vc)} vmlb`,
      },
      {
        benchmark: `${TITLE}: the one-file edit`,
        what: `a line appended to 05_config's \`issue\`, \`vmlb build\` (05_config and the # nocache stamp built, 4 cached); wall; ${times(vmlbEdit.length)}, in turns with the two below`,
        result: s(vmlbEdit),
        target: '—',
        ratio: '',
      },
      {
        benchmark: `${TITLE}: the one-file edit`,
        what: `the same edit, \`vmlb build --flatten -o X\` (one standalone qcow2 of ${flatMib} MiB, as mkosi writes); wall; ${times(vmlbFlat.length)}`,
        result: s(vmlbFlat),
        target: '—',
        ratio: `${ratio(vf, ve)} vmlb`,
      },
      {
        benchmark: `${TITLE}: the one-file edit`,
        what: `the same edit in \`mkosi.extra/etc/issue\`, \`mkosi --incremental -f build\` from its cache (copies the cached 4 GiB raw disk, copies mkosi.extra/ in, runs mkosi.postinst, trims, converts to a ${mkosiEditMib} MiB qcow2); wall; ${times(mkosiEdit.length)}`,
        result: s(mkosiEdit),
        target: '—',
        ratio: `${ratio(me, ve)} vmlb; ${ratio(me, vf)} vmlb --flatten`,
      },
    ];
  });
}
