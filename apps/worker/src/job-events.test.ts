import { describe, expect, it } from 'vitest';
import type { Redis } from 'ioredis';
import type { FleetEvent } from '@vmlb/fleet';
import { JobEvents, LOG_BATCH_CHARS, LOG_BATCH_MS } from './job-events.js';
import { silentLogger } from './logger.js';

/** Just enough of ioredis for appendEvent and takeLogBudget: multi().xadd()/incrby().expire().exec(). */
function fakeRedis(): { redis: Redis; appended: FleetEvent[] } {
  const appended: FleetEvent[] = [];
  let budget = 0;
  const multi = () => {
    let result: unknown;
    const chain = {
      xadd: (...args: unknown[]) => {
        appended.push(JSON.parse(String(args[args.length - 1])) as FleetEvent);
        result = `${appended.length}-0`;
        return chain;
      },
      incrby: (_key: string, n: number) => {
        budget += n;
        result = budget;
        return chain;
      },
      expire: () => chain,
      exec: async () => [[null, result]],
    };
    return chain;
  };
  return { redis: { multi } as unknown as Redis, appended };
}

const log = (chunk: string) => ({ type: 'layer-log' as const, at: Date.now(), index: 1, name: '02_x', chunk });

describe('JobEvents', () => {
  it("batches a layer's log output into one event per interval, in order with the other events", async () => {
    const { redis, appended } = fakeRedis();
    const ev = new JobEvents(redis, 'b1', 1, 'w1', silentLogger);
    await ev.job('building');
    for (let i = 0; i < 50; i++) ev.engine(log(`line ${i}\n`));
    await new Promise((r) => setTimeout(r, LOG_BATCH_MS + 100));
    ev.engine(log('last\n'));
    ev.engine({ type: 'layer-step', at: Date.now(), index: 1, name: '02_x', step: 'uploading' });
    await ev.job('done', { seconds: 1, bytes: 2 });
    await ev.close();
    const kinds = appended.map((e) => (e.type === 'engine' ? e.event.type : `${e.type}:${'status' in e ? e.status : ''}`));
    expect(kinds).toEqual(['job:building', 'layer-log', 'layer-log', 'layer-step', 'job:done']);
    const chunks = appended.flatMap((e) => (e.type === 'engine' && e.event.type === 'layer-log' ? [e.event.chunk] : []));
    expect(chunks[0]).toBe(Array.from({ length: 50 }, (_, i) => `line ${i}\n`).join(''));
    expect(chunks[1]).toBe('last\n');
    expect(appended.every((e) => e.worker === 'w1')).toBe(true);
  });

  it("sends at most the build's budget of output, then counts what it drops and says so at the layer's end", async () => {
    const { redis, appended } = fakeRedis();
    const ev = new JobEvents(redis, 'b1', 1, 'w1', silentLogger, { budget: 100_000 });
    const line = `${'x'.repeat(99)}\n`;
    for (let i = 0; i < 5000; i++) ev.engine(log(line));
    ev.engine({ type: 'layer-done', at: Date.now(), index: 1, name: '02_x', key: 'k', seconds: 1, bytes: 2 });
    await ev.close();
    const chunks = appended.flatMap((e) => (e.type === 'engine' && e.event.type === 'layer-log' ? [e.event.chunk] : []));
    expect(chunks.every((c) => c.length <= LOG_BATCH_CHARS + 200)).toBe(true);
    const text = chunks.join('');
    const sent = text.split('\n').filter((l) => l === line.trim()).length;
    expect(sent).toBe(1000);
    expect(text).toContain("… output past the build's 97.7 KiB is not streamed here, full log in the store\n");
    expect(text.endsWith(`… 4000 lines dropped (past the build's 97.7 KiB of streamed output), full log in the store\n`)).toBe(true);
    // The marker comes before the layer's end.
    const last = appended[appended.length - 1]!;
    expect(last.type === 'engine' && last.event.type).toBe('layer-done');
  });
});
