/**
 * A real HTTP load balancer in front of several schedulers: Debian's haproxy (2.6), its config
 * written to a folder of the caller's, on a free loopback port, run in the foreground
 * (`haproxy -f CONF -db`) as a child this process waits on and stops by its pid.
 *
 * - Health checks: GET /healthz every `checkMs` (500 ms), down after 2 failures (an answer that
 *   is not 200, or a refused connection), up again after 2 good ones; a dead backend is out of
 *   the rotation within about 1 s.
 * - Long-lived responses (the SSE event streams): `timeout client/server/tunnel` of an hour (the
 *   scheduler pings a stream every 15 s), `option http-server-close` (one server connection per
 *   request, so every request is balanced on its own), `balance leastconn` (a new stream goes to
 *   the backend holding fewer).
 * - A request whose connection to a dead backend fails is retried (3 times) on another one
 *   (`option redispatch`) before haproxy answers 503.
 * - Its stats as CSV on a second port: each backend's state (UP/DOWN) and current sessions.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { freePort } from '../../libs/fleet/src/loopback-port.js';

export const HAPROXY = '/usr/sbin/haproxy';

export interface HaproxyBackend {
  /** The server's name in haproxy (letters, digits, - _). */
  name: string;
  /** http://HOST:PORT */
  url: string;
}

export interface BackendStats {
  name: string;
  /** UP, DOWN, "UP 1/2" (going down), "DOWN 1/2" (coming up), MAINT, no check… */
  status: string;
  /** Current sessions (an open SSE stream is one). */
  sessions: number;
  /** Sessions since the start. */
  total: number;
}

export interface Haproxy {
  /** http://127.0.0.1:PORT: the front end. */
  url: string;
  pid: number;
  child: ChildProcess;
  /** Its stderr, line by line (alerts and warnings). */
  log: string[];
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** The backends as haproxy sees them now. */
  backends(): Promise<BackendStats[]>;
  /** Waits until haproxy says backend `name` is `status` (UP or DOWN); returns how long that took. */
  waitForStatus(name: string, status: 'UP' | 'DOWN', timeoutMs?: number): Promise<number>;
  /** SIGTERM, then SIGKILL after 5 s; waits for the exit. */
  close(): Promise<void>;
}

export interface HaproxyOptions {
  /** Where the config goes (haproxy.cfg). */
  dir: string;
  backends: HaproxyBackend[];
  /** Health check interval. @default 500 */
  checkMs?: number;
}

export function haproxyConfig(o: { port: number; statsPort: number; backends: HaproxyBackend[]; checkMs: number }): string {
  const servers = o.backends.map((b) => {
    const u = new URL(b.url);
    return `  server ${b.name} ${u.hostname}:${u.port}`;
  });
  return `global
  maxconn 1024

defaults
  mode http
  timeout connect 1s
  timeout client 1h
  timeout server 1h
  timeout tunnel 1h
  timeout http-request 30s
  timeout http-keep-alive 10s
  timeout queue 10s
  timeout check 3s
  retries 3
  option redispatch 1
  option http-server-close

frontend vmlb
  bind 127.0.0.1:${o.port}
  default_backend schedulers

backend schedulers
  balance leastconn
  option httpchk
  http-check send meth GET uri /healthz
  http-check expect status 200
  default-server check inter ${o.checkMs} fastinter ${Math.max(100, Math.round(o.checkMs / 2))} downinter ${o.checkMs} fall 2 rise 2
${servers.join('\n')}

frontend stats
  bind 127.0.0.1:${o.statsPort}
  stats enable
  stats uri /stats
`;
}

/** Parses the stats CSV (`GET /stats;csv`) into the rows of backend `proxy`'s servers. */
export function parseStatsCsv(csv: string, proxy = 'schedulers'): BackendStats[] {
  const lines = csv.split('\n').filter(Boolean);
  const header = lines[0]!.replace(/^# /, '').split(',');
  const col = (name: string) => header.indexOf(name);
  const [px, sv, st, scur, stot] = ['pxname', 'svname', 'status', 'scur', 'stot'].map(col) as [number, number, number, number, number];
  return lines
    .slice(1)
    .map((l) => l.split(','))
    .filter((f) => f[px] === proxy && f[sv] !== 'BACKEND' && f[sv] !== 'FRONTEND')
    .map((f) => ({ name: f[sv]!, status: f[st]!, sessions: Number(f[scur]), total: Number(f[stot]) }));
}

export async function startHaproxy(o: HaproxyOptions): Promise<Haproxy> {
  const [port, statsPort] = [await freePort(), await freePort()];
  const conf = path.join(o.dir, 'haproxy.cfg');
  await writeFile(conf, haproxyConfig({ port, statsPort, backends: o.backends, checkMs: o.checkMs ?? 500 }));
  const check = spawn(HAPROXY, ['-c', '-q', '-f', conf], { stdio: ['ignore', 'pipe', 'pipe'] });
  let checkOut = '';
  check.stdout!.on('data', (b: Buffer) => (checkOut += b.toString()));
  check.stderr!.on('data', (b: Buffer) => (checkOut += b.toString()));
  const checked = await new Promise<number | null>((resolve) => check.once('exit', resolve));
  if (checked !== 0) throw new Error(`haproxy -c refused ${conf}:\n${checkOut}`);

  const child = spawn(HAPROXY, ['-f', conf, '-db'], { stdio: ['ignore', 'pipe', 'pipe'] });
  const log: string[] = [];
  const keep = (b: Buffer) => {
    log.push(...b.toString().split('\n').filter(Boolean));
    if (process.env.VMLB_TEST_DEBUG) process.stderr.write(`[haproxy] ${b.toString()}`);
  };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const statsUrl = `http://127.0.0.1:${statsPort}/stats;csv`;
  const backends = async () => parseStatsCsv(await (await fetch(statsUrl)).text());
  const close = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    const t = setTimeout(() => child.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(t);
  };
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`haproxy exited (${child.exitCode}) at start:\n${log.join('\n')}`);
    const ok = await backends().then(() => true, () => false);
    if (ok) break;
    if (Date.now() > deadline) {
      await close();
      throw new Error(`haproxy did not serve its stats within 10 s:\n${log.join('\n')}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    url: `http://127.0.0.1:${port}`,
    pid: child.pid!,
    child,
    log,
    exited,
    backends,
    async waitForStatus(name, status, timeoutMs = 20_000) {
      const t0 = Date.now();
      for (;;) {
        const b = (await backends()).find((x) => x.name === name);
        if (!b) throw new Error(`haproxy has no backend ${name}`);
        if (b.status === status) return Date.now() - t0;
        if (Date.now() - t0 > timeoutMs) throw new Error(`haproxy's backend ${name} is "${b.status}", not ${status}, after ${timeoutMs} ms`);
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    close,
  };
}
