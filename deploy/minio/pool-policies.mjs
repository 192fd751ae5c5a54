#!/usr/bin/env node
// The shared store's access rules, one set per pool, generated from the teams file (deploy/README.md,
// "Credentials"). Plain Node (no packages): compose's minio-policies one-shot runs it in a stock
// node image, the tests import it (test/pool-credentials.test.ts, test/deploy.test.ts).
//
//   node deploy/minio/pool-policies.mjs TEAMS_FILE s3://BUCKET/PREFIX OUT_DIR
//
// writes OUT_DIR/pool-<pool>.json for every pool (MinIO IAM policies: a worker of the pool may
// read and write its own namespace and read the pools it trusts, nothing else),
// OUT_DIR/scheduler.json (everything under PREFIX) and OUT_DIR/pools (the pool names, one a line),
// and removes any other pool-*.json there. deploy/minio/pool-credentials.sh applies them with mc.
//
// The namespaces (libs/fleet/src/pools.ts), relative to PREFIX:
//   pools/<pool>/…                      every pool but `default`: layers/ images/ projects/ uses/ logs/
//   layers/ images/ projects/ uses/ logs/   pool `default` (the store as it was before pools)
//   builds/ teams/                      the scheduler's only
//
// The same statements, with a Principal each, make one S3 bucket policy (rgwBucketPolicy: Ceph
// radosgw, AWS S3), which is how the tests prove the rules on a server that enforces them.

import { mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const DEFAULT_POOL = 'default';
/** As the fleet's POOL_NAME (libs/fleet/src/pools.ts) and TEAM_NAME. */
export const POOL_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
/** What pool `default` keeps directly under PREFIX (every other pool has it under pools/<pool>/). */
export const DEFAULT_POOL_DIRS = ['layers', 'images', 'projects', 'uses', 'logs'];

/** Worker of a pool, in its own namespace. */
export const OWN_OBJECT_ACTIONS = ['s3:GetObject', 's3:PutObject', 's3:DeleteObject', 's3:AbortMultipartUpload', 's3:ListMultipartUploadParts'];
/** Worker of a pool, in a namespace it trusts. */
export const TRUSTED_OBJECT_ACTIONS = ['s3:GetObject'];
/** The scheduler, under PREFIX. */
export const SCHEDULER_OBJECT_ACTIONS = OWN_OBJECT_ACTIONS;
export const SCHEDULER_BUCKET_ACTIONS = ['s3:ListBucket', 's3:ListBucketMultipartUploads', 's3:GetBucketLocation'];

/**
 * The pools of a teams file: the object form `{ "teams": [{ team, tokenSha256, admin?, pool? }],
 * "pools": { "<pool>": { "reads": ["<pool>", …] } } }` or the old plain list of teams (every team
 * in pool `default`, no reads). A pool named only by a team has no reads.
 * @param {string} text
 * @param {string} [where]
 * @returns {{ pools: Record<string, { reads: string[] }>, teams: Array<{ team: string, pool: string }> }}
 */
export function parseTeamsPools(text, where = 'the teams file') {
  let value;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new Error(`${where} is not JSON: ${e.message}`);
  }
  const problems = [];
  const list = Array.isArray(value) ? value : value && typeof value === 'object' ? value.teams : undefined;
  if (!Array.isArray(list)) throw new Error(`${where}: expected { "teams": [ … ], "pools": { … } } or a list of teams`);
  const declared = Array.isArray(value) ? {} : (value.pools ?? {});
  if (!declared || typeof declared !== 'object' || Array.isArray(declared)) throw new Error(`${where}: "pools" must be an object { "<pool>": { "reads": [ … ] } }`);
  /** @type {Record<string, { reads: string[] }>} */
  const pools = {};
  for (const [name, def] of Object.entries(declared)) {
    if (!POOL_NAME.test(name)) problems.push(`pool "${name}": a pool name is letters, digits, . _ - (up to 63)`);
    const reads = def?.reads ?? [];
    if (!def || typeof def !== 'object' || !Array.isArray(reads) || reads.some((r) => typeof r !== 'string')) {
      problems.push(`pool "${name}": expected { "reads": ["<pool>", …] }`);
      continue;
    }
    pools[name] = { reads: [...new Set(reads.filter((r) => r !== name))] };
  }
  const teams = [];
  list.forEach((t, i) => {
    const team = typeof t?.team === 'string' ? t.team : `entry ${i}`;
    const pool = t?.pool ?? DEFAULT_POOL;
    if (typeof pool !== 'string' || !POOL_NAME.test(pool)) {
      problems.push(`team ${team}: "pool" must be a pool name`);
      return;
    }
    pools[pool] ??= { reads: [] };
    teams.push({ team, pool });
  });
  for (const [name, def] of Object.entries(pools)) {
    for (const r of def.reads) if (!pools[r]) problems.push(`pool "${name}" reads "${r}", which is not a pool of the file`);
  }
  if (problems.length) throw new Error(`${where}: ${problems.join('; ')}`);
  return { pools, teams };
}

/**
 * BUCKET and PREFIX of `s3://BUCKET/PREFIX` (PREFIX with a trailing slash, or '').
 * @param {string} url
 */
export function parseShared(url) {
  const m = /^s3:\/\/([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:\/(.*))?$/.exec(url ?? '');
  if (!m) throw new Error(`not an s3://BUCKET/PREFIX URL: ${url}`);
  const prefix = (m[2] ?? '').replace(/^\/+|\/+$/g, '');
  return { bucket: m[1], prefix: prefix ? `${prefix}/` : '' };
}

/**
 * The object-name prefixes of a pool's namespace (each ends in '/').
 * @param {string} prefix PREFIX as parseShared gives it
 * @param {string} pool
 */
export function poolObjectPrefixes(prefix, pool) {
  return pool === DEFAULT_POOL ? DEFAULT_POOL_DIRS.map((d) => `${prefix}${d}/`) : [`${prefix}pools/${pool}/`];
}

const sid = (s) => s.replace(/[^A-Za-z0-9]/g, '');
const arnBucket = (bucket) => `arn:aws:s3:::${bucket}`;
const arnObjects = (bucket, prefixes) => prefixes.map((p) => `arn:aws:s3:::${bucket}/${p}*`);

/**
 * The statements of pool `pool`'s worker credentials.
 * @param {{ bucket: string, prefix: string, pool: string, reads: string[] }} o
 */
export function poolStatements({ bucket, prefix, pool, reads }) {
  const own = poolObjectPrefixes(prefix, pool);
  const trusted = reads.filter((r) => r !== pool).flatMap((r) => poolObjectPrefixes(prefix, r));
  const statements = [
    {
      Sid: `ListPool${sid(pool)}`,
      Effect: 'Allow',
      Action: ['s3:ListBucket'],
      Resource: [arnBucket(bucket)],
      Condition: { StringLike: { 's3:prefix': [...own, ...trusted].map((p) => `${p}*`) } },
    },
    { Sid: `WritePool${sid(pool)}`, Effect: 'Allow', Action: OWN_OBJECT_ACTIONS, Resource: arnObjects(bucket, own) },
  ];
  if (trusted.length) statements.push({ Sid: `ReadTrustedBy${sid(pool)}`, Effect: 'Allow', Action: TRUSTED_OBJECT_ACTIONS, Resource: arnObjects(bucket, trusted) });
  return statements;
}

/**
 * The statements of the scheduler's credentials: every object under PREFIX, the bucket's listing.
 * @param {{ bucket: string, prefix: string }} o
 */
export function schedulerStatements({ bucket, prefix }) {
  return [
    { Sid: 'SchedulerBucket', Effect: 'Allow', Action: SCHEDULER_BUCKET_ACTIONS, Resource: [arnBucket(bucket)] },
    { Sid: 'SchedulerObjects', Effect: 'Allow', Action: SCHEDULER_OBJECT_ACTIONS, Resource: arnObjects(bucket, [prefix]) },
  ];
}

/**
 * MinIO IAM policies: file name → policy document.
 * @param {{ bucket: string, prefix: string, pools: Record<string, { reads: string[] }> }} o
 * @returns {Record<string, object>}
 */
export function minioPolicies({ bucket, prefix, pools }) {
  /** @type {Record<string, object>} */
  const out = {};
  for (const pool of Object.keys(pools).sort()) {
    out[`pool-${pool}.json`] = { Version: '2012-10-17', Statement: poolStatements({ bucket, prefix, pool, reads: pools[pool].reads }) };
  }
  out['scheduler.json'] = { Version: '2012-10-17', Statement: schedulerStatements({ bucket, prefix }) };
  return out;
}

/** The MinIO policy name of a pool's workers (pool-credentials.sh), and the scheduler's. */
export const minioPolicyName = (pool) => `vmlb-pool-${pool}`;
export const MINIO_SCHEDULER_POLICY = 'vmlb-scheduler';

/**
 * One S3 bucket policy with the same rules (Ceph radosgw, AWS S3): each statement with the
 * Principal of the user that holds the pool's (or the scheduler's) keys.
 * @param {{ bucket: string, prefix: string, pools: Record<string, { reads: string[] }>, users: Record<string, string>, scheduler: string, principal?: (user: string) => string }} o
 *   users: pool → user id; principal: user id → ARN (radosgw: arn:aws:iam:::user/<uid>)
 */
export function rgwBucketPolicy({ bucket, prefix, pools, users, scheduler, principal = (u) => `arn:aws:iam:::user/${u}` }) {
  const seen = new Map();
  const unique = (s) => {
    const n = (seen.get(s.Sid) ?? 0) + 1;
    seen.set(s.Sid, n);
    return n === 1 ? s : { ...s, Sid: `${s.Sid}${n}` };
  };
  const withPrincipal = (user, statements) => statements.map((s) => unique({ Sid: s.Sid, Effect: s.Effect, Principal: { AWS: [principal(user)] }, Action: s.Action, Resource: s.Resource, ...(s.Condition ? { Condition: s.Condition } : {}) }));
  const statements = [];
  for (const pool of Object.keys(pools).sort()) {
    const user = users[pool];
    if (!user) throw new Error(`no user for pool ${pool}`);
    statements.push(...withPrincipal(user, poolStatements({ bucket, prefix, pool, reads: pools[pool].reads })));
  }
  statements.push(...withPrincipal(scheduler, schedulerStatements({ bucket, prefix })));
  return { Version: '2012-10-17', Statement: statements };
}

/**
 * Writes the MinIO policies of a teams file into a folder; returns the file names.
 * @param {string} teamsText
 * @param {string} sharedUrl
 * @param {string} outDir
 * @param {string} [where]
 */
export function writeMinioPolicies(teamsText, sharedUrl, outDir, where) {
  const { pools } = parseTeamsPools(teamsText, where);
  const { bucket, prefix } = parseShared(sharedUrl);
  const docs = minioPolicies({ bucket, prefix, pools });
  mkdirSync(outDir, { recursive: true });
  for (const f of readdirSync(outDir)) if (/^pool-.*\.json$/.test(f) && !(f in docs)) rmSync(path.join(outDir, f));
  for (const [f, doc] of Object.entries(docs)) writeFileSync(path.join(outDir, f), `${JSON.stringify(doc, null, 2)}\n`);
  writeFileSync(path.join(outDir, 'pools'), Object.keys(pools).sort().map((p) => `${p}\n`).join(''));
  return [...Object.keys(docs), 'pools'];
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const [teamsFile, sharedUrl, outDir] = process.argv.slice(2);
  if (!teamsFile || !sharedUrl || !outDir) {
    process.stderr.write('usage: node pool-policies.mjs TEAMS_FILE s3://BUCKET/PREFIX OUT_DIR\n');
    process.exit(2);
  }
  try {
    const files = writeMinioPolicies(readFileSync(teamsFile, 'utf8'), sharedUrl, outDir, teamsFile);
    process.stdout.write(`pool-policies: ${files.join(' ')} in ${outDir}\n`);
  } catch (e) {
    process.stderr.write(`pool-policies: ${e.message}\n`);
    process.exit(2);
  }
}
