/**
 * history-scale's records: a seeded generator of a fleet's builds, so that two runs write the
 * same records (times relative to the run's start).
 */
import type { BuildState, LayerRecord } from '@vmlb/fleet';
import type { StoredRecord } from '../apps/scheduler/src/build-records.js';

export const TEAM_COUNT = 100;
export const DAY_MS = 86_400_000;
const SEED = 0x5eed_2026;

/** mulberry32: a small, fast, seeded PRNG of floats in [0, 1). */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const HEX = '0123456789abcdef';
function hex(rand: () => number, n: number): string {
  let s = '';
  for (let i = 0; i < n; i++) s += HEX[(rand() * 16) | 0];
  return s;
}
const pick = <T>(rand: () => number, xs: readonly T[]): T => xs[(rand() * xs.length) | 0]!;

const WORDS_A = ['edge', 'billing', 'search', 'ledger', 'auth', 'media', 'vision', 'payments', 'infra', 'storefront', 'telemetry', 'mail', 'maps', 'chat', 'catalog', 'fraud', 'identity', 'backup', 'ingest', 'render'];
const WORDS_B = ['router', 'api', 'worker', 'gateway', 'pipeline', 'service', 'frontend', 'db', 'cache', 'agent', 'scheduler', 'runner', 'proxy', 'indexer', 'builder'];
const PEOPLE = ['ana', 'bo', 'cy', 'dee', 'eli', 'fay', 'gus', 'hal', 'ivy', 'jo', 'kai', 'lu', 'max', 'nia', 'oto', 'pia', 'quin', 'rey', 'sol', 'tam', 'uma', 'vic', 'wen', 'xia', 'yul', 'zed'];
const TOPICS = ['tls', 'login', 'cache', 'retry', 'metrics', 'upgrade', 'kernel', 'logging', 'quota', 'deps', 'ipv6', 'timeouts'];
const LAYER_NAMES: Array<[string, LayerRecord['kind']]> = [
  ['base', 'base-image'],
  ['packages', 'build-layer'],
  ['users', 'modify-disk'],
  ['runtime', 'build-layer'],
  ['app', 'build-layer'],
  ['config', 'modify-disk'],
  ['tests', 'build-layer'],
  ['seal', 'build-layer'],
];
/** Of each layer, the chance that a build changes it (and so every layer after it). */
const CHANGE = [0.004, 0.02, 0.03, 0.05, 0.35, 0.2, 0.3, 0.4];
export const POOLS = ['default', 'default', 'default', 'gpu', 'arm', 'secure'];

interface Project {
  name: string;
  layers: number;
  keys: string[];
  /** Whether each layer of the current keys is in the shared store. */
  cached: boolean[];
  /** Seconds each layer takes to build. */
  cost: number[];
  branches: string[];
}

interface TeamProfile {
  team: string;
  pool: string;
  projects: Project[];
  submitters: string[];
  /** How many builds this team makes relative to the others. */
  weight: number;
  workers: string[];
}

export const teamName = (i: number) => `team${String(i).padStart(2, '0')}`;

function profiles(rand: () => number, teams: number): TeamProfile[] {
  const out: TeamProfile[] = [];
  for (let t = 0; t < teams; t++) {
    const pool = POOLS[t % POOLS.length]!;
    const projects: Project[] = [];
    const count = 3 + ((rand() * 6) | 0);
    const names = new Set<string>();
    while (names.size < count) names.add(`${pick(rand, WORDS_A)}-${pick(rand, WORDS_B)}`);
    for (const name of names) {
      const layers = 3 + ((rand() * 6) | 0);
      const branches = ['main', 'main', 'main', 'develop', `release/2026.${1 + ((rand() * 12) | 0)}`];
      for (let i = 0; i < 4; i++) branches.push(`${pick(rand, ['feature', 'fix', 'chore'])}/${pick(rand, TOPICS)}-${(rand() * 900 + 100) | 0}`);
      projects.push({
        name,
        layers,
        keys: Array.from({ length: layers }, () => hex(rand, 64)),
        cached: Array.from({ length: layers }, () => false),
        cost: Array.from({ length: layers }, (_, i) => (i === 0 ? 20 : 5) + rand() * (i === 0 ? 40 : 240)),
        branches,
      });
    }
    const people = Array.from({ length: 4 + ((rand() * 10) | 0) }, () => `${pick(rand, PEOPLE)}${(rand() * 90 + 10) | 0}`);
    const submitters = [`ci-${teamName(t)}@ci`, `ci-${teamName(t)}@ci`, ...people.map((p) => `${p}@${pick(rand, ['laptop', 'dev-vm', 'ws'])}`)];
    const workers = Array.from({ length: 8 }, (_, i) => `${pool}-w${String(i + 1).padStart(2, '0')}`);
    out.push({ team: teamName(t), pool, projects, submitters, weight: 0.3 + rand() * 1.7, workers });
  }
  return out;
}

/**
 * `n` records, oldest first, from `from` to `to` (ms), each of a team picked by its weight: a
 * project of the team, a branch and commit, a submitter; its layers hit while their keys are
 * cached, a changed layer (and every one after it) built; of the builds that build a layer, 8%
 * fail and 4% are cancelled at one of those layers (so about 95% of all end done).
 */
export function* generateRecords(n: number, o: { from: number; to: number; teams?: number; seed?: number }): Generator<StoredRecord> {
  const rand = prng(o.seed ?? SEED);
  const teams = profiles(rand, o.teams ?? TEAM_COUNT);
  const cumulative: number[] = [];
  let total = 0;
  for (const t of teams) cumulative.push((total += t.weight));
  const step = (o.to - o.from) / n;
  for (let i = 0; i < n; i++) {
    const created = Math.floor(o.from + i * step + rand() * step);
    const w = rand() * total;
    let lo = 0;
    let hi = cumulative.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (cumulative[mid]! < w) lo = mid + 1;
      else hi = mid;
    }
    const team = teams[lo]!;
    const p = pick(rand, team.projects);
    // Which layer this build changes first (p.layers: none; every layer a hit when cached).
    let changed = p.layers;
    for (let j = 0; j < p.layers; j++) {
      if (rand() < CHANGE[j]!) {
        changed = j;
        break;
      }
    }
    for (let j = changed; j < p.layers; j++) {
      p.keys[j] = hex(rand, 64);
      p.cached[j] = false;
    }
    const roll = rand();
    const state: BuildState = roll < 0.88 ? 'done' : roll < 0.96 ? 'failed' : 'cancelled';
    const toBuild = p.cached.reduce((k, c) => (c ? k : k + 1), 0);
    // A failed or cancelled build stops at one of the layers it builds (if it builds none, it is done).
    const stopAt = state !== 'done' && toBuild > 0 ? p.layers - toBuild + ((rand() * toBuild) | 0) : -1;
    const finalState: BuildState = stopAt < 0 ? 'done' : state;
    const layers: LayerRecord[] = [];
    let t = created + 500 + rand() * 2000;
    const worker = pick(rand, team.workers);
    for (let j = 0; j < p.layers; j++) {
      const [name, kind] = LAYER_NAMES[j]!;
      const l: LayerRecord = { index: j, name: `${String(j + 1).padStart(2, '0')}_${name}`, kind, key: p.keys[j]!, status: 'hit' };
      if (p.cached[j]) {
        l.source = 'shared';
      } else if (stopAt >= 0 && j > stopAt) {
        l.status = 'cancelled';
      } else {
        const seconds = Math.round(p.cost[j]! * (0.7 + rand() * 0.6) * 10) / 10;
        l.worker = worker;
        l.startedAt = new Date(t).toISOString();
        t += seconds * 1000;
        l.finishedAt = new Date(t).toISOString();
        l.seconds = seconds;
        if (j === stopAt) {
          l.status = finalState === 'failed' ? 'failed' : 'cancelled';
          if (finalState === 'failed') {
            l.exitCode = pick(rand, [1, 1, 2, 100, 127]);
            l.logTail = `+ ./install.sh\nE: step ${j + 1} of ${l.name} failed\nexit status ${l.exitCode}\n`;
          }
        } else {
          l.status = 'done';
          l.bytes = Math.round((j === 0 ? 300 : 5) * 1048576 * (0.5 + rand()));
          if (j > 0) l.pulledBytes = Math.round(200 * 1048576 * rand());
        }
      }
      layers.push(l);
    }
    if (finalState === 'done') p.cached.fill(true);
    else for (let j = stopAt; j < p.layers; j++) p.cached[j] = false;
    const finishedAt = new Date(Math.round(t + 300 + rand() * 1500)).toISOString();
    const r: StoredRecord = {
      version: 1,
      id: `b${created.toString(36).padStart(9, '0')}${hex(rand, 10)}`,
      team: team.team,
      pool: team.pool,
      project: hex(rand, 64),
      projectName: p.name,
      gitCommit: hex(rand, 40),
      gitBranch: pick(rand, p.branches),
      submitter: pick(rand, team.submitters),
      createdAt: new Date(created).toISOString(),
      finishedAt,
      state: finalState,
      layers,
      output: 'chain',
      image: null,
      cursor: `${Math.round(t)}-0`,
    };
    if (finalState === 'failed') r.error = `layer ${layers[stopAt]!.name} failed with exit code ${layers[stopAt]!.exitCode}`;
    if (finalState === 'cancelled') r.error = `cancelled by ${team.team}`;
    yield r;
  }
}
