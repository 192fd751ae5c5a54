import { describe, expect, it } from 'vitest';
import type { BuildRecord } from '@vmlb/fleet';
import { DisplayEvents } from './display-events.js';

const key = (c: string) => c.repeat(64);
const rec: BuildRecord = {
  version: 1,
  id: 'b0test0000',
  team: 'web',
  project: key('p'),
  createdAt: '2026-01-01T00:00:00.000Z',
  state: 'building',
  image: null,
  layers: [
    { index: 0, name: '01_base', kind: 'create-disk', key: key('a'), status: 'hit', source: 'shared', bytes: 10 },
    { index: 1, name: '02_tools', kind: 'build-layer', key: key('b'), status: 'queued' },
  ],
};
const url = (p: string) => `s3://bucket/${p}`;

describe('DisplayEvents', () => {
  it('starts with the plan and the hits', () => {
    const d = new DisplayEvents(rec, url);
    expect(d.prelude().map((e) => e.type)).toEqual(['notice', 'plan', 'layer-cached']);
  });

  it('shows a layer start once whether the job status or the engine says it first', () => {
    const d = new DisplayEvents(rec, url);
    const a = d.fromFleet({ type: 'job', at: 1, index: 1, status: 'building', worker: 'w1' });
    const b = d.fromFleet({ type: 'engine', at: 2, index: 1, worker: 'w1', event: { type: 'layer-start', at: 2, index: 1, name: '02_tools', kind: 'build-layer', key: key('b') } });
    const c = d.fromFleet({ type: 'engine', at: 3, index: 1, worker: 'w1', event: { type: 'layer-done', at: 3, index: 1, name: '02_tools', key: key('b'), seconds: 1, bytes: 2 } });
    const dup = d.fromFleet({ type: 'job', at: 4, index: 1, status: 'done', worker: 'w1', seconds: 1, bytes: 2 });
    const types = [...a, ...b, ...c, ...dup].map((e) => e.type);
    expect(types.filter((t) => t === 'layer-start')).toHaveLength(1);
    expect(types.filter((t) => t === 'layer-done')).toHaveLength(1);
  });

  it('leaves a failed layer\'s worker-local log path out: the log is the API\'s', () => {
    const d = new DisplayEvents(rec, url);
    const out = d.fromFleet({
      type: 'engine', at: 2, index: 1, worker: 'w1',
      event: { type: 'layer-failed', at: 2, index: 1, name: '02_tools', key: key('b'), seconds: 1, message: 'layer 02_tools exited with status 3', exitCode: 3, timedOut: false, logPath: '/var/lib/vmlb/layers/x.failed.log', logTail: 'oops' },
    });
    expect(out.find((e) => e.type === 'layer-failed')).toMatchObject({ message: 'layer 02_tools exited with status 3', logPath: '', logTail: 'oops' });
  });

  it('ends with the image, the summary and how to pull it', () => {
    const d = new DisplayEvents(rec, url);
    const done: BuildRecord = { ...rec, state: 'done', finishedAt: '2026-01-01T00:00:10.000Z', image: { key: key('b'), path: `images/${key('b')}.qcow2`, bytes: 5 } };
    const out = d.finale(done);
    expect(out.map((e) => e.type)).toEqual(['output', 'done', 'notice']);
    expect(out[0]).toMatchObject({ path: `s3://bucket/images/${key('b')}.qcow2`, flattened: true });
    expect(out[1]).toMatchObject({ cached: 1, seconds: 10 });
  });

  it('says why a build did not finish', () => {
    const d = new DisplayEvents(rec, url);
    expect(d.finale({ ...rec, state: 'failed', error: 'layer 02_tools failed' })).toMatchObject([{ type: 'failed', message: 'layer 02_tools failed' }]);
    expect(d.finale({ ...rec, state: 'cancelled', error: 'cancelled by web' })).toMatchObject([{ type: 'failed', code: 'CANCELLED' }]);
  });
});
