import { createHash, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { VmlbError } from '@vmlb/layer-engine';

/**
 * Teams and their tokens, from VMLB_TEAMS_FILE: `[{ "team": "web", "tokenSha256": "…", "admin": false }]`.
 * Only token hashes are kept: a request's token is hashed and compared with every team's hash
 * in constant time (no early exit, so the time does not say which team was close).
 */
export interface Team {
  team: string;
  admin: boolean;
}

interface TeamEntry extends Team {
  hash: Buffer;
}

/** Team names go into object names and Redis keys: keep them plain. */
export const TEAM_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

export function sha256Hex(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

export class Teams {
  private constructor(private entries: TeamEntry[]) {}

  /** @throws VmlbError `TEAMS_FILE` listing every problem of the file at once. */
  static parse(text: string, where: string): Teams {
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (e) {
      throw new VmlbError('TEAMS_FILE', `${where} is not JSON: ${(e as Error).message}`);
    }
    if (!Array.isArray(value)) throw new VmlbError('TEAMS_FILE', `${where}: expected a JSON list of { "team", "tokenSha256", "admin"? }`);
    const problems: string[] = [];
    const entries: TeamEntry[] = [];
    const seenTeams = new Set<string>();
    const seenHashes = new Set<string>();
    value.forEach((raw: unknown, i) => {
      const e = (raw ?? {}) as { team?: unknown; tokenSha256?: unknown; admin?: unknown };
      const at = `entry ${i}${typeof e.team === 'string' ? ` (${e.team})` : ''}`;
      const before = problems.length;
      if (typeof e.team !== 'string' || !TEAM_NAME.test(e.team)) problems.push(`${at}: "team" must be a name of letters, digits, . _ - (up to 63)`);
      if (typeof e.tokenSha256 !== 'string' || !/^[0-9a-f]{64}$/.test(e.tokenSha256)) problems.push(`${at}: "tokenSha256" must be the sha256 of the token, 64 lowercase hex digits`);
      if (e.admin !== undefined && typeof e.admin !== 'boolean') problems.push(`${at}: "admin" must be true or false`);
      if (problems.length > before) return;
      const team = e.team as string;
      const hash = e.tokenSha256 as string;
      if (seenTeams.has(team)) problems.push(`${at}: team ${team} is listed twice`);
      if (seenHashes.has(hash)) problems.push(`${at}: the same token hash is given to two teams`);
      seenTeams.add(team);
      seenHashes.add(hash);
      entries.push({ team, admin: e.admin === true, hash: Buffer.from(hash, 'hex') });
    });
    if (problems.length > 0) {
      throw new VmlbError('TEAMS_FILE', `${where} has ${problems.length} problem${problems.length === 1 ? '' : 's'}:\n  ${problems.join('\n  ')}`);
    }
    return new Teams(entries);
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
  }

  get names(): string[] {
    return this.entries.map((e) => e.team);
  }

  /** The team whose token this is, or null. */
  authenticate(token: string): Team | null {
    const hash = createHash('sha256').update(token).digest();
    let found: TeamEntry | null = null;
    for (const e of this.entries) {
      if (timingSafeEqual(hash, e.hash) && !found) found = e;
    }
    return found ? { team: found.team, admin: found.admin } : null;
  }

  /** The bearer token of an Authorization header, or null. */
  static bearer(header: string | undefined): string | null {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(header ?? '');
    return m ? m[1]! : null;
  }
}
