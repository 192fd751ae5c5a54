import net from 'node:net';

/**
 * Loopback ports for what runs a fleet on one machine (`npm run fleet`, the tests, the
 * benchmarks): a free one to give a server, and whether one listens yet.
 */

/** A port nothing listens on now (the OS picks it; another program could take it before you do). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

/** Whether something accepts connections on 127.0.0.1:port. */
export function portOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect(port, '127.0.0.1', () => {
      c.end();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}
