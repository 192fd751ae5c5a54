/** history-scale's HTTP client: one keep-alive connection, each request timed. */
import http from 'node:http';
import { percentile } from './numbers.js';

export const REQUESTS = 200;
export const WARMUP = 20;

export interface Get {
  path: string;
  token: string;
}

export interface Timing {
  p50: number;
  p99: number;
  n: number;
  /** Mean bytes of an answer. */
  bytes: number;
}

/** An HTTP client of one keep-alive connection: GET → status and body. */
export function client(base: string) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const { hostname, port } = new URL(base);
  const get = (g: Get) =>
    new Promise<{ status: number; body: Buffer }>((resolve, reject) => {
      const req = http.request({ host: hostname, port, path: g.path, agent, headers: { authorization: `Bearer ${g.token}` } }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks) }));
        res.on('error', reject);
      });
      req.on('error', reject);
      req.end();
    });
  return {
    get,
    async json<T>(g: Get): Promise<T> {
      const r = await get(g);
      if (r.status !== 200) throw new Error(`history-scale: GET ${g.path}: ${r.status} ${r.body.toString().slice(0, 300)}`);
      return JSON.parse(r.body.toString()) as T;
    },
    /** `n` requests one after the other (after `warm` not timed), cycling through `gets`. */
    async time(gets: Get[], n = REQUESTS, warm = WARMUP): Promise<Timing> {
      const lat: number[] = [];
      let bytes = 0;
      for (let i = 0; i < warm + n; i++) {
        const g = gets[i % gets.length]!;
        const t0 = performance.now();
        const r = await get(g);
        const ms = performance.now() - t0;
        if (r.status !== 200) throw new Error(`history-scale: GET ${g.path}: ${r.status} ${r.body.toString().slice(0, 300)}`);
        if (i >= warm) {
          lat.push(ms);
          bytes += r.body.length;
        }
      }
      return { p50: percentile(lat, 50), p99: percentile(lat, 99), n, bytes: bytes / n };
    },
    close: () => agent.destroy(),
  };
}
export type Client = ReturnType<typeof client>;
