// Types of healthcheck.mjs (for the TypeScript tests that import it).
export type Part = 'scheduler' | 'worker' | 'dashboard';
export const PARTS: Part[];
export const TIMEOUT_MS: number;
export function partOfCommand(args: string[]): Part | null;
export function targetOf(part: string, env: Record<string, string | undefined>): string;
export function detectPart(proc?: string): Part;
export function check(part: string, env: Record<string, string | undefined>): Promise<{ ok: boolean; line: string }>;
