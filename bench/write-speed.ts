/** Writing 500 MiB (dd conv=fsync) inside a build-layer vs on a plain loop device. */
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { BENCH_DIR, progress, type BenchOptions, type Row } from './harness.js';
import { median, ratio, secs, summary, times } from './numbers.js';
import { busyboxBase, numbered, writeLayer, writeProject } from './project-files.js';
import { run } from './run-command.js';
import { withSandbox, type Sandbox } from './sandbox.js';
import { build, eventsOf, sync, type VmlbRun } from './vmlb-run.js';

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

export async function write(o: BenchOptions): Promise<Row[]> {
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
