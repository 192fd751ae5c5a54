import { type Command, Option } from 'commander';
import path from 'node:path';
import { scaffoldLayer } from '@vmlb/layer-engine';

/** `vmlb new-layer NAME`: the next layer folder NN_NAME, with an executable script. */
export function registerNewLayer(program: Command): void {
  program
    .command('new-layer')
    .description('scaffold the next layer folder NN_NAME with an executable script')
    .argument('<name>', 'the layer name, e.g. users')
    .option('-C, --project <dir>', 'the image project', '.')
    .addOption(new Option('--kind <kind>', 'the script to create').choices(['build-layer', 'modify-disk', 'create-disk']))
    .action(async (name: string, o) => {
      const r = await scaffoldLayer(path.resolve(o.project), name, { kind: o.kind });
      process.stdout.write(`created ${path.relative(process.cwd(), r.script) || r.script}\n`);
    });
}
