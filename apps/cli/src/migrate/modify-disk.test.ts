import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { classifyModifyDisk } from './modify-disk.js';

const REPO = fileURLToPath(new URL('../../../../', import.meta.url));

/** A modify-disk written to the original tool's contract, as its users wrote them. */
const ORIGINAL_GROW = await readFile(new URL('./fixtures/original-modify-disk.sh', import.meta.url), 'utf8');

/** What vmlb migrate makes of it. */
const REWRITTEN_GROW = await readFile(new URL('./fixtures/rewritten-modify-disk.sh', import.meta.url), 'utf8');

describe('classifyModifyDisk', () => {
  it('rewrites the original grow-the-disk pattern to # disk-size and $VMLB_DEVICE', () => {
    const r = classifyModifyDisk(ORIGINAL_GROW);
    expect(r).toMatchObject({ form: 'original', size: '30G', partition: 1 });
    expect(r.form === 'original' && r.rewritten).toBe(REWRITTEN_GROW);
    // The result is this tool's form: a second run leaves it alone.
    expect(classifyModifyDisk(REWRITTEN_GROW)).toEqual({ form: 'vmlb' });
  });

  it.each([
    ['positional arguments, -c, no argument check', 'qemu-img create -f qcow2 -b "$1" "$2" 8g\nqemu-nbd -c "$3" "$2"\ngrowpart "$3" 2\ne2fsck -fy "${3}p2"\nresize2fs "${3}p2"\nqemu-nbd -d "$3"\nsync\n', '8G', 2],
    [
      'a size variable, sudo, tolerated failures, a one-line check, continuation lines',
      'set -eu\n[ $# -eq 3 ] || { echo "usage: $0 src dst dev" >&2; exit 2; }\nsrc=$1; dst=$2; dev=$3\nsize=512M\nqemu-img create -f qcow2 \\\n  -b "$src" -F qcow2 "$dst" "$size"\nsudo qemu-nbd --connect "$dev" "$dst" && sleep 1\ngrowpart "$dev" 1 || true\ne2fsck -p "$dev"p1 >/dev/null 2>&1 || [ $? -le 1 ]\nresize2fs "${dev}p1"  # to the end\nudevadm settle\n',
      '512M',
      1,
    ],
    ['no size: the overlay keeps its size', 'qemu-img create -f qcow2 -b "$1" "$2"\nqemu-nbd --connect="$3" "$2"\ngrowpart "$3" 1\nresize2fs "${3}p1"\n', undefined, 1],
  ])('recognises %s', (_what, body, size, partition) => {
    const r = classifyModifyDisk(`#!/bin/sh\n${body}`);
    expect(r).toMatchObject({ form: 'original', size, partition });
    if (r.form !== 'original') return;
    expect(r.rewritten.startsWith('#!/bin/sh\n')).toBe(true);
    expect(r.rewritten).toContain(`p=$(vmlb-partition ${partition})`);
    expect(r.rewritten.includes('# disk-size')).toBe(size !== undefined);
  });

  it.each([
    ['a step the pattern does not have', ORIGINAL_GROW.replace('sleep 1', 'sleep 1\nmount "${device}p1" /mnt/img'), 19, 'mount "${device}p1" /mnt/img', /mount is not one of its steps/],
    ['a redirection to a file', ORIGINAL_GROW.replace('growpart "$device" 1', 'growpart "$device" 1 > /tmp/log'), 19, 'growpart "$device" 1 > /tmp/log', /redirects/],
    ['a usage block that does more', ORIGINAL_GROW.replace('    exit 1', '    rm -rf /tmp/x\n    exit 1'), 8, 'rm -rf /tmp/x', /argument check/],
    ['another format', ORIGINAL_GROW.replace('-f qcow2', '-f raw'), 15, 'qemu-img create -f raw -b "$source" -o compat=0.10 "$target" 30G', /format/],
  ])('leaves alone %s, naming the first line that does not fit', (_what, script, line, text, why) => {
    const r = classifyModifyDisk(script);
    expect(r).toMatchObject({ form: 'other', line, text });
    expect(r.form === 'other' && r.why).toMatch(why);
  });

  it('leaves alone a script that lacks a step or mixes partitions', () => {
    expect(classifyModifyDisk(ORIGINAL_GROW.replace(/^resize2fs.*$/m, ''))).toMatchObject({ form: 'other', line: 0, why: 'it has no resize2fs of the grown partition' });
    expect(classifyModifyDisk(ORIGINAL_GROW.replace('resize2fs -f "${device}p1"', 'resize2fs -f "${device}p2"'))).toMatchObject({ form: 'other', why: /different partitions \(1, 2\)/ });
  });

  it("takes the repository's own modify-disk examples as this tool's form", async () => {
    for (const f of ['examples/debian/03_grow/modify-disk', 'examples/hello/03_grow/modify-disk']) {
      expect(classifyModifyDisk(await readFile(path.join(REPO, f), 'utf8'))).toEqual({ form: 'vmlb' });
    }
  });
});
