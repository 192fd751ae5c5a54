import type { Command } from 'commander';
import type { BuildRecord } from '@vmlb/fleet';
import { buildIdArg, check, request } from '../fleet-client.js';
import { endpointFrom, serverOption, tokenOption, type ConnOpts } from '../fleet-endpoint.js';

/** `vmlb cancel BUILD`: cancels a queued or running fleet build. */
export function registerCancel(program: Command): void {
  program
    .command('cancel')
    .description('cancel a queued or running fleet build')
    .argument('<build>', 'the build id', buildIdArg)
    .addOption(serverOption())
    .addOption(tokenOption())
    .option('--json', 'print the build\'s record as JSON')
    .action(async (id: string, o: ConnOpts & { json?: boolean }) => {
      const ep = await endpointFrom(o);
      const res = await check(await request(ep, 'POST', `/v1/builds/${id}/cancel`), `cancelling build ${id}`);
      const r = (await res.json()) as BuildRecord;
      process.stdout.write(o.json ? JSON.stringify(r, null, 2) + '\n' : `build ${id} ${r.state}\n`);
    });
}
