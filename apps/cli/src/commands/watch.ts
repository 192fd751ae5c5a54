import type { Command } from 'commander';
import { chooseMode, createDisplay } from '../display/index.js';
import { buildIdArg, getRecord } from '../fleet-client.js';
import { endpointFrom, serverOption, tokenOption, type ConnOpts } from '../fleet-endpoint.js';
import { failedBuild, followBuild, untilInterrupted } from '../follow-build.js';

/**
 * `vmlb watch BUILD`: follows a fleet build again, from any shell (one sent with `vmlb submit
 * --detach`, or by someone else of the team), with the live display `vmlb submit` shows, to the
 * build's end. It exits as submit does: 0 done, 1 failed or cancelled, 3 the scheduler cannot
 * be reached (2 no such build, or a refused token).
 */
export function registerWatch(program: Command): void {
  program
    .command('watch')
    .description('follow a fleet build with the live display of vmlb submit (one sent with --detach, or from another shell), to its end')
    .argument('<build>', 'the build id (vmlb builds lists them)', buildIdArg)
    .addOption(serverOption())
    .addOption(tokenOption())
    .option('--json', 'print build events as JSON lines (for machines)')
    .option('--plain', 'plain line output, no live redraw (the default when stdout is not a terminal)')
    .action(async (id: string, o: ConnOpts & { json?: boolean; plain?: boolean }) => {
      const ep = await endpointFrom(o);
      // Asked once first: no such build (2) and an unreachable scheduler (3) answer at once,
      // where the event stream would keep trying to reconnect.
      const first = await getRecord(ep, id, `watching build ${id}`);
      const display = createDisplay(chooseMode({ json: o.json, plain: o.plain }, process.stdout), process.stdout);
      const final = await untilInterrupted(
        () => id,
        (signal) => {
          display.onEvent({ type: 'notice', at: Date.now(), message: `following build ${id} on ${ep.server} (${first.state}); on the dashboard: ${ep.server}/#/builds/${id}` });
          return followBuild(ep, id, (e) => display.onEvent(e), signal);
        },
        () => display.close(),
      );
      if (final.state !== 'done') throw failedBuild(final);
    });
}
