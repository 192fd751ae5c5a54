/**
 * The base image the SConstruct downloads (a URL, an md5), as a `00_base/base-image` layer: its
 * sha256 computed from a download, or a `sha256: TODO` line that vmlb build refuses.
 */
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { LAYER_DIR_PATTERN, formatBytes, type LayerKind } from '@vmlb/layer-engine';
import { compressionOf } from './compression.js';
import { hashUrl } from './download.js';
import { exists, readIfFile } from './files.js';
import type { LayerDir, MigrateOptions, Migration } from './migration.js';
import type { SconsBaseImage } from './sconstruct.js';

/** The text of a `base-image` file for the original's base image. */
export function baseImageText(o: { url: string; sha256?: string; md5?: string; todo?: string }): string {
  const lines = ['# The base image the original SConstruct downloaded (written by vmlb migrate).'];
  if (o.md5) lines.push(`# md5 in the SConstruct (of the decompressed image): ${o.md5}`);
  lines.push(`source: ${o.url}`);
  lines.push(o.sha256 ? `sha256: ${o.sha256}` : `sha256: TODO ${o.todo ?? 'put the image\'s sha256 here (sha256sum IMAGE)'}`);
  return lines.join('\n') + '\n';
}

/**
 * Adds the base image's layer before the first layer, unless it has a base-image or create-disk
 * layer already; a base-image whose sha256 an earlier run left a TODO is tried again. `base` is
 * the SConstruct's, null when the project has no SConstruct.
 */
export async function migrateBaseImage(m: Migration, layers: LayerDir[], kinds: Map<string, LayerKind[]>, base: SconsBaseImage | null): Promise<void> {
  const { o, target } = m;
  const first = layers[0]!;
  const firstKinds = kinds.get(first.name) ?? [];
  if (firstKinds.includes('base-image')) {
    const rel = `${first.name}/base-image`;
    const text = (await readIfFile(path.join(target, rel))) ?? '';
    const sum = /^[ \t]*sha256[ \t]*:[ \t]*(TODO\b.*)$/im.exec(text);
    if (sum) {
      // Left by an earlier run: try again (the URL may answer now).
      const url = /^[ \t]*(?:source|url)[ \t]*:[ \t]*(https?:\/\/\S+)[ \t]*$/im.exec(text)?.[1];
      const md5 = /^#[ \t]*md5 in the SConstruct[^:\n]*:[ \t]*([0-9a-f]{32})[ \t]*$/im.exec(text)?.[1] ?? (base?.url === url ? base?.md5 : undefined);
      const compressed = url ? compressionOf(url) : null;
      const r = url && !compressed ? await fetchBase(url, md5, o) : null;
      if (r?.sha256) {
        await m.write(rel, text.replace(sum[0], `sha256: ${r.sha256}`));
        m.done(rel, `sha256: ${r.said}`);
      } else {
        const line = text.slice(0, sum.index).split('\n').length;
        const why = compressed ? `${url} is compressed (${compressed}): vmlb imports a qcow2 or raw image as it is` : r?.said;
        m.todo(rel, `line ${line}: sha256: is still a TODO${why ? ` (${why})` : ''}; put the image's sha256 there (sha256sum IMAGE)`);
      }
    }
  } else if (!firstKinds.includes('create-disk')) {
    const needs = `the first layer (${first.name}) needs a base-image or create-disk layer before it`;
    const zero = layers.find((l) => l.number === 0);
    if (base === null) m.todo('.', `no SConstruct names the original's base image: ${needs}, e.g. 00_base/base-image with "source: URL" and "sha256: HEX"`);
    else if (base.unresolved) m.todo('SConstruct', `its base image's URL "${base.unresolved}" has parts vmlb migrate cannot fill in: ${needs}, e.g. 00_base/base-image with "source: URL" and "sha256: HEX"`);
    else if (base.urls.length === 0) m.todo('SConstruct', `it names no http(s) URL of a base image: ${needs}, e.g. 00_base/base-image with "source: URL" and "sha256: HEX"`);
    else if (base.urls.length > 1) m.todo('SConstruct', `it names ${base.urls.length} URLs (${base.urls.join(', ')}): ${needs}: 00_base/base-image with "source: URL" of the base image and "sha256: HEX"`);
    else if (zero || (await exists(path.join(target, '00_base')))) {
      m.todo(zero?.name ?? '00_base', `the base image's layer goes first as 00_base, but ${zero ? `layer number 0 is ${zero.name}` : '00_base exists'}: renumber ${zero?.name ?? 'it'} (e.g. to 01_${zero ? LAYER_DIR_PATTERN.exec(zero.name)![2] : 'x'}) and run vmlb migrate again`);
    } else {
      const url = base.url!;
      const md5 = base.md5;
      const rel = '00_base/base-image';
      const compressed = compressionOf(url);
      const r = compressed ? null : await fetchBase(url, md5, o);
      await mkdir(path.join(target, '00_base'), { recursive: true });
      m.report.changed = true;
      if (r?.sha256) {
        await m.write(rel, baseImageText({ url, sha256: r.sha256, md5 }));
        m.done(rel, `added before ${first.name}, the image the SConstruct downloaded: source: ${url}, sha256: ${r.said}`);
      } else {
        const why = compressed ?? r?.compressed;
        const todoLine = why
          ? `the image is compressed (${why}): vmlb imports a qcow2 or raw image as it is`
          : `the image's sha256 (sha256sum IMAGE): vmlb migrate could not download it (${r!.why ?? r!.said})`;
        const text = baseImageText({ url, md5, todo: todoLine });
        await m.write(rel, text);
        m.done(rel, `added before ${first.name}, the image the SConstruct downloaded: source: ${url}, with its sha256 still to fill in`);
        const line = text.split('\n').findIndex((l) => l.startsWith('sha256:')) + 1;
        m.todo(
          rel,
          why
            ? `the SConstruct's image ${url} is compressed (${why}), and vmlb imports a qcow2 or raw image as it is: decompress it${md5 ? `, check its md5 (${md5})` : ''}, put the image where vmlb can read it (on the source: line, a path relative to 00_base or an http(s) URL) and its sha256 on line ${line}`
            : `line ${line}: sha256: is a TODO: ${r!.said}; put the image's sha256 there (sha256sum IMAGE), or run vmlb migrate again when the URL answers`,
        );
      }
    }
  }
}

/** Download the base image to hash it; what to say about it, and its sha256 when it is the one the SConstruct pins. */
async function fetchBase(url: string, md5: string | undefined, o: MigrateOptions): Promise<{ sha256?: string; said: string; why?: string; compressed?: string }> {
  o.onProgress?.(`downloading ${url} to compute its sha256…`);
  const r = await hashUrl(url, { stallMs: o.stallMs });
  if (r.result === 'unreachable') return { said: `downloading ${url} failed: ${r.why}`, why: r.why };
  if (r.result === 'compressed') return { said: `${url} is a compressed file (${r.format})`, compressed: r.format };
  if (md5 && r.md5 !== md5) {
    return { said: `the image at ${url} has md5 ${r.md5}, but the SConstruct pins ${md5}: it is not the image the project was built on; check it`, why: `its md5 is ${r.md5}, not the SConstruct's ${md5}` };
  }
  const check = md5 ? 'its md5 matches the SConstruct\'s' : 'the SConstruct gives no md5 to check it against';
  return { sha256: r.sha256, said: `computed from a download of ${formatBytes(r.bytes)} (${check})` };
}
