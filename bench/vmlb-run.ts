/** `vmlb` run as a user runs it (the CLI bundle, CI=1) and its `--json` events, and the store it wrote. */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { VMLB } from './harness.js';
import { run } from './run-command.js';
import type { Sandbox } from './sandbox.js';

export type BuildEvent = Record<string, unknown> & { type: string };

export interface VmlbRun {
  ms: number;
  events: BuildEvent[];
  stdout: string;
}

export async function vmlb(sb: Sandbox, args: string[]): Promise<VmlbRun> {
  const r = await run([process.execPath, VMLB, ...args], {
    env: { ...process.env, ...sb.env, CI: '1' },
    stopSignal: 'SIGINT',
    label: `vmlb ${args.join(' ')}`,
  });
  const events = r.stdout
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as BuildEvent);
  return { ms: r.ms, events, stdout: r.stdout };
}

/** `vmlb build DIR --json ...`, checking it built `expectBuilt` layers (what we mean to time). */
export async function build(sb: Sandbox, project: string, expectBuilt: number, extra: string[] = []): Promise<VmlbRun> {
  const r = await vmlb(sb, ['build', project, '--json', ...extra]);
  const done = r.events.find((e) => e.type === 'done');
  if (!done) throw new Error(`vmlb build ${project}: no "done" event`);
  if (done.built !== expectBuilt) {
    throw new Error(`vmlb build ${project} ${extra.join(' ')}: built ${String(done.built)} layers, the benchmark expected ${expectBuilt}`);
  }
  return r;
}

export function eventsOf(r: VmlbRun, type: string): BuildEvent[] {
  return r.events.filter((e) => e.type === type);
}

export function doneEvent(r: VmlbRun): BuildEvent {
  const d = r.events.find((e) => e.type === 'done');
  if (!d) throw new Error('no "done" event');
  return d;
}

/** The keys of the chain, in order (from the plan event). */
export function chainKeys(r: VmlbRun): string[] {
  const plan = r.events.find((e) => e.type === 'plan');
  const layers = (plan?.layers ?? []) as Array<{ key: string }>;
  return layers.map((l) => l.key);
}

export function blobPath(sb: Sandbox, key: string): string {
  return path.join(sb.store, 'layers', `${key}.qcow2`);
}

export async function manifest(sb: Sandbox, key: string): Promise<{ root: { start: number; size: number } } & Record<string, unknown>> {
  return JSON.parse(await readFile(path.join(sb.store, 'layers', `${key}.json`), 'utf8')) as never;
}

/** `sync`, so that write-back of an earlier run does not land in the next timed one. */
export async function sync(): Promise<void> {
  await run(['sync']);
}
