/**
 * A hostile team's layers, for the sandbox tests (local and through the fleet): each tries for
 * real to reach the host — its files, processes, devices, kernel, network and the fleet's
 * services — and prints one line per try, `ESCAPE <name> blocked|OPEN <detail>`, so that a
 * test can require every try to be blocked (and, run unsandboxed as a control, see the same
 * tries succeed). test/fixtures/escape.c holds the tries that need system calls.
 */
import { execa } from 'execa';
import { chmod, mkdir, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'vitest';
import { BUSYBOX_BASE, REPO, writeProject, type LayerDef } from './vmlb.js';

/** Compiles the escape tool statically (it runs in a busybox image) into `dir`. */
export async function buildEscapeTool(dir: string): Promise<string> {
  const out = path.join(dir, 'escape');
  await execa('cc', ['-static', '-O1', '-o', out, path.join(REPO, 'test/fixtures/escape.c')]);
  return out;
}

/** A file on the host that no layer may read: world-readable, so only the sandbox keeps it away. */
export async function hostMarker(dir: string): Promise<{ file: string; secret: string }> {
  await chmod(dir, 0o755);
  const secret = `host-secret-${Math.random().toString(36).slice(2)}`;
  const markerDir = path.join(dir, 'host-files');
  await mkdir(markerDir, { recursive: true, mode: 0o755 });
  const file = path.join(markerDir, 'marker');
  await writeFile(file, `${secret}\n`, { mode: 0o644 });
  return { file, secret };
}

/** A TCP listener the test opens on the host; it counts who reached it. */
export interface Listener {
  host: string;
  port: number;
  connections(): number;
  close(): Promise<void>;
}

export async function listen(host: string): Promise<Listener> {
  let count = 0;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    count++;
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => {});
    s.end('hello from the host\n');
  });
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  const port = (server.address() as net.AddressInfo).port;
  return {
    host,
    port,
    connections: () => count,
    close: () =>
      new Promise((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}

/** The host's own non-loopback IPv4 addresses (a layer must not reach services bound to them). */
export function hostAddresses(): string[] {
  return Object.values(os.networkInterfaces())
    .flat()
    .filter((a): a is os.NetworkInterfaceInfo => !!a && a.family === 'IPv4' && !a.internal)
    .map((a) => a.address);
}

/** A shell snippet that tries a TCP connection and prints `ESCAPE <name> …`. */
export function connectTry(name: string, host: string, port: number): string {
  return `if echo probe | nc -w 2 ${host} ${port} >/tmp/.nc-${name} 2>&1 && grep -q . /tmp/.nc-${name}; then echo "ESCAPE net-${name} OPEN ${host}:${port}"; else echo "ESCAPE net-${name} blocked $(head -c 120 /tmp/.nc-${name} | tr '\\n' ' ')"; fi`;
}

/** The escape tool's tries plus the network ones, as a build-layer (the tool in its folder). */
export function escapeLayer(o: { escape: string; marker: string; secret: string; connects: Array<{ name: string; host: string; port: number }>; canary: string }): LayerDef & { copy: Record<string, string> } {
  return {
    kind: 'build-layer',
    script: [
      'set -u',
      `/mnt/escape ${o.marker} ${o.secret}`,
      ...o.connects.map((c) => connectTry(c.name, c.host, c.port)),
      // The worker's and the engine's environment: in no process of the layer, nor its own.
      `if cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' | grep -q '${o.canary}'; then echo "ESCAPE environ OPEN a process has the host's secret"; else echo "ESCAPE environ blocked no process has it"; fi`,
      `if env | grep -q '${o.canary}'; then echo "ESCAPE env OPEN"; else echo "ESCAPE env blocked"; fi`,
      // The network namespace's routes are the engine's: the layer cannot take a prohibit away.
      `for a in $(ip route | awk '$1 == "prohibit" { print $2 }'); do ip route del prohibit "$a" 2>/dev/null && echo "ESCAPE route-del OPEN removed $a"; done; echo "ESCAPE route-del blocked"`,
      'exit 0',
    ].join('\n'),
    copy: { escape: o.escape },
  };
}

/**
 * A create-disk (or, with `kind`, a modify-disk) that attacks from the host-tools sandbox: the
 * host's files outside /usr and /etc, secrets in /etc, other disks, the requests it may make
 * of the engine's side (only its own disk, only partition table updates), loop devices, mounts.
 */
export function hostToolsAttack(o: { marker: string; secret: string; canary: string }): string {
  return [
    'set -u',
    `if grep -qs '${o.secret}' '${o.marker}'; then echo "ESCAPE host-file OPEN ${o.marker}"; else echo "ESCAPE host-file blocked"; fi`,
    `if grep -qs '${o.secret}' '/proc/1/root${o.marker}' '/proc/1/cwd/../../../../../..${o.marker}'; then echo "ESCAPE host-proc-root OPEN"; else echo "ESCAPE host-proc-root blocked"; fi`,
    `if head -c 1 /etc/shadow >/dev/null 2>&1; then echo "ESCAPE shadow OPEN"; else echo "ESCAPE shadow blocked"; fi`,
    `found=$(find /root /home /var/lib /srv -mindepth 1 -maxdepth 1 2>/dev/null | head -3 | tr '\\n' ' '); if [ -n "$found" ]; then echo "ESCAPE host-dirs OPEN $found"; else echo "ESCAPE host-dirs blocked"; fi`,
    `if cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' | grep -q '${o.canary}'; then echo "ESCAPE environ OPEN"; else echo "ESCAPE environ blocked"; fi`,
    // Block devices other than its own disk.
    `others=$(ls /dev | grep -E '^(vd|sd|nvme|xvd|zram|dm-)' | head -3); if [ -n "$others" ]; then echo "ESCAPE host-disks OPEN $others"; else echo "ESCAPE host-disks blocked"; fi`,
    // Requests of the engine's side: for another disk, with a smuggled command, or unknown.
    "for req in 'partx --update 1 /dev/vda' 'blockdev --rereadpt /dev/vda' 'partition 1;touch /tmp/pwned' 'partx --update 1 /dev/loop250' 'losetup -f /etc/passwd' 'sh -c id'; do",
    `  if out=$(vmlb-host-request $req 2>&1); then echo "ESCAPE request OPEN $req: $out"; else echo "ESCAPE request blocked $req: $(echo "$out" | head -1)"; fi`,
    'done',
    `if losetup -f --show /etc/hostname >/dev/null 2>&1; then echo "ESCAPE losetup OPEN"; else echo "ESCAPE losetup blocked"; fi`,
    `m=$(mktemp -d); if mount "$VMLB_DEVICE" "$m" 2>/dev/null; then echo "ESCAPE mount-disk OPEN"; umount "$m"; else echo "ESCAPE mount-disk blocked"; fi; rmdir "$m"`,
  ].join('\n');
}

/** Every `ESCAPE name outcome detail` line of a log. */
export function escapeLines(log: string): Array<{ name: string; outcome: 'blocked' | 'OPEN'; line: string }> {
  return [...log.matchAll(/ESCAPE (\S+) (blocked|OPEN)\b[^\n]*/g)].map((m) => ({ name: m[1]!, outcome: m[2] as 'blocked' | 'OPEN', line: m[0] }));
}

/**
 * Two projects for "another build's files": A's layer writes a file and keeps running; B's
 * layer, started while A's runs, looks for it and for the engine's mounts and other processes.
 * `check` asserts B saw nothing, while A was running (their printed clocks overlap).
 */
export async function otherBuildPair(dir: string, o: { nocache?: boolean } = {}): Promise<{ a: string; b: string; expectIsolated(logA: string, logB: string): void }> {
  const secretName = `other-build-${Math.random().toString(36).slice(2)}`;
  const holdA = 8;
  const a = await writeProject(path.join(dir, 'job-a'), {
    '01_base': BUSYBOX_BASE,
    // # nocache (through the fleet): built again by the second submission, while B's layer looks.
    '02_secret': { kind: 'build-layer', script: `${o.nocache ? '# nocache\n' : ''}set -eu\necho secret > /root/${secretName}\necho "written at $(date +%s)"; sleep ${holdA}` },
  });
  const b = await writeProject(path.join(dir, 'job-b'), {
    '01_base': BUSYBOX_BASE,
    '02_look': {
      kind: 'build-layer',
      script: [
        'sleep 3',
        'echo "looking at $(date +%s)"',
        `if find / -name '${secretName}' 2>/dev/null | grep -q .; then echo "ESCAPE other-build OPEN"; else echo "ESCAPE other-build blocked"; fi`,
        `if grep -q 'vmlb' /proc/mounts; then echo "ESCAPE engine-mounts OPEN $(grep vmlb /proc/mounts | head -2)"; else echo "ESCAPE engine-mounts blocked"; fi`,
        `if [ "$(ls /proc | grep -c '^[0-9]')" -gt 6 ]; then echo "ESCAPE processes OPEN $(ls /proc | grep '^[0-9]' | tr '\\n' ' ')"; else echo "ESCAPE processes blocked"; fi`,
      ].join('\n'),
    },
  });
  return {
    a,
    b,
    expectIsolated(logA, logB) {
      expect(escapeLines(logB).map((t) => `${t.name} ${t.outcome}`)).toEqual(['other-build blocked', 'engine-mounts blocked', 'processes blocked']);
      // B looked while A's layer, with its file written, was still running.
      const wrote = Number(/written at (\d+)/.exec(logA)?.[1]);
      const looked = Number(/looking at (\d+)/.exec(logB)?.[1]);
      expect(looked - wrote, `${logA}\n${logB}`).toBeGreaterThanOrEqual(0);
      expect(looked - wrote).toBeLessThan(holdA);
    },
  };
}
