import { randomBytes } from 'node:crypto';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { VmlbError } from '../errors.js';
import { exec } from '../host/exec.js';

/**
 * A cloud-init NoCloud seed: a small vfat disk labelled CIDATA holding `user-data`,
 * `meta-data` (and `network-config` when given). cloud-init in the guest finds it by its
 * label; an image without cloud-init ignores the extra disk. Made with mkfs.vfat and mcopy
 * (dosfstools, mtools): no mount, no ISO tools.
 */
export interface SeedContent {
  userData?: string;
  metaData?: string;
  networkConfig?: string;
}

/** What the guest gets when no --user-data / --meta-data is given. */
export function defaultSeed(hostname = 'vmlb-test-boot'): Required<Pick<SeedContent, 'userData' | 'metaData'>> {
  return {
    userData: '#cloud-config\n{}\n',
    metaData: `instance-id: vmlb-${randomBytes(4).toString('hex')}\nlocal-hostname: ${hostname}\n`,
  };
}

/** Reads the seed's files given on the command line; unset ones get the defaults. */
export async function seedFromFiles(files: { userData?: string; metaData?: string; networkConfig?: string }): Promise<SeedContent> {
  const read = async (file: string | undefined, flag: string) => {
    if (file === undefined) return undefined;
    try {
      return await readFile(file, 'utf8');
    } catch (e) {
      throw new VmlbError('SEED_FILE', `${flag} ${file}: ${(e as Error).message}`);
    }
  };
  const d = defaultSeed();
  return {
    userData: (await read(files.userData, '--user-data')) ?? d.userData,
    metaData: (await read(files.metaData, '--meta-data')) ?? d.metaData,
    networkConfig: await read(files.networkConfig, '--network-config'),
  };
}

export async function makeSeedImage(file: string, content: SeedContent, o: { signal?: AbortSignal } = {}): Promise<void> {
  const dir = `${file}.d`;
  await mkdir(dir, { recursive: true });
  try {
    const names: string[] = [];
    const put = async (name: string, text: string | undefined) => {
      if (text === undefined) return;
      await writeFile(path.join(dir, name), text);
      names.push(path.join(dir, name));
    };
    await put('user-data', content.userData ?? defaultSeed().userData);
    await put('meta-data', content.metaData ?? defaultSeed().metaData);
    await put('network-config', content.networkConfig);
    const bytes = Object.values(content).reduce((s, t) => s + (t ? Buffer.byteLength(t) : 0), 0);
    const kib = Math.max(1024, Math.ceil(bytes / 1024) + 512);
    await rm(file, { force: true });
    await exec(['mkfs.vfat', '-n', 'CIDATA', '-C', file, String(kib)], { signal: o.signal });
    await exec(['mcopy', '-i', file, ...names, '::'], { env: { MTOOLS_SKIP_CHECK: '1' }, signal: o.signal });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
