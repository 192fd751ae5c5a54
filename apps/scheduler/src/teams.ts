import { createHash, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { VmlbError } from '@vmlb/layer-engine';
import { DEFAULT_POOL, POOL_NAME } from '@vmlb/fleet';

/**
 * Teams and their tokens, from VMLB_TEAMS_FILE, with the pools they build in (pools.ts):
 *
 *   { "teams": [{ "team": "web", "tokenSha256": "…", "admin": false, "pool": "a" }, …],
 *     "pools": { "a": { "reads": ["platform"] }, "platform": {} } }
 *
 * or, as before pools, just the list of teams (every team in pool `default`). A token may have a
 * name within its team (who or what holds it: "alice", "ci"), recorded as a build's submitter:
 * `"name"` beside `"tokenSha256"`, or several tokens of one team as
 * `"tokens": [{ "name": "alice", "tokenSha256": "…" }, …]` (instead of, or besides, `tokenSha256`). A team names no
 * pool: `default`. A pool named by a team or a `reads` must be a valid name; `reads` may only
 * name pools that exist (a team's, or one listed under "pools").
 * Only token hashes are kept: a request's token is hashed and compared with every team's hash
 * in constant time (no early exit, so the time does not say which team was close).
 */
export interface Team {
  team: string;
  admin: boolean;
  pool: string;
  /** The name of the token within the team, when the teams file gives one. */
  tokenName?: string;
}

export interface Pool {
  name: string;
  /** Pools whose layers count as hits for this one (read only). */
  reads: string[];
}

interface TeamEntry extends Team {
  hash: Buffer;
}

/** Token names: shown and searched as a build's submitter. */
export const TOKEN_NAME = /^[A-Za-z0-9][A-Za-z0-9 ._@+-]{0,62}$/;

/** Team names go into object names and Redis keys: keep them plain. */
export const TEAM_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

export function sha256Hex(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

export class Teams {
  private constructor(
    private entries: TeamEntry[],
    private poolMap: Map<string, Pool>,
  ) {}

  /** @throws VmlbError `TEAMS_FILE` listing every problem of the file at once. */
  static parse(text: string, where: string): Teams {
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (e) {
      throw new VmlbError('TEAMS_FILE', `${where} is not JSON: ${(e as Error).message}`);
    }
    const shape = `expected { "teams": [{ "team", "tokenSha256", "name"?, "tokens"?: [{ "name", "tokenSha256" }], "admin"?, "pool"? }], "pools"?: { NAME: { "reads"?: [NAME] } } } or a JSON list of teams`;
    let list: unknown = value;
    let poolsValue: unknown = {};
    if (!Array.isArray(value)) {
      if (!value || typeof value !== 'object' || !Array.isArray((value as { teams?: unknown }).teams)) throw new VmlbError('TEAMS_FILE', `${where}: ${shape}`);
      list = (value as { teams: unknown[] }).teams;
      poolsValue = (value as { pools?: unknown }).pools ?? {};
    }
    const problems: string[] = [];
    const poolMap = new Map<string, Pool>([[DEFAULT_POOL, { name: DEFAULT_POOL, reads: [] }]]);
    if (!poolsValue || typeof poolsValue !== 'object' || Array.isArray(poolsValue)) problems.push(`"pools" must be an object of pool name → { "reads": [pool names] }`);
    else {
      for (const [name, raw] of Object.entries(poolsValue as Record<string, unknown>)) {
        const reads = (raw as { reads?: unknown } | null)?.reads ?? [];
        if (!POOL_NAME.test(name)) problems.push(`pool "${name}": a pool name is letters, digits, . _ - (up to 63)`);
        else if (!Array.isArray(reads) || reads.some((r) => typeof r !== 'string' || !POOL_NAME.test(r))) problems.push(`pool ${name}: "reads" must be a list of pool names`);
        else poolMap.set(name, { name, reads: [...new Set(reads as string[])].filter((r) => r !== name) });
      }
    }
    const problemsBefore = problems.length;
    const entries: TeamEntry[] = [];
    const seenTeams = new Set<string>();
    const seenHashes = new Set<string>();
    (list as unknown[]).forEach((raw: unknown, i) => {
      const e = (raw ?? {}) as { team?: unknown; tokenSha256?: unknown; name?: unknown; tokens?: unknown; admin?: unknown; pool?: unknown };
      const at = `entry ${i}${typeof e.team === 'string' ? ` (${e.team})` : ''}`;
      const before = problems.length;
      const hashOk = (h: unknown) => typeof h === 'string' && /^[0-9a-f]{64}$/.test(h);
      const nameOk = (n: unknown) => n === undefined || (typeof n === 'string' && TOKEN_NAME.test(n));
      if (typeof e.team !== 'string' || !TEAM_NAME.test(e.team)) problems.push(`${at}: "team" must be a name of letters, digits, . _ - (up to 63)`);
      const tokens: Array<{ hash: string; name?: string }> = [];
      if (e.tokenSha256 !== undefined || e.tokens === undefined) {
        if (!hashOk(e.tokenSha256)) problems.push(`${at}: "tokenSha256" must be the sha256 of the token, 64 lowercase hex digits`);
        else tokens.push({ hash: e.tokenSha256 as string, ...(typeof e.name === 'string' ? { name: e.name } : {}) });
      }
      if (!nameOk(e.name)) problems.push(`${at}: "name" (the token's name) must be letters, digits, space . _ @ + - (up to 63)`);
      if (e.tokens !== undefined) {
        if (!Array.isArray(e.tokens)) problems.push(`${at}: "tokens" must be a list of { "name", "tokenSha256" }`);
        else
          e.tokens.forEach((t: unknown, j) => {
            const x = (t ?? {}) as { name?: unknown; tokenSha256?: unknown };
            if (typeof x.name !== 'string' || !TOKEN_NAME.test(x.name)) problems.push(`${at}: tokens[${j}]: "name" must be letters, digits, space . _ @ + - (up to 63)`);
            else if (!hashOk(x.tokenSha256)) problems.push(`${at}: tokens[${j}] (${x.name}): "tokenSha256" must be the sha256 of the token, 64 lowercase hex digits`);
            else tokens.push({ hash: x.tokenSha256 as string, name: x.name });
          });
      }
      if (e.admin !== undefined && typeof e.admin !== 'boolean') problems.push(`${at}: "admin" must be true or false`);
      if (e.pool !== undefined && (typeof e.pool !== 'string' || !POOL_NAME.test(e.pool))) problems.push(`${at}: "pool" must be a pool name: letters, digits, . _ - (up to 63)`);
      if (problems.length > before) return;
      const pool = (e.pool as string | undefined) ?? DEFAULT_POOL;
      if (!poolMap.has(pool)) poolMap.set(pool, { name: pool, reads: [] });
      const team = e.team as string;
      if (seenTeams.has(team)) problems.push(`${at}: team ${team} is listed twice`);
      seenTeams.add(team);
      const names = new Set<string>();
      for (const t of tokens) {
        if (seenHashes.has(t.hash)) problems.push(`${at}: the same token hash is given to two teams`);
        if (t.name !== undefined && names.has(t.name)) problems.push(`${at}: two tokens are named ${t.name}`);
        seenHashes.add(t.hash);
        if (t.name !== undefined) names.add(t.name);
        entries.push({ team, admin: e.admin === true, pool, hash: Buffer.from(t.hash, 'hex'), ...(t.name !== undefined ? { tokenName: t.name } : {}) });
      }
    });
    if (problems.length === problemsBefore) {
      for (const p of poolMap.values()) {
        for (const r of p.reads) if (!poolMap.has(r)) problems.push(`pool ${p.name} reads pool ${r}, which no team is in and "pools" does not list`);
      }
    }
    if (problems.length > 0) {
      throw new VmlbError('TEAMS_FILE', `${where} has ${problems.length} problem${problems.length === 1 ? '' : 's'}:\n  ${problems.join('\n  ')}`);
    }
    return new Teams(entries, poolMap);
  }

  static async load(file: string): Promise<Teams> {
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (e) {
      throw new VmlbError('TEAMS_FILE', `cannot read the teams file ${file} (VMLB_TEAMS_FILE): ${(e as Error).message}`);
    }
    return Teams.parse(text, `the teams file ${file}`);
  }

  /** Takes the teams of `other` (a reloaded file): requests from then on see only those. */
  replaceWith(other: Teams): void {
    this.entries = other.entries;
    this.poolMap = other.poolMap;
  }

  /** Every pool: those of the teams, those the file lists, and `default`. */
  get pools(): Pool[] {
    return [...this.poolMap.values()];
  }

  pool(name: string): Pool {
    return this.poolMap.get(name) ?? { name, reads: [] };
  }

  get names(): string[] {
    return [...new Set(this.entries.map((e) => e.team))];
  }

  /** Every team with its pool. */
  get list(): Array<{ team: string; pool: string }> {
    const seen = new Set<string>();
    return this.entries.filter((e) => !seen.has(e.team) && seen.add(e.team)).map((e) => ({ team: e.team, pool: e.pool }));
  }

  /** The team whose token this is, or null. */
  authenticate(token: string): Team | null {
    const hash = createHash('sha256').update(token).digest();
    let found: TeamEntry | null = null;
    for (const e of this.entries) {
      if (timingSafeEqual(hash, e.hash) && !found) found = e;
    }
    if (!found) return null;
    return { team: found.team, admin: found.admin, pool: found.pool, ...(found.tokenName !== undefined ? { tokenName: found.tokenName } : {}) };
  }

  /** The bearer token of an Authorization header, or null. */
  static bearer(header: string | undefined): string | null {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(header ?? '');
    return m ? m[1]! : null;
  }
}
