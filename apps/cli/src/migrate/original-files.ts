/**
 * The rest of the original's files (SConstruct, site_scons/, bin/…, build/): left alone, and
 * listed with what vmlb offers instead.
 */
import type { Dirent } from 'node:fs';
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { OUTPUT_DIR } from '@vmlb/layer-engine';
import { isDir } from './files.js';
import type { Migration } from './migration.js';
import type { SconsBaseImage } from './sconstruct.js';

/** What vmlb offers for each of the original's own files. */
const ORIGINAL_FILES: Record<string, string> = {
  SConstruct: "the original's scons build: vmlb build reads the layer folders itself (its base image is now a base-image layer); remove it once nobody builds this with scons",
  's3_cache.py': "the original's shared cache on S3: vmlb build --cache s3://BUCKET/PREFIX (or VMLB_CACHE) shares layers through any S3 store; a fleet's shared store is VMLB_SHARED (vmlb submit)",
  'bin/new-layer': 'vmlb new-layer NAME (it numbers the folder itself: NAME without NN_)',
  'bin/test-boot': 'vmlb test-boot (-snapshot, user networking or --bridge br0, --user-data/--meta-data for the cloud-init seed)',
  'bin/compare-layers': 'vmlb diff A B lists the changes (an image file, a layer name or a key on each side), vmlb shell A --compare B opens a shell in A with B read-only at /compare; no nbd device needed',
  'bin/qemu-chroot': 'vmlb build runs each build-layer in its own sandbox, the layer folder at /mnt; vmlb shell LAYER opens a shell there by hand',
  'bin/lib.sh': "the original's shell helpers for its bin/ scripts",
  'test-boot': 'vmlb test-boot --user-data test-boot/user-data.yaml --meta-data test-boot/meta-data.yaml makes the cloud-init seed itself (no cloud-init.img to generate)',
};

/**
 * Lists every top-level entry of the target that is not a layer folder, and with --out the
 * folders not copied (`notCopied` of the project's `top` entries).
 */
export async function listLeftAlone(m: Migration, top: Dirent[], notCopied: Set<string>, layerNames: string[], base: SconsBaseImage | null): Promise<void> {
  const target = m.target;
  const targetTop = await readdir(target, { withFileTypes: true });
  const names = new Set(targetTop.map((d) => d.name));
  if (m.o.out !== undefined) for (const d of top) if (notCopied.has(d.name) && d.isDirectory()) names.add(d.name);
  for (const name of [...names].sort()) {
    if (name.startsWith('.') || layerNames.includes(name) || name === '00_base') continue;
    const inOut = m.o.out !== undefined && notCopied.has(name);
    if (name === OUTPUT_DIR) {
      m.left(`${name}/`, `the original's output (layer qcow2s, image.qcow2)${inOut ? ', not copied' : ''}: vmlb build writes build/image.qcow2 (a thin overlay on its store's chain; --flatten for one file)${inOut ? '' : '; remove the old one (rm -r build) before'}`);
    } else if (base?.cacheDir && name === base.cacheDir.replace(/\/+$/, '')) {
      m.left(`${name}/`, `the original's scons cache${inOut ? ', not copied' : ''}: vmlb keeps layers in its store (VMLB_STORE, ~/.cache/vmlb), keyed anew; nothing of it is reused`);
    } else if (name === 'site_scons') {
      const files = await readdir(path.join(target, name)).catch(() => [] as string[]);
      const s3 = files.includes('s3_cache.py') ? `s3_cache.py: ${ORIGINAL_FILES['s3_cache.py']}` : 'scons plugins: vmlb has no plugins';
      m.left('site_scons/', s3);
    } else if (name === 'bin' && (await isDir(path.join(target, name)))) {
      for (const f of (await readdir(path.join(target, name))).sort()) {
        m.left(`bin/${f}`, ORIGINAL_FILES[`bin/${f}`] ?? "not one of the original's scripts; left as it is");
      }
    } else if (ORIGINAL_FILES[name]) {
      m.left(names.has(name) && (await isDir(path.join(target, name))) ? `${name}/` : name, ORIGINAL_FILES[name]!);
    } else {
      m.left(name, 'not a layer folder: left as it is (vmlb reads only the NN_name folders)');
    }
  }
}
