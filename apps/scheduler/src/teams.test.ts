import { describe, expect, it } from 'vitest';
import { Teams, sha256Hex } from './teams.js';

describe('Teams', () => {
  const teams = Teams.parse(JSON.stringify([{ team: 'web', tokenSha256: sha256Hex('t-web') }, { team: 'ops', tokenSha256: sha256Hex('t-ops'), admin: true }]), 'teams.json');

  it('knows a team by its token, and no one by another', () => {
    expect(teams.authenticate('t-web')).toEqual({ team: 'web', admin: false, pool: 'default' });
    expect(teams.authenticate('t-ops')).toEqual({ team: 'ops', admin: true, pool: 'default' });
    expect(teams.authenticate('t-nobody')).toBeNull();
    expect(teams.authenticate('')).toBeNull();
  });

  it('reads a bearer token', () => {
    expect(Teams.bearer('Bearer abc')).toBe('abc');
    expect(Teams.bearer('bearer abc ')).toBe('abc');
    expect(Teams.bearer('Basic abc')).toBeNull();
    expect(Teams.bearer(undefined)).toBeNull();
  });

  it('reports every problem of a teams file at once', () => {
    const text = JSON.stringify([{ team: 'a b', tokenSha256: 'x' }, { team: 'ok', tokenSha256: sha256Hex('1'), admin: 'yes' }]);
    expect(() => Teams.parse(text, 'teams.json')).toThrow(/3 problems[\s\S]*"team"[\s\S]*"tokenSha256"[\s\S]*"admin"/);
    const twice = JSON.stringify([{ team: 'ok', tokenSha256: sha256Hex('1') }, { team: 'ok', tokenSha256: sha256Hex('1') }]);
    expect(() => Teams.parse(twice, 'teams.json')).toThrow(/2 problems[\s\S]*listed twice[\s\S]*two teams/);
  });

  it('reads pools: a team\'s pool (default: default), the pools it reads, and every problem at once', () => {
    const t = Teams.parse(
      JSON.stringify({ teams: [{ team: 'web', tokenSha256: sha256Hex('a'), pool: 'a' }, { team: 'base', tokenSha256: sha256Hex('b'), pool: 'platform' }, { team: 'x', tokenSha256: sha256Hex('c') }], pools: { a: { reads: ['platform'] } } }),
      'pools',
    );
    expect(t.authenticate('a')).toEqual({ team: 'web', admin: false, pool: 'a' });
    expect(t.authenticate('c')?.pool).toBe('default');
    expect(t.pool('a').reads).toEqual(['platform']);
    expect(t.pools.map((p) => p.name).sort()).toEqual(['a', 'default', 'platform']);
    expect(() =>
      Teams.parse(JSON.stringify({ teams: [{ team: 'web', tokenSha256: sha256Hex('a'), pool: 'bad:name' }], pools: { a: { reads: ['nowhere'] } } }), 'bad'),
    ).toThrow(/entry 0 \(web\): "pool" must be a pool name/);
    expect(() => Teams.parse(JSON.stringify({ teams: [{ team: 'web', tokenSha256: sha256Hex('a') }], pools: { a: { reads: ['nowhere'] } } }), 'bad')).toThrow(
      /pool a reads pool nowhere, which no team is in and "pools" does not list/,
    );
  });
});
