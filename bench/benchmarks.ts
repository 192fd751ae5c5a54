/**
 * The benchmarks: one function each, each in its own sandbox (temp store and run dir), each
 * returning its rows of the table. Repetitions are few (this runs on a 2-core machine in a
 * few minutes); `quick` makes them fewer still.
 */
import { debian } from './debian.js';
import { debianFleet } from './debian-fleet.js';
import { mkosiPeer } from './mkosi.js';
import { FLEET_BENCHMARKS } from './fleet.js';
import { API_BENCHMARKS } from './api.js';
import { TRANSFER_BENCHMARKS } from './transfer.js';
import { SENTINEL_BENCHMARKS } from './sentinel.js';
import { TAKEOVER_BENCHMARKS } from './takeover.js';
import { HISTORY_BENCHMARKS } from './history.js';
import { flatten, hitSize } from './big-layers.js';
import { backendOverhead, overhead } from './engine-overhead.js';
import type { BenchOptions, Row } from './harness.js';
import { incremental, noop } from './rebuild-times.js';
import { write } from './write-speed.js';

export interface Benchmark {
  name: string;
  title: string;
  run: (o: BenchOptions) => Promise<Row[]>;
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
