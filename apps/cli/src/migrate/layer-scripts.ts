/** The layers' scripts: a modify-disk of the original's grow-the-disk pattern rewritten, hints followed by prose normalised. */
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { LAYER_KINDS, type LayerKind } from '@vmlb/layer-engine';
import { readIfFile } from './files.js';
import { normaliseHints } from './hints.js';
import type { LayerDir, Migration } from './migration.js';
import { classifyModifyDisk } from './modify-disk.js';

/** Migrates the scripts of each layer of the target, in order; the kinds of file each layer has. */
export async function migrateLayerScripts(m: Migration, layers: LayerDir[]): Promise<Map<string, LayerKind[]>> {
  const kinds = new Map<string, LayerKind[]>();
  for (const layer of layers) {
    const entries = await readdir(path.join(m.target, layer.name)).catch(() => [] as string[]);
    const found = LAYER_KINDS.filter((k) => entries.includes(k));
    kinds.set(layer.name, found);
    for (const kind of found) {
      if (kind === 'base-image') continue;
      const rel = `${layer.name}/${kind}`;
      const original = await readIfFile(path.join(m.target, rel));
      if (original === null) continue;
      let text = original;
      if (kind === 'modify-disk') {
        const form = classifyModifyDisk(text);
        if (form.form === 'original') {
          text = form.rewritten;
          const size = form.size ? `# disk-size ${form.size} (the size its qemu-img create gave the overlay), then ` : 'no # disk-size (its qemu-img create kept the size), then ';
          m.done(rel, `rewritten from the original's "modify-disk SOURCE TARGET DEVICE" for vmlb: ${size}growpart, e2fsck and resize2fs of partition ${form.partition} through $VMLB_DEVICE and vmlb-partition ${form.partition} (vmlb makes and attaches the overlay itself)`);
        } else if (form.form === 'other') {
          const at = form.line
            ? `line ${form.line} does not fit the original's grow-the-disk pattern (${form.why}): ${form.text}`
            : `it does not fit the original's grow-the-disk pattern: ${form.why}`;
          m.todo(rel, `left alone: ${at} — rewrite it by hand for vmlb: it gets no arguments, the disk is $VMLB_DEVICE (grown first by # disk-size SIZE), the overlay $VMLB_IMAGE, and vmlb-partition N names partition N; or, on a host with the nbd module, have it say "# args source target device" to run it as it is`);
        }
      }
      const hints = normaliseHints(text, kind);
      text = hints.text;
      for (const c of hints.changes) {
        m.done(rel, `line ${c.line}: "${c.from}" is now "${c.hint}", its prose kept as a comment on the line after it`);
      }
      if (text !== original) await m.write(rel, text);
    }
  }
  return kinds;
}
