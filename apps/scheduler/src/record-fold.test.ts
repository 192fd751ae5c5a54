import { describe, expect, it } from 'vitest';
import type { FleetEvent } from '@vmlb/fleet';
import type { StoredRecord } from './build-records.js';
import { cancelBuild, failBuild, foldEvent, layerFailureLine } from './record-fold.js';

const key = (c: string) => c.repeat(64);

function record(): StoredRecord {
  return {
    version: 1,
    id: 'b0test0000',
    team: 'web',
    project: key('p'),
    createdAt: '2026-01-01T00:00:00.000Z',
    state: 'queued',
    image: null,
    layers: [
      { index: 0, name: '01_base', kind: 'create-disk', key: key('a'), status: 'hit', source: 'shared' },
      { index: 1, name: '02_tools', kind: 'build-layer', key: key('b'), status: 'queued' },
      { index: 2, name: '03_app', kind: 'build-layer', key: key('c'), status: 'queued' },
    ],
  };
}

const job = (index: number, status: Extract<FleetEvent, { type: 'job' }>['status'], extra: Partial<Extract<FleetEvent, { type: 'job' }>> = {}): FleetEvent => ({
  type: 'job', at: 1000, index, status, worker: 'w1', ...extra,
});

describe('foldEvent', () => {
  it('follows a layer from building to done, and the build to done with its image', () => {
    const r = record();
    expect(foldEvent(r, job(1, 'building'))).toBe(true);
    expect(r.state).toBe('building');
    expect(r.layers[1]).toMatchObject({ status: 'building', worker: 'w1', startedAt: new Date(1000).toISOString() });
    expect(foldEvent(r, job(1, 'done', { seconds: 2.5, bytes: 1234 }))).toBe(true);
    expect(r.layers[1]).toMatchObject({ status: 'done', seconds: 2.5, bytes: 1234 });
    const image = { key: key('c'), path: `images/${key('c')}.qcow2`, bytes: 99 };
    expect(foldEvent(r, { type: 'flatten', at: 5000, status: 'done', worker: 'w2', image })).toBe(true);
    expect(r).toMatchObject({ state: 'done', image, finishedAt: new Date(5000).toISOString() });
  });

  it('ends in the same record when a restart folds the same events again', () => {
    const r = record();
    const events = [job(1, 'building'), job(1, 'done', { seconds: 1, bytes: 2 }), job(2, 'building')];
    for (const e of events) foldEvent(r, e);
    const once = JSON.stringify(r);
    for (const e of events) foldEvent(r, e);
    expect(JSON.stringify(r)).toBe(once);
    expect(foldEvent(r, events[2]!)).toBe(false);
  });

  it('does not call a build failed on a layer failure (BullMQ says whether it is final)', () => {
    const r = record();
    foldEvent(r, job(1, 'building'));
    foldEvent(r, job(1, 'failed', { exitCode: 3, logTail: 'boom' }));
    expect(r.layers[1]).toMatchObject({ status: 'failed', exitCode: 3, logTail: 'boom' });
    expect(r.state).toBe('building');
    // A retry starts the layer clean.
    foldEvent(r, job(1, 'building'));
    expect(r.layers[1]!.status).toBe('building');
    expect(r.layers[1]!.exitCode).toBeUndefined();
  });

  it('takes a job that found its layer already shared as a hit', () => {
    const r = record();
    foldEvent(r, job(1, 'waiting'));
    foldEvent(r, job(1, 'done', { message: 'built by another build' }));
    expect(r.layers[1]).toMatchObject({ status: 'hit', source: 'shared' });
  });

  it('folds the engine\'s own layer events too', () => {
    const r = record();
    foldEvent(r, { type: 'engine', at: 10, index: 2, worker: 'w3', event: { type: 'layer-start', at: 10, index: 2, name: '03_app', kind: 'build-layer', key: key('c') } });
    expect(r.layers[2]).toMatchObject({ status: 'building', worker: 'w3' });
    foldEvent(r, { type: 'engine', at: 20, index: 2, worker: 'w3', event: { type: 'layer-done', at: 20, index: 2, name: '03_app', key: key('c'), seconds: 4, bytes: 5 } });
    expect(r.layers[2]).toMatchObject({ status: 'done', seconds: 4, bytes: 5 });
  });

  it('ignores everything once the build is final, and events about hits or unknown layers', () => {
    const r = record();
    expect(foldEvent(r, job(0, 'building'))).toBe(false);
    expect(foldEvent(r, job(7, 'building'))).toBe(false);
    cancelBuild(r, 'web', 3000);
    expect(r.layers.map((l) => l.status)).toEqual(['hit', 'cancelled', 'cancelled']);
    expect(foldEvent(r, job(1, 'done', { seconds: 1 }))).toBe(false);
    failBuild(r, 'late');
    expect(r.state).toBe('cancelled');
  });
});

describe('layerFailureLine', () => {
  it('says a failed script once, in one line, with no worker path', () => {
    expect(layerFailureLine('07_fail', 'layer 07_fail exited with status 1')).toBe('layer 07_fail exited with status 1');
    // A worker of before put the log's tail and its local path after the first line.
    expect(layerFailureLine('07_fail', 'layer 07_fail exited with status 1\n--- last lines of its log (/var/lib/vmlb/layers/ab.failed.log) ---\noops\n')).toBe('layer 07_fail exited with status 1');
    expect(layerFailureLine('07_fail', 'layer 07_fail failed: layer 07_fail exited with status 1')).toBe('layer 07_fail exited with status 1');
  });

  it('names the layer before any other reason, and joins a multi-line one', () => {
    expect(layerFailureLine('02_x', 'qemu-img convert exited with 1:\n  No space left on device')).toBe('layer 02_x failed: qemu-img convert exited with 1: No space left on device');
    expect(layerFailureLine('02_x', undefined)).toBe('layer 02_x failed');
    expect(layerFailureLine('02.x', 'layer 02.x passed its # timeout and was stopped')).toBe('layer 02.x passed its # timeout and was stopped');
  });
});
