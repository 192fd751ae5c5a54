import type { Command } from 'commander';
import type { LayerRecord } from '@vmlb/fleet';
import { VmlbError } from '@vmlb/layer-engine';
import { buildIdArg, check, getRecord, request } from '../fleet-client.js';
import { endpointFrom, serverOption, tokenOption, type ConnOpts, type Endpoint } from '../fleet-endpoint.js';
import { FINAL_STATES, failedBuild, followBuild, untilInterrupted } from '../follow-build.js';

/**
 * `vmlb logs BUILD [LAYER]`: a fleet build's layer logs as the API keeps them (a built layer's
 * whole log, a failed one's, a running one's so far); LAYER is its folder name (02_hello), its
 * name without the number (hello) or its position as the display counts (2). --follow prints
 * what a running build's layers print as they print it, to the build's end.
 */

/** What a layer's status says in a log header. */
const STATUS_WORDS: Record<string, string> = { hit: 'cached', done: 'built', failed: 'failed', building: 'building', queued: 'queued', waiting: 'queued', cancelled: 'cancelled' };

/** LAYER as `vmlb logs` takes it: a folder name, a name without its number, or a position from 1. */
export function resolveLayer(layers: LayerRecord[], arg: string, buildId: string): LayerRecord {
  const byName = layers.find((l) => l.name === arg) ?? layers.find((l) => l.name.replace(/^\d+_/, '') === arg);
  if (byName) return byName;
  if (/^\d+$/.test(arg)) {
    const n = Number(arg);
    if (n >= 1 && n <= layers.length) return layers[n - 1]!;
  }
  throw new VmlbError('NO_SUCH_LAYER', `build ${buildId} has no layer "${arg}" (its layers: ${layers.map((l, i) => `${i + 1} ${l.name}`).join(', ')})`);
}

/** A layer's log from the API; null when it has none (yet). */
async function layerLog(ep: Endpoint, id: string, index: number): Promise<string | null> {
  const res = await request(ep, 'GET', `/v1/builds/${encodeURIComponent(id)}/layers/${index}/log`);
  if (res.status === 404) {
    const text = await res.text();
    let code: string | undefined;
    try {
      code = (JSON.parse(text) as { error?: { code?: string } }).error?.code;
    } catch {
      /* not the API's error */
    }
    if (code === 'NO_LOG') return null;
    return check(new Response(text, { status: 404, statusText: res.statusText }), `reading build ${id}'s logs`).then(() => null);
  }
  return (await check(res, `reading build ${id}'s logs`)).text();
}

const header = (l: Pick<LayerRecord, 'index' | 'name'>, total: number, note?: string) => `==> [${l.index + 1}/${total}] ${l.name}${note ? ` (${note})` : ''} <==\n`;
const withNewline = (t: string) => (t === '' || t.endsWith('\n') ? t : `${t}\n`);

export function registerLogs(program: Command): void {
  program
    .command('logs')
    .description("print a fleet build's layer logs (every layer's, or LAYER's); --follow prints a running build's as they come")
    .argument('<build>', 'the build id (vmlb builds lists them)', buildIdArg)
    .argument('[layer]', 'one layer: its folder name (02_hello), its name (hello) or its position (2)')
    .addOption(serverOption())
    .addOption(tokenOption())
    .option('-f, --follow', 'a running build: print what its layers print as they print it, until the build ends (exit 1 when it fails)')
    .option('--json', 'print the logs as JSON (with --follow: one { index, name, chunk } per line)')
    .action(async (id: string, layerArg: string | undefined, o: ConnOpts & { follow?: boolean; json?: boolean }) => {
      const ep = await endpointFrom(o);
      const record = await getRecord(ep, id, `reading build ${id}'s logs`);
      const total = record.layers.length;
      const only = layerArg === undefined ? undefined : resolveLayer(record.layers, layerArg, id);
      const out = (t: string) => process.stdout.write(t);

      if (o.follow && !FINAL_STATES.includes(record.state)) {
        let current = -1;
        let atLineStart = true;
        const final = await untilInterrupted(
          () => id,
          (signal) =>
            followBuild(
              ep,
              id,
              (e) => {
                if (e.type !== 'layer-log' || (only && e.index !== only.index)) return;
                if (o.json) return void out(`${JSON.stringify({ index: e.index, name: e.name, chunk: e.chunk })}\n`);
                if (!only && e.index !== current) {
                  out(`${atLineStart ? '' : '\n'}${current === -1 ? '' : '\n'}${header(e, total)}`);
                  current = e.index;
                  atLineStart = true;
                }
                if (e.chunk) {
                  out(e.chunk);
                  atLineStart = e.chunk.endsWith('\n');
                }
              },
              signal,
            ),
        );
        if (!atLineStart && !o.json) out('\n');
        if (final.state !== 'done') throw failedBuild(final);
        return;
      }

      if (only) {
        const log = await layerLog(ep, id, only.index);
        if (o.json) return void out(`${JSON.stringify({ id, state: record.state, index: only.index, name: only.name, status: only.status, log })}\n`);
        if (log === null) throw new VmlbError('NO_LOG', `layer ${only.name} of build ${id} has no log (it is ${STATUS_WORDS[only.status] ?? only.status})`);
        return void out(log);
      }
      const logs: Array<{ layer: LayerRecord; log: string | null }> = [];
      for (const layer of record.layers) logs.push({ layer, log: await layerLog(ep, id, layer.index) });
      if (o.json) {
        out(`${JSON.stringify({ id, state: record.state, layers: logs.map(({ layer: l, log }) => ({ index: l.index, name: l.name, status: l.status, log })) }, null, 2)}\n`);
        return;
      }
      logs.forEach(({ layer, log }, i) => {
        const word = STATUS_WORDS[layer.status] ?? layer.status;
        out(`${i > 0 ? '\n' : ''}${header(layer, total, log === null ? `${word}; no log` : word)}${withNewline(log ?? '')}`);
      });
    });
}
