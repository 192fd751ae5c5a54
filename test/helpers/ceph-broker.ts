/**
 * vitest globalSetup of the integration project: the run's one Ceph cluster, started when the
 * first test file asks for it and stopped at the end of the run.
 *
 * It serves a small HTTP endpoint on 127.0.0.1 (VMLB_CEPH_BROKER, in the environment the test
 * files inherit): `POST /cluster` starts the cluster (test/helpers/ceph-cluster.ts) on the first
 * call, as a child of this, vitest's main process, and answers every call with what a file needs
 * to use it (its folder, ceph.conf, the keys of the user `vmlb`). Each file then runs its own
 * radosgw on it (test/helpers/ceph-rgw.ts). A run whose files never ask starts no cluster.
 *
 * The teardown stops the daemons (and any radosgw a file left) and removes the folder; should
 * the run itself be killed, its daemons die with it (parent-death signal) and the next start
 * sweeps the folder.
 */
import { execa } from 'execa';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { cephEnv, startCephCluster, type CephCluster, type CephClusterInfo } from './ceph-cluster.js';

export default async function setup(): Promise<() => Promise<void>> {
  let cluster: Promise<CephCluster> | null = null;
  const server = createServer((req, res) => {
    if (req.method !== 'POST' || req.url !== '/cluster') {
      res.writeHead(404).end('POST /cluster\n');
      return;
    }
    if (!cluster) {
      const t0 = Date.now();
      cluster = startCephCluster();
      cluster.then(
        (c) => console.warn(`ceph-broker: the run's Ceph cluster started in ${((Date.now() - t0) / 1000).toFixed(1)} s (${c.dir})`),
        () => undefined,
      );
    }
    cluster.then(
      (c) => {
        const info: CephClusterInfo = { dir: c.dir, conf: c.conf, accessKey: c.accessKey, secretKey: c.secretKey };
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(info));
      },
      (e: Error) => res.writeHead(500).end(e.stack ?? e.message),
    );
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  process.env.VMLB_CEPH_BROKER = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

  return async () => {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
    const c = await cluster?.catch(() => null);
    if (!c) return;
    // What the run left in the buckets, all in the RAM-backed OSD (memstore device bytes caps
    // it). `ceph df` says nothing without a mgr; the buckets' own accounting does.
    const stats = await execa('radosgw-admin', ['bucket', 'stats'], { env: cephEnv(c), reject: false, timeout: 30_000 });
    let held = '';
    if (stats.exitCode === 0) {
      const buckets = JSON.parse(String(stats.stdout)) as Array<{ usage?: Record<string, { size_actual?: number; num_objects?: number }> }>;
      const usage = buckets.flatMap((b) => Object.values(b.usage ?? {}));
      const bytes = usage.reduce((n, u) => n + (u.size_actual ?? 0), 0);
      const objects = usage.reduce((n, u) => n + (u.num_objects ?? 0), 0);
      held = ` (it held ${objects} objects, ${(bytes / 2 ** 20).toFixed(0)} MiB, in ${buckets.length} buckets)`;
    }
    const t0 = Date.now();
    await c.close();
    console.warn(`ceph-broker: the run's Ceph cluster stopped in ${((Date.now() - t0) / 1000).toFixed(1)} s${held}`);
  };
}
