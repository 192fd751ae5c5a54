/**
 * The dev fleet's teams (VMLB_FLEET_TEAMS, VMLB_FLEET_READS; dev-fleet.ts): one admin team `dev`
 * in pool `default` unless given, and the shell variable each team's token is printed as.
 */

/** A fleet's teams and pools, from VMLB_FLEET_TEAMS and VMLB_FLEET_READS; throws naming what is wrong. */
export function fleetTeams(env: NodeJS.ProcessEnv): { teams: Array<{ team: string; pool: string }>; reads: Map<string, string[]>; admin: boolean } {
  const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
  const problems: string[] = [];
  const pairs = (name: string, text: string) =>
    text
      .split(',')
      .map((x) => x.trim())
      .filter(Boolean)
      .map((item) => {
        const [a = '', b, ...rest] = item.split(':');
        if (!NAME.test(a) || (b !== undefined && !NAME.test(b)) || rest.length) problems.push(`${name}: "${item}" is not NAME:POOL (letters, digits, . _ -)`);
        return [a, b] as const;
      });
  const given = env.VMLB_FLEET_TEAMS?.trim();
  const teams = given ? pairs('VMLB_FLEET_TEAMS', given).map(([team, pool]) => ({ team, pool: pool ?? 'default' })) : [{ team: 'dev', pool: 'default' }];
  const seen = new Set<string>();
  for (const t of teams) {
    if (seen.has(t.team)) problems.push(`VMLB_FLEET_TEAMS: team ${t.team} is named twice`);
    seen.add(t.team);
  }
  const reads = new Map<string, string[]>();
  const pools = new Set(teams.map((t) => t.pool));
  for (const [pool, trusted] of pairs('VMLB_FLEET_READS', env.VMLB_FLEET_READS ?? '')) {
    if (!trusted) continue;
    if (!pools.has(pool) || !pools.has(trusted)) problems.push(`VMLB_FLEET_READS: ${pool}:${trusted} names a pool no team of VMLB_FLEET_TEAMS is in (pools: ${[...pools].join(', ')})`);
    reads.set(pool, [...(reads.get(pool) ?? []), trusted]);
  }
  if (problems.length) throw new Error(problems.join('; '));
  return { teams, reads, admin: !given };
}

/** `VMLB_TOKEN_<TEAM>`: the team's name upper-cased, anything but letters and digits as `_`. */
export function tokenVariable(team: string): string {
  return `VMLB_TOKEN_${team.toUpperCase().replace(/[^A-Z0-9]/g, '_')}`;
}
