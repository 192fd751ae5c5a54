/** Whether a base image is compressed: vmlb imports a qcow2 or raw image as it is. */

/** The compression a name says a file has (`.xz`, `.gz`, …), or null. */
export function compressionOf(url: string): string | null {
  const m = /\.(xz|gz|tgz|bz2|zst|zstd|lz4|lzma)$/i.exec(url.replace(/[?#].*$/, ''));
  return m ? m[1]!.toLowerCase() : null;
}

/** The compression the first bytes of a file show, or null. */
export function compressionMagic(head: Buffer): string | null {
  if (head.subarray(0, 6).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))) return 'xz';
  if (head[0] === 0x1f && head[1] === 0x8b) return 'gz';
  if (head.subarray(0, 3).toString('latin1') === 'BZh') return 'bz2';
  if (head.subarray(0, 4).equals(Buffer.from([0x28, 0xb5, 0x2f, 0xfd]))) return 'zst';
  return null;
}
