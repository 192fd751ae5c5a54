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

  it('names tokens within a team: "name" beside one token, or a list of "tokens"', () => {
    const t = Teams.parse(
      JSON.stringify([
        { team: 'web', tokens: [{ name: 'alice', tokenSha256: sha256Hex('a') }, { name: 'ci', tokenSha256: sha256Hex('c') }] },
        { team: 'ops', tokenSha256: sha256Hex('o'), name: 'oncall', admin: true },
        { team: 'data', tokenSha256: sha256Hex('d') },
      ]),
      'named',
    );
    expect(t.authenticate('a')).toEqual({ team: 'web', admin: false, pool: 'default', tokenName: 'alice' });
    expect(t.authenticate('c')).toEqual({ team: 'web', admin: false, pool: 'default', tokenName: 'ci' });
    expect(t.authenticate('o')).toEqual({ team: 'ops', admin: true, pool: 'default', tokenName: 'oncall' });
    expect(t.authenticate('d')).toEqual({ team: 'data', admin: false, pool: 'default' });
    expect(t.names).toEqual(['web', 'ops', 'data']);
    expect(t.list).toEqual([{ team: 'web', pool: 'default' }, { team: 'ops', pool: 'default' }, { team: 'data', pool: 'default' }]);
    const bad = JSON.stringify([{ team: 'web', tokens: [{ name: '', tokenSha256: sha256Hex('3') }, { name: 'b', tokenSha256: 'x' }] }]);
    expect(() => Teams.parse(bad, 'bad')).toThrow(/2 problems[\s\S]*tokens\[0\]: "name"[\s\S]*tokens\[1\] \(b\): "tokenSha256"/);
    const twice = JSON.stringify([{ team: 'web', tokens: [{ name: 'a', tokenSha256: sha256Hex('1') }, { name: 'a', tokenSha256: sha256Hex('2') }] }]);
    expect(() => Teams.parse(twice, 'twice')).toThrow(/1 problem:[\s\S]*two tokens are named a/);
  });
});
