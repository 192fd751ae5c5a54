import { describe, expect, it } from 'vitest';
import type { BuildRecord, LayerRecord } from '@vmlb/fleet';
import { lookupsOf, summarize, type BuildSummary, type StoredRecord } from './build-records.js';
import { hitRateSeries } from './cache-stats.js';
import { foldEvent } from './record-fold.js';

const build = (team: string, createdAt: string, layers: number, hits: number): BuildSummary => ({
  id: `b${Math.random().toString(36).slice(2, 12)}`,
  team,
  state: 'done',
  project: '0'.repeat(64),
  createdAt,
  layers,
  hits,
  built: layers - hits,
});

describe('hitRateSeries', () => {
  const now = Date.parse('2026-11-25T12:30:00Z');

  it('buckets layers and hits by submission time, overall and per team', () => {
    const s = hitRateSeries(
      [build('web', '2026-11-25T12:10:00Z', 4, 0), build('web', '2026-11-25T12:20:00Z', 4, 4), build('data', '2026-11-25T11:59:59Z', 2, 1), build('data', '2026-11-24T00:00:00Z', 9, 9)],
      { now, hours: 3, bucketSeconds: 3600, teams: ['web', 'data', 'ops'] },
    );
    expect(s.from).toBe('2026-11-25T10:00:00.000Z');
    expect(s.to).toBe('2026-11-25T13:00:00.000Z');
    expect(s.overall.map((b) => [b.t.slice(11, 16), b.lookups, b.hits, b.rate])).toEqual([
      ['10:00', 0, 0, null],
      ['11:00', 2, 1, 0.5],
      ['12:00', 8, 4, 0.5],
    ]);
    expect(s.teams.web!.map((b) => b.rate)).toEqual([null, null, 0.5]);
    expect(s.teams.data!.map((b) => b.rate)).toEqual([null, 0.5, null]);
    expect(s.teams.ops!.every((b) => b.lookups === 0)).toBe(true);
  });

  it('lists a team that has builds even when it was not asked for', () => {
    const s = hitRateSeries([build('qa', '2026-11-25T12:00:00Z', 1, 1)], { now, hours: 1, bucketSeconds: 600, teams: [] });
    expect(s.overall).toHaveLength(6);
    expect(s.teams.qa!.at(-4)!.rate).toBe(1);
  });
});

describe('one definition of a lookup (docs/metrics.md)', () => {
  const layer = (index: number, status: LayerRecord['status'], source?: 'shared' | 'local'): LayerRecord => ({ index, name: `0${index}_l`, kind: 'build-layer', key: `k${index}`, status, ...(source ? { source } : {}) });
  const record = (layers: LayerRecord[]): BuildRecord => ({ version: 1, id: 'b0000000001', team: 'web', project: '0'.repeat(64), createdAt: '2026-11-25T12:00:00Z', state: 'failed', layers, image: null });

  it('a build\'s lookups are its hits (shared or local), built and failed layers; a cancelled layer is none', () => {
    const r = record([layer(0, 'hit', 'shared'), layer(1, 'hit', 'local'), layer(2, 'done'), layer(3, 'failed'), layer(4, 'cancelled')]);
    expect(lookupsOf(r)).toBe(4);
    expect(summarize(r)).toMatchObject({ layers: 5, hits: 2, built: 1, lookups: 4 });
  });

  it('a worker-local hit folds into the record as a hit (source local), not as done', () => {
    const r: StoredRecord = { ...record([layer(0, 'hit', 'shared'), layer(1, 'queued')]), state: 'building', output: 'chain' };
    foldEvent(r, { type: 'job', at: Date.now(), index: 1, status: 'building', worker: 'w1' });
    foldEvent(r, { type: 'job', at: Date.now(), index: 1, status: 'done', worker: 'w1', seconds: 0.2, bytes: 10, source: 'local' });
    expect(r.layers[1]).toMatchObject({ status: 'hit', source: 'local', worker: 'w1' });
    expect(r.state).toBe('done');
    expect(summarize(r)).toMatchObject({ hits: 2, built: 0, lookups: 2 });
  });

  it('the series counts lookups, not layers, when the summaries have them', () => {
    const b = { ...build('web', '2026-11-25T12:00:00Z', 5, 3), lookups: 4 };
    const s = hitRateSeries([b], { now: Date.parse('2026-11-25T12:30:00Z'), hours: 1, bucketSeconds: 3600, teams: [] });
    expect(s.overall.reduce((n, x) => n + x.lookups, 0)).toBe(4);
  });
});
