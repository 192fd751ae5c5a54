import { lstat, readdir, readFile, readlink } from 'node:fs/promises';
import path from 'node:path';
import { createGzip } from 'node:zlib';
import * as tar from 'tar-stream';
import { OUTPUT_DIR, VmlbError } from '@vmlb/layer-engine';

/**
 * The project as a .tar.gz, in memory. Left out at the top: `build/` (outputs) and dot-entries
 * (.git and the like), which the engine ignores there too. Inside layer folders everything
 * goes, dot-files included: they are part of each layer's key, and the scheduler must compute
 * the keys a local build would. Entries are sorted and carry no times, owners or host
 * details, so the same project packs to the same bytes (and the scheduler stores it once).
 * `vmlb submit` sends it; the scheduler checks it entry by entry before it extracts anything
 * (apps/scheduler/src/project-archive.ts).
 */
export async function packProject(dir: string): Promise<Buffer> {
  const root = path.resolve(dir);
  const pack = tar.pack();
  const gzip = createGzip({ level: 6 });
  const chunks: Buffer[] = [];
  gzip.on('data', (c: Buffer) => chunks.push(c));
  const finished = new Promise<void>((resolve, reject) => {
    gzip.on('end', resolve);
    gzip.on('error', reject);
    pack.on('error', reject);
  });
  pack.pipe(gzip);

  const mtime = new Date(0);
  const add = (header: tar.Header | Parameters<typeof pack.entry>[0], content?: Buffer) =>
    new Promise<void>((resolve, reject) => {
      const cb = (err?: Error | null) => (err ? reject(err) : resolve());
      if (content) pack.entry(header, content, cb);
      else pack.entry(header, cb);
    });

  const walk = async (rel: string): Promise<void> => {
    const names = (await readdir(path.join(root, rel))).sort();
    for (const name of names) {
      if (rel === '' && (name.startsWith('.') || name === OUTPUT_DIR)) continue;
      const relPath = rel ? `${rel}/${name}` : name;
      const abs = path.join(root, relPath);
      const st = await lstat(abs);
      const common = { name: relPath, mtime, uid: 0, gid: 0, uname: '', gname: '' };
      if (st.isDirectory()) {
        await add({ ...common, type: 'directory', mode: 0o755 });
        await walk(relPath);
      } else if (st.isSymbolicLink()) {
        await add({ ...common, type: 'symlink', linkname: await readlink(abs), mode: 0o777 });
      } else if (st.isFile()) {
        const content = await readFile(abs);
        await add({ ...common, type: 'file', size: content.length, mode: st.mode & 0o100 ? 0o755 : 0o644 }, content);
      } else {
        throw new VmlbError('FLEET_USAGE', `${relPath}: not a file, folder or symlink (a device, FIFO or socket cannot be sent)`);
      }
    }
  };
  try {
    await walk('');
    pack.finalize();
  } catch (e) {
    // The streams then fail with this same error: it is thrown once, here, not left unhandled.
    finished.catch(() => undefined);
    pack.destroy(e as Error);
    throw e;
  }
  await finished;
  return Buffer.concat(chunks);
}
