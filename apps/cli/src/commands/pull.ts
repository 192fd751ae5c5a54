import type { Command } from 'commander';
import { createWriteStream } from 'node:fs';
import { lstat, mkdir, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { VmlbError, formatBytes } from '@vmlb/layer-engine';
import { pullChain, writeChainImage } from '../chain-pull.js';
import { storeFrom, storeOption } from '../cli-options.js';
import { buildIdArg, check, fetcherFor, getRecord, request } from '../fleet-client.js';
import { endpointFrom, serverOption, tokenOption, type ConnOpts } from '../fleet-endpoint.js';
import { FINAL_STATES, followBuild } from '../follow-build.js';

/**
 * `vmlb pull BUILD`: a finished fleet build's image, written from its layers (those the local
 * store lacks fetched first) or, with --server-image, downloaded as the fleet flattened it.
 */
export function registerPull(program: Command): void {
  program
    .command('pull')
    .description("fetch a finished fleet build's layers the local store lacks and write its image (a thin overlay on the local chain, or --flatten)")
    .argument('<build>', 'the build id (vmlb builds lists them)', buildIdArg)
    .option('-o, --output <file>', 'where to write it (default: BUILD.qcow2)')
    .option('--flatten', 'write one standalone qcow2 instead of a thin overlay on the local chain')
    .option('--server-image', "download the image the fleet flattens (once per chain) instead of fetching the layers")
    .option('--follow', 'a build still running: fetch each layer as soon as it is pushed, and write the image when the build is done')
    .addOption(storeOption())
    .addOption(serverOption())
    .addOption(tokenOption())
    .action(async (id: string, o: ConnOpts & { output?: string; flatten?: boolean; serverImage?: boolean; follow?: boolean; store?: string }) => {
      const ep = await endpointFrom(o);
      const out = path.resolve(o.output ?? `${id}.qcow2`);
      if (!o.serverImage) {
        let record = await getRecord(ep, id, `pulling build ${id}`);
        if (o.follow && !FINAL_STATES.includes(record.state)) {
          // Each layer as soon as the fleet has it, one at a time in order; the rest at the end.
          const store = storeFrom(o);
          const ac = new AbortController();
          let pulling: Promise<unknown> = Promise.resolve();
          const upTo = (index: number) => (pulling = pulling.then(() => pullChain(fetcherFor(ep), id, store, { upTo: index, signal: ac.signal }).catch(() => undefined)));
          record = await followBuild(ep, id, (e) => (e.type === 'layer-done' || e.type === 'layer-cached') && upTo(e.index), ac.signal);
          await pulling;
        }
        if (record.state !== 'done') throw new VmlbError('BUILD_FAILED', `pulling build ${id}: it is ${record.state}${record.error ? `: ${record.error.split('\n')[0]}` : ''}; only a finished build has an image`);
        const store = storeFrom(o);
        const started = performance.now();
        const got = await pullChain(fetcherFor(ep), id, store);
        if (got.keys.length !== record.layers.length) throw new VmlbError('FLEET_ERROR', `pulling build ${id}: the shared store has ${got.keys.length} of its ${record.layers.length} layers (a # noshare layer stays on its worker: use --server-image)`);
        const bytes = await writeChainImage(store, got.keys, out, { flatten: o.flatten });
        const moved = got.pulled.reduce((n, l) => n + l.bytes, 0);
        process.stdout.write(
          `${path.relative(process.cwd(), out) || out}: ${o.flatten ? 'flattened' : 'thin overlay on the local chain'}, ${formatBytes(bytes)}; fetched ${got.pulled.length} of ${got.keys.length} layers (${formatBytes(moved)}) in ${((performance.now() - started) / 1000).toFixed(1)} s\n`,
        );
        return;
      }
      let res = await check(await request(ep, 'GET', `/v1/builds/${id}/image`), `pulling build ${id}`);
      // A chain build's image is flattened when first asked for: wait for it.
      for (let waited = 0; res.status === 202; waited++) {
        if (waited === 0) process.stderr.write(`vmlb: build ${id}'s image is being flattened in the fleet (once); waiting\n`);
        await new Promise((r) => setTimeout(r, 1000));
        res = await check(await request(ep, 'GET', `/v1/builds/${id}/image`), `pulling build ${id}`);
      }
      if (!res.body) throw new VmlbError('FLEET_ERROR', `pulling build ${id}: the scheduler sent no image`);
      await mkdir(path.dirname(out), { recursive: true });
      const tmp = `${out}.part-${process.pid}`;
      try {
        await pipeline(Readable.fromWeb(res.body as import('node:stream/web').ReadableStream), createWriteStream(tmp));
        const expected = Number(res.headers.get('content-length') ?? NaN);
        const got = (await lstat(tmp)).size;
        if (Number.isFinite(expected) && got !== expected) throw new VmlbError('FLEET_ERROR', `pulling build ${id}: got ${got} bytes of ${expected}; try again`);
        await rename(tmp, out);
        process.stdout.write(`${path.relative(process.cwd(), out) || out}: ${formatBytes(got)}\n`);
      } finally {
        await rm(tmp, { force: true });
      }
    });
}
