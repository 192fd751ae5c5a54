import { describe, expect, it } from 'vitest';
import { grafanaTemplate } from './project-routes.js';

describe('VMLB_GRAFANA_URL', () => {
  const build = { id: 'b0abc12345', team: 'web', pool: 'a', createdAt: '2026-12-02T10:00:00.000Z', finishedAt: '2026-12-02T10:05:00.000Z' };
  const from = Date.parse(build.createdAt) - 60_000;
  const to = Date.parse(build.finishedAt) + 60_000;

  it('fills its placeholders, encoded; a running build ends at now', () => {
    const t = grafanaTemplate('https://g.example/d/vmlb-fleet/vmlb?var-team={team}&var-pool={pool}&from={from}&to={to}&build={build}');
    expect(t(build)).toBe(`https://g.example/d/vmlb-fleet/vmlb?var-team=web&var-pool=a&from=${from}&to=${to}&build=b0abc12345`);
    expect(t({ ...build, finishedAt: undefined, team: 'a b' })).toBe(`https://g.example/d/vmlb-fleet/vmlb?var-team=a%20b&var-pool=a&from=${from}&to=now&build=b0abc12345`);
    expect(grafanaTemplate('http://p:9090/graph?x={team}')({ ...build, pool: undefined })).toBe('http://p:9090/graph?x=web');
  });

  it('adds from and to to a URL without placeholders', () => {
    expect(grafanaTemplate('https://g.example/d/vmlb-fleet/vmlb?orgId=1')(build)).toBe(`https://g.example/d/vmlb-fleet/vmlb?orgId=1&from=${from}&to=${to}`);
  });

  it('refuses what is not an http(s) URL, or names an unknown placeholder', () => {
    expect(() => grafanaTemplate('grafana')).toThrow(/VMLB_GRAFANA_URL: "grafana" is not a URL/);
    expect(() => grafanaTemplate('ftp://g/x')).toThrow(/must be an http:\/\/ or https:\/\/ URL/);
    expect(() => grafanaTemplate('https://g/x?b={bulid}')).toThrow(/unknown placeholder \{bulid\}/);
  });
});
