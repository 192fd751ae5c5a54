/**
 * A layer that prints 200 MiB, locally and through the one-machine fleet (`npm run fleet`: its
 * Redis, scheduler and a real worker; S3 is this suite's S3 test server, s3rver or radosgw): the
 * log kept in the store is
 * the tail, at most VMLB_LOG_MAX (1 MiB here), under a line that says what was cut; what the
 * display, Redis and the scheduler see is capped with a "… N lines dropped, full log in the
 * store" line; the memory of the CLI, of Redis and of the scheduler stays flat.
 */
import { execa } from 'execa';
import { Redis } from 'ioredis';
import { readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBucket } from './helpers/fleet-api.js';
import { startDevFleet, type DevFleet } from './helpers/dev-fleet.js';
import { startS3Server, type S3Server } from './helpers/s3-server.js';
import { BUSYBOX_BASE, VMLB, leftovers, sandbox, vmlb, writeProject, type Sandbox } from './helpers/vmlb.js';

const MiB = 1024 * 1024;
const FLOOD = 200 * MiB;
const LOG_MAX = '1M';
/** 200 MiB of 200-character lines between a first and a last line. */
const floodScript = (bytes: number) => `echo FIRST-LINE
yes "$(head -c 200 /dev/zero | tr '\\0' x)" | head -c ${bytes}
echo
echo LAST-LINE`;

const CUT_LINE = /^… (\d+(?:\.\d+)? MiB) \((\d+) lines\) of output cut here: this log keeps its last 1 MiB \(VMLB_LOG_MAX\) *$/;
const DROPPED = /… (\d+) lines dropped \(([^)]*)\), full log in the store/;

/** Checks a layer log cut to 1 MiB: the marker line, then the flood's tail, then LAST-LINE. */
function expectCutLog(text: string): void {
  expect(Buffer.byteLength(text)).toBeLessThanOrEqual(MiB);
  expect(Buffer.byteLength(text)).toBeGreaterThan(MiB - 1024);
  const lines = text.split('\n');
  const m = CUT_LINE.exec(lines[0]!);
  expect(m, lines[0]).not.toBeNull();
  expect(Number(m![2])).toBeGreaterThan(1_000_000);
  expect(lines.slice(1, -3).every((l) => l === 'x'.repeat(200))).toBe(true);
  expect(text.endsWith('LAST-LINE\n')).toBe(true);
  expect(text).not.toContain('FIRST-LINE');
}

/** Runs `vmlb ARGS` under /usr/bin/time -v: its result and its peak RSS in bytes. */
async function vmlbTimed(sb: Sandbox, args: string[], env: Record<string, string>) {
  const r = await execa('/usr/bin/time', ['-v', process.execPath, VMLB, ...args], { env: { ...sb.env, ...env, CI: '1' }, reject: false, stdin: 'ignore' });
  const stderr = String(r.stderr);
  const rss = Number(/Maximum resident set size \(kbytes\): (\d+)/.exec(stderr)?.[1]) * 1024;
  return { exitCode: r.exitCode, stdout: String(r.stdout), stderr, rss };
}

/** The log of the layer named `name` in a local store. */
async function storeLog(store: string, name: string): Promise<string> {
  const dir = path.join(store, 'layers');
  for (const f of await readdir(dir)) {
    if (!f.endsWith('.json')) continue;
    const m = JSON.parse(await readFile(path.join(dir, f), 'utf8')) as { name: string; key: string };
    if (m.name === name) return readFile(path.join(dir, `${m.key}.log`), 'utf8');
  }
  throw new Error(`no layer ${name} in ${dir}`);
}

describe('a layer that prints 200 MiB, built locally', () => {
  let sb: Sandbox;
  beforeAll(async () => {
    sb = await sandbox('flood');
  });
  afterAll(async () => {
    const left = sb ? await leftovers(sb) : [];
    await sb?.cleanup();
    expect(left).toEqual([]);
  });

  it('keeps the last VMLB_LOG_MAX of its log under a line saying what was cut, shows at most 8 MiB of it, and the CLI\'s memory stays flat', async () => {
    const little = await writeProject(path.join(sb.dir, 'little'), { '01_base': BUSYBOX_BASE, '02_little': { kind: 'build-layer', script: floodScript(2000) } });
    const quiet = await vmlbTimed(sb, ['build', little, '--plain'], { VMLB_LOG_MAX: LOG_MAX });
    expect(quiet.exitCode, quiet.stderr).toBe(0);

    const project = await writeProject(path.join(sb.dir, 'flood'), { '01_base': BUSYBOX_BASE, '02_flood': { kind: 'build-layer', script: floodScript(FLOOD) } });
    const run = await vmlbTimed(sb, ['build', project, '--plain'], { VMLB_LOG_MAX: LOG_MAX });
    expect(run.exitCode, run.stderr.slice(-3000)).toBe(0);
    console.log(`vmlb build: peak RSS ${(quiet.rss / MiB).toFixed(0)} MiB printing 2 KB, ${(run.rss / MiB).toFixed(0)} MiB printing 200 MiB`);

    // The display: the first 8 MiB, then one line saying the rest is not shown, and at the end how many lines were dropped.
    expect(run.stdout).toMatch(/^#2 FIRST-LINE$/m);
    expect(run.stdout).toMatch(/^#2 … output past 8 MiB is not shown here, full log in the store$/m);
    const dropped = DROPPED.exec(run.stdout);
    expect(dropped, run.stdout.slice(-2000)).not.toBeNull();
    expect(Number(dropped![1])).toBeGreaterThan(900_000);
    expect(dropped![2]).toBe('past 8 MiB of output');
    expect(run.stdout).toMatch(/^#2 … the layer's log keeps its last 1 MiB: 199 MiB \(\d+ lines\) before them were cut \(VMLB_LOG_MAX\)$/m);
    expect(run.stdout.length).toBeLessThan(9 * MiB);
    expect(run.stdout).toMatch(/^built 1, cached 1 in /m);

    // The store: the tail, at most VMLB_LOG_MAX.
    expectCutLog(await storeLog(sb.store, '02_flood'));
    for (const f of await readdir(path.join(sb.store, 'layers'))) {
      if (f.endsWith('.log')) expect((await stat(path.join(sb.store, 'layers', f))).size).toBeLessThanOrEqual(MiB);
    }

    // Memory: what 200 MiB of output adds to the CLI's peak is far below the output.
    expect(run.rss).toBeLessThan(quiet.rss + 96 * MiB);
    expect(run.rss).toBeLessThan(256 * MiB);
  }, 180_000);

  it('refuses a VMLB_LOG_MAX that is not a size, in one line (exit 2)', async () => {
    const project = path.join(sb.dir, 'little');
    const r = await vmlb(sb, ['build', project], { VMLB_LOG_MAX: 'lots' });
    expect(r.exitCode).toBe(2);
    expect(r.stderr.trim()).toBe('vmlb: VMLB_LOG_MAX must be a size of at least 4K (e.g. 64M, the default), not "lots"');
  });
});

/** The scheduler of a dev fleet: the process whose environment names its port. */
async function schedulerPid(port: number): Promise<number> {
  for (const d of await readdir('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const cmd = await readFile(`/proc/${d}/cmdline`, 'utf8');
      if (!/apps\/scheduler\/(src|dist)\/main\.(ts|js)/.test(cmd)) continue;
      const env = (await readFile(`/proc/${d}/environ`, 'utf8')).split('\0');
      if (env.includes(`VMLB_SCHEDULER_PORT=${port}`)) return Number(d);
    } catch {
      /* gone */
    }
  }
  throw new Error(`no scheduler process listens on port ${port}`);
}

async function rssOf(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/^VmRSS:\s+(\d+) kB/m.exec(status)![1]) * 1024;
}

/** Samples a process's RSS every 100 ms while `fn` runs: fn's result and the peak. */
async function peakRss<T>(pid: number, fn: () => Promise<T>): Promise<{ result: T; peak: number }> {
  let peak = await rssOf(pid);
  const t = setInterval(() => void rssOf(pid).then((r) => (peak = Math.max(peak, r)), () => undefined), 100);
  try {
    const result = await fn();
    return { result, peak: Math.max(peak, await rssOf(pid)) };
  } finally {
    clearInterval(t);
  }
}

async function usedMemory(redis: Redis): Promise<number> {
  return Number(/used_memory:(\d+)/.exec(await redis.info('memory'))![1]);
}

describe('a layer that prints 200 MiB, built by the fleet', () => {
  let sb: Sandbox;
  let s3: S3Server;
  let fleet: DevFleet;
  let redis: Redis;

  beforeAll(async () => {
    sb = await sandbox('flood-fleet');
    s3 = await startS3Server();
    const sharedUrl = `s3://vmlb-test/flood-${Date.now().toString(36)}`;
    await ensureBucket({ ...s3.env, VMLB_SHARED: sharedUrl });
    fleet = await startDevFleet({ env: { ...s3.env, VMLB_SHARED: sharedUrl, VMLB_FLEET_DIR: path.join(sb.dir, 'fleet'), VMLB_LOG_MAX: LOG_MAX }, workers: 1 });
    redis = new Redis({ port: fleet.ports.redis, host: '127.0.0.1', maxRetriesPerRequest: null, lazyConnect: true });
    await redis.connect();
  }, 180_000);

  afterAll(async () => {
    redis?.disconnect();
    await fleet?.stop();
    await s3?.close();
    const left = sb ? await leftovers(sb) : [];
    await sb?.cleanup();
    expect(left).toEqual([]);
  });

  it('grows Redis and the scheduler by a few MiB, streams a "lines dropped, full log in the store" line, and the shared store keeps the last VMLB_LOG_MAX of the log', async () => {
    const submit = async (dir: string) => {
      const r = await vmlb(sb, ['submit', dir, '--plain'], fleet.exported);
      expect(r.exitCode, `${r.stdout.slice(-3000)}\n${r.stderr}\n${fleet.errors.slice(-3000)}`).toBe(0);
      return { ...r, id: /as build (b[0-9a-z]+)/.exec(r.stdout)![1]! };
    };
    // A build that prints little first (it also builds the base layer both share).
    const little = await writeProject(path.join(sb.dir, 'little'), { '01_base': BUSYBOX_BASE, '02_flood': { kind: 'build-layer', script: floodScript(2000) } });
    const pid = await schedulerPid(fleet.ports.scheduler);
    const quiet = await peakRss(pid, () => submit(little));
    const quietStream = Number(await redis.memory('USAGE', `vmlb:events:${quiet.result.id}`, 'SAMPLES', '0'));

    const project = await writeProject(path.join(sb.dir, 'flood'), { '01_base': BUSYBOX_BASE, '02_flood': { kind: 'build-layer', script: floodScript(FLOOD) } });
    const before = await usedMemory(redis);
    const baseRss = await rssOf(pid);
    const flood = await peakRss(pid, () => submit(project));
    const after = await usedMemory(redis);
    const id = flood.result.id;
    const key = `vmlb:events:${id}`;
    const streamBytes = Number(await redis.memory('USAGE', key, 'SAMPLES', '0'));
    console.log(
      `fleet: Redis +${((after - before) / MiB).toFixed(1)} MiB (stream ${(streamBytes / MiB).toFixed(2)} MiB; a quiet build's ${(quietStream / 1024).toFixed(0)} KiB); ` +
        `scheduler RSS ${(baseRss / MiB).toFixed(0)} MiB, peak ${(flood.peak / MiB).toFixed(0)} MiB (${(quiet.peak / MiB).toFixed(0)} MiB for the quiet build)`,
    );

    // Redis: the stream holds at most the build's 4 MiB budget of output (plus its other events).
    expect(streamBytes).toBeLessThan(6 * MiB);
    expect(after - before).toBeLessThan(16 * MiB);
    // The finished build's stream expires within a day.
    const ttl = await redis.ttl(key);
    expect(ttl).toBeGreaterThan(0);
    expect(ttl).toBeLessThanOrEqual(24 * 3600);

    // What went through Redis says what it dropped.
    const entries = (await redis.xrange(key, '-', '+')) as Array<[string, string[]]>;
    const streamed = entries
      .map(([, f]) => JSON.parse(f[1]!) as { type: string; event?: { type: string; chunk?: string } })
      .filter((e) => e.type === 'engine' && e.event?.type === 'layer-log')
      .map((e) => e.event!.chunk!)
      .join('');
    expect(streamed.length).toBeLessThan(1.1 * MiB);
    expect(streamed).toContain('FIRST-LINE\n');
    const markers = [...streamed.matchAll(new RegExp(DROPPED, 'g'))];
    // Over the rate (128 KiB/s) now and then (and past the layer's 1 MiB, when the flood lasts): about every line of it, in all.
    expect(markers.length, streamed.slice(-2000)).toBeGreaterThan(0);
    expect(markers.every((m) => m[2] === 'over 128 KiB/s' || m[2] === 'past 1 MiB of output')).toBe(true);
    expect(markers.reduce((n, m) => n + Number(m[1]), 0)).toBeGreaterThan(1_000_000);
    expect(entries.every(([, f]) => f[1]!.length < 40 * 1024)).toBe(true);
    // …and so does the submitting CLI's display.
    expect(flood.result.stdout).toMatch(DROPPED);

    // The scheduler: its peak while the flood was built is its usual one, give or take.
    expect(flood.peak - baseRss).toBeLessThan(48 * MiB);
    expect(flood.peak).toBeLessThan(quiet.peak + 48 * MiB);

    // The shared store: the layer's log, its last 1 MiB.
    const res = await fetch(`${fleet.exported.VMLB_SERVER}/v1/builds/${id}/layers/1/log`, { headers: { authorization: `Bearer ${fleet.exported.VMLB_TOKEN}` } });
    expect(res.status).toBe(200);
    expectCutLog(await res.text());
  }, 300_000);

  it('a failed flooding layer: its log, cut to VMLB_LOG_MAX, is in the shared store too', async () => {
    const project = await writeProject(path.join(sb.dir, 'failing'), {
      '01_base': BUSYBOX_BASE,
      '02_flood': { kind: 'build-layer', script: `${floodScript(20 * MiB)}\nexit 3` },
    });
    const r = await vmlb(sb, ['submit', project, '--plain'], fleet.exported);
    expect(r.exitCode, `${r.stdout.slice(-2000)}\n${r.stderr}`).toBe(1);
    expect(r.stdout).toMatch(DROPPED);
    const id = /as build (b[0-9a-z]+)/.exec(r.stdout)![1]!;
    const res = await fetch(`${fleet.exported.VMLB_SERVER}/v1/builds/${id}/layers/1/log`, { headers: { authorization: `Bearer ${fleet.exported.VMLB_TOKEN}` } });
    expect(res.status).toBe(200);
    const text = await res.text();
    expect(Buffer.byteLength(text)).toBeLessThanOrEqual(MiB);
    expect(text.split('\n')[0]).toMatch(/^… 19(\.\d)? MiB \(\d+ lines\) of output cut here: this log keeps its last 1 MiB \(VMLB_LOG_MAX\) *$/);
    expect(text.endsWith('LAST-LINE\n')).toBe(true);
  }, 180_000);
});
