/**
 * Interruptions: Ctrl-C (SIGINT) mid-layer leaves nothing attached; SIGKILL mid-layer leaves
 * debris that the next run sweeps before it starts.
 */
import { execa } from 'execa';
import { randomInt } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BUSYBOX_BASE, buildJson, builtNames, findEvent, leftovers, sandbox, spawnVmlb, writeProject, type Sandbox } from './helpers/vmlb.js';

/**
 * The slow layer's sleep: a duration no other process on the host runs, so looking for it by
 * its exact command line finds this file's processes only (not another run's or lane's).
 */
const SLEEP = `sleep ${6_000_000 + randomInt(1_000_000)}`;

let sb: Sandbox;
let project: string;
beforeAll(async () => {
  sb = await sandbox('interrupt');
  project = await writeProject(path.join(sb.dir, 'p'), {
    '01_base': BUSYBOX_BASE,
    '02_slow': { kind: 'build-layer', script: `echo data > /etc/slow\n${SLEEP} &\necho READY-MARK\n${SLEEP}` },
  });
  // Build the base first so each test interrupts the slow layer, not the base.
  const r = await buildJson(sb, project, ['--last', '01_base']);
  expect(r.exitCode, r.stderr).toBe(0);
});
afterAll(async () => {
  await execa('pkill', ['-x', '-f', SLEEP], { reject: false });
  await sb?.cleanup();
});

/**
 * Starts a build and resolves once the slow layer's script is running. The process is
 * wrapped: an execa process is itself a promise, and returning it would await its exit.
 */
async function startSlowBuild(extra: string[] = []): Promise<{ child: ReturnType<typeof spawnVmlb> }> {
  const child = spawnVmlb(sb, ['build', project, '--json', ...extra]);
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
  return String((await execa('pgrep', ['-a', '-x', '-f', SLEEP], { reject: false })).stdout);
}

/** The command lines of the script's sleeps once both run (the second starts after READY-MARK). */
async function bothSleeping(): Promise<string[]> {
  const running = async () => (await sleepers()).split('\n').filter(Boolean).map((l) => l.replace(/^\d+ /, ''));
  for (let i = 0; i < 50 && (await running()).length < 2; i++) await new Promise((r) => setTimeout(r, 100));
  return running();
}

describe('interruptions', () => {
  it('SIGINT mid-layer: exit 130, nothing attached, no process left, nothing published', async () => {
    const { child } = await startSlowBuild();
    // The script's two sleeps are found while they run: their absence below means something.
    expect(await bothSleeping()).toEqual([SLEEP, SLEEP]);
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
    // On the fuse backend, so that what the kill leaves is known.
    const { child } = await startSlowBuild(['--backend', 'fuse']);
    child.kill('SIGKILL');
    await child;
    // The kill left the run's disk attached: the FUSE mount of its export file, whose daemon
    // died with the run (by pdeathsig), as did the script.
    const exportMount = new RegExp(`^mount \\S+ \\S+ \\S+ / ${sb.runDir}/fuse/fuse-\\d+-[0-9a-f]+\\.raw .* - fuse /dev/fuse `);
    expect(await leftovers(sb)).toEqual([expect.stringMatching(exportMount)]);
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
