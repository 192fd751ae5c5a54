import { describe, expect, it } from 'vitest';
import type { BuildSummary } from './build-records.js';
import { hitRateSeries } from './cache-stats.js';

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
