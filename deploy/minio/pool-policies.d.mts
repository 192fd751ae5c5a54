// Types of pool-policies.mjs (for the TypeScript tests that import it).
export interface PoolDef {
  reads: string[];
}
export type Pools = Record<string, PoolDef>;
export interface Statement {
  Sid: string;
  Effect: 'Allow' | 'Deny';
  Principal?: { AWS: string[] };
  Action: string[];
  Resource: string[];
  Condition?: Record<string, Record<string, string[]>>;
}
export interface PolicyDocument {
  Version: '2012-10-17';
  Statement: Statement[];
}
export const DEFAULT_POOL: 'default';
export const POOL_NAME: RegExp;
export const DEFAULT_POOL_DIRS: string[];
export const OWN_OBJECT_ACTIONS: string[];
export const TRUSTED_OBJECT_ACTIONS: string[];
export const SCHEDULER_OBJECT_ACTIONS: string[];
export const SCHEDULER_BUCKET_ACTIONS: string[];
export const MINIO_SCHEDULER_POLICY: string;
export function parseTeamsPools(text: string, where?: string): { pools: Pools; teams: Array<{ team: string; pool: string }> };
export function parseShared(url: string): { bucket: string; prefix: string };
export function poolObjectPrefixes(prefix: string, pool: string): string[];
export function poolStatements(o: { bucket: string; prefix: string; pool: string; reads: string[] }): Statement[];
export function schedulerStatements(o: { bucket: string; prefix: string }): Statement[];
export function minioPolicies(o: { bucket: string; prefix: string; pools: Pools }): Record<string, PolicyDocument>;
export function minioPolicyName(pool: string): string;
export function rgwBucketPolicy(o: {
  bucket: string;
  prefix: string;
  pools: Pools;
  users: Record<string, string>;
  scheduler: string;
  principal?: (user: string) => string;
}): PolicyDocument;
export function writeMinioPolicies(teamsText: string, sharedUrl: string, outDir: string, where?: string): string[];
