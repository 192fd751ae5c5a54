import { describe, expect, it } from 'vitest';
import { Teams, sha256Hex } from './teams.js';

describe('Teams', () => {
  const teams = Teams.parse(JSON.stringify([{ team: 'web', tokenSha256: sha256Hex('t-web') }, { team: 'ops', tokenSha256: sha256Hex('t-ops'), admin: true }]), 'teams.json');

  it('knows a team by its token, and no one by another', () => {
    expect(teams.authenticate('t-web')).toEqual({ team: 'web', admin: false });
    expect(teams.authenticate('t-ops')).toEqual({ team: 'ops', admin: true });
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
});
