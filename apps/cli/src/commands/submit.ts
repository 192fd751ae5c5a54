import type { Command } from 'commander';
import path from 'node:path';
import { packProject, type BuildRecord } from '@vmlb/fleet';
import { formatBytes, loadProject } from '@vmlb/layer-engine';
import { pullChain } from '../chain-pull.js';
import { storeFrom, storeOption } from '../cli-options.js';
import { chooseMode, createDisplay } from '../display/index.js';
import { check, fetcherFor, request } from '../fleet-client.js';
import { endpointFrom, serverOption, tokenOption, type ConnOpts } from '../fleet-endpoint.js';
import { failedBuild, followBuild, untilInterrupted } from '../follow-build.js';
import { submissionHeaders } from '../submission-headers.js';

/**
 * `vmlb submit [DIR]`: sends the project to the fleet's scheduler and follows its build with the
 * same display as a local build, fetching its layers into the local store as they are pushed.
 */
export function registerSubmit(program: Command): void {
  program
    .command('submit')
    .description('send the image project in DIR to the fleet\'s scheduler and follow its build (the same display as vmlb build)')
    .argument('[dir]', 'the image project', '.')
    .addOption(serverOption())
    .addOption(tokenOption())
    .option('--detach', 'print the build id and return at once; do not follow the build')
    .option('--flatten', 'have the fleet make one flattened image of the build too (for the dashboard and API download)')
    .option('--name <name>', "the project's name in the fleet's history (default: the folder's name)")
    .option('--no-pull', "do not fetch the build's layers into the local store as they are pushed")
    .addOption(storeOption())
    .option('--json', 'print build events as JSON lines (for machines)')
    .option('--plain', 'plain line output, no live redraw (the default when stdout is not a terminal)')
    .action(async (dir: string, o: ConnOpts & { detach?: boolean; json?: boolean; plain?: boolean; flatten?: boolean; pull?: boolean; store?: string; name?: string }) => {
      const ep = await endpointFrom(o);
      const projectDir = path.resolve(dir);
      // The scheduler checks it again; checking here first answers a broken project at once.
      await loadProject(projectDir);
      const body = await packProject(projectDir);
      const res = await check(
        await request(ep, 'POST', `/v1/builds${o.flatten ? '?flatten=1' : ''}`, { body, headers: { 'content-type': 'application/gzip', ...(await submissionHeaders(projectDir, o.name)) } }),
        `submitting ${path.relative(process.cwd(), projectDir) || '.'}`,
      );
      const submitted = (await res.json()) as BuildRecord;
      // E.g. no worker of the build's pool is live: one line on stderr (stdout stays the display, or the id).
      if (submitted.warning) process.stderr.write(`vmlb: warning: ${submitted.warning}\n`);
      if (o.detach) {
        process.stdout.write(o.json ? `${JSON.stringify(submitted)}\n` : `${submitted.id}\n`);
        return;
      }
      const display = createDisplay(chooseMode({ json: o.json, plain: o.plain }, process.stdout), process.stdout);
      // Each layer is fetched into the local store as soon as the fleet has it (one at a time,
      // in order), so the chain is local when the build ends and `vmlb pull` only writes the file.
      const store = o.pull === false ? null : storeFrom(o);
      const final = await untilInterrupted(
        () => submitted.id,
        async (signal) => {
          let pulling: Promise<unknown> = Promise.resolve();
          let pullProblem: string | undefined;
          const pullUpTo = (index: number) => {
            if (!store || pullProblem) return;
            pulling = pulling.then(() =>
              pullChain(fetcherFor(ep), submitted.id, store, { upTo: index, signal }).catch((e: Error) => {
                if (!signal.aborted) pullProblem = e.message;
              }),
            );
          };
          display.onEvent({ type: 'notice', at: Date.now(), message: `submitted to ${ep.server} as build ${submitted.id} (${formatBytes(body.length)} uploaded); on the dashboard: ${ep.server.replace(/\/+$/, '')}/#/builds/${submitted.id}` });
          const ended = await followBuild(ep, submitted.id, (e) => {
            display.onEvent(e);
            if (e.type === 'layer-done' || e.type === 'layer-cached') pullUpTo(e.index);
          }, signal);
          if (store && ended.state === 'done') {
            pullUpTo(ended.layers.length - 1);
            await pulling;
            if (pullProblem) display.onEvent({ type: 'notice', at: Date.now(), message: `could not fetch the build's layers into ${store.root} (vmlb pull ${submitted.id} tries again): ${pullProblem}` });
            else display.onEvent({ type: 'notice', at: Date.now(), message: `its layers are in ${store.root}: vmlb pull ${submitted.id} -o FILE writes the image at once` });
          }
          return ended;
        },
        () => display.close(),
      );
      if (final.state !== 'done') throw failedBuild(final);
    });
}
