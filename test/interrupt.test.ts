/**
 * Interruptions: Ctrl-C (SIGINT) mid-layer leaves nothing attached; SIGKILL mid-layer leaves
 * debris that the next run sweeps before it starts.
 */
import { execa } from 'execa';
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BUSYBOX_BASE, buildJson, builtNames, findEvent, leftovers, sandbox, spawnVmlb, writeProject, type Sandbox } from './helpers/vmlb.js';

let sb: Sandbox;
let project: string;
beforeAll(async () => {
  sb = await sandbox('interrupt');
  project = await writeProject(path.join(sb.dir, 'p'), {
    '01_base': BUSYBOX_BASE,
    '02_slow': { kind: 'build-layer', script: 'echo data > /etc/slow\nsleep 6007 &\necho READY-MARK\nsleep 6007' },
  });
  // Build the base first so each test interrupts the slow layer, not the base.
  const r = await buildJson(sb, project, ['--last', '01_base']);
  expect(r.exitCode, r.stderr).toBe(0);
});
afterAll(async () => {
  await execa('pkill', ['-f', 'sleep 6007'], { reject: false });
  await sb?.cleanup();
});

/**
 * Starts a build and resolves once the slow layer's script is running. The process is
 * wrapped: an execa process is itself a promise, and returning it would await its exit.
 */
async function startSlowBuild(): Promise<{ child: ReturnType<typeof spawnVmlb> }> {
  const child = spawnVmlb(sb, ['build', project, '--json']);
  let out = '';
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the slow layer did not start:\n${out}`)), 60_000);
    child.stdout!.on('data', (b: Buffer) => {
      out += b.toString();
      if (process.env.VMLB_TEST_DEBUG) console.log('DATA', b.toString().slice(0, 100));
      if (out.includes('READY-MARK')) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  return { child };
}

async function sleepers(): Promise<string> {
  return String((await execa('pgrep', ['-af', 'sleep 6007'], { reject: false })).stdout);
}

describe('interruptions', () => {
  it('SIGINT mid-layer: exit 130, nothing attached, no process left, nothing published', async () => {
    const { child } = await startSlowBuild();
    const t0 = Date.now();
    if (process.env.VMLB_TEST_DEBUG) console.log('sending SIGINT to', child.pid);
    child.kill('SIGINT');
    const r = await child;
    expect(r.exitCode).toBe(130);
    expect(Date.now() - t0).toBeLessThan(15_000);
    expect(await leftovers(sb)).toEqual([]);
    expect(await sleepers()).toBe('');
    const files = await readdir(path.join(sb.store, 'layers'));
    expect(files.filter((f) => f.startsWith('.tmp-'))).toEqual([]);
    expect(files.filter((f) => f.endsWith('.json'))).toHaveLength(1); // the base only
  });

  it('SIGKILL mid-layer leaves debris; the next run sweeps it first and builds', async () => {
    const { child } = await startSlowBuild();
    child.kill('SIGKILL');
    await child;
    // The kill left the run's disk attached (its daemon and script die with it by pdeathsig).
    const debris = await leftovers(sb);
    expect(debris.length).toBeGreaterThan(0);
    const r = await buildJson(sb, project, ['--last', '01_base']);
    expect(r.exitCode, r.stderr).toBe(0);
    const notice = findEvent(r, 'notice');
    expect(String(notice?.message)).toMatch(/cleaned up after an interrupted run/);
    expect(await leftovers(sb)).toEqual([]);
    expect(await sleepers()).toBe('');
    const files = await readdir(path.join(sb.store, 'layers'));
    expect(files.filter((f) => f.startsWith('.tmp-'))).toEqual([]);
    expect(builtNames(r)).toEqual([]);
  });
});
