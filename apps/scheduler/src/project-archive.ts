import { createReadStream } from 'node:fs';
import { constants } from 'node:fs';
import { copyFile, mkdir, open, symlink } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import * as tar from 'tar-stream';
import { formatBytes } from '@vmlb/layer-engine';
import { HttpError } from './http-error.js';

/**
 * An uploaded project is untrusted. Every entry of the .tar.gz is checked before anything is
 * extracted, and again while extracting: an absolute name, a `..` segment, a device node, a
 * FIFO or any other special file, a symlink whose target leaves the project (followed through
 * the archive's other symlinks, as the kernel would), a hard link to anything but a file met
 * earlier, an entry under a symlink or a file, and a name given twice are each refused with a
 * 400 naming the entry. Too many entries, or too many bytes once extracted (a gzip bomb), are
 * refused too.
 */

export interface ArchiveLimits {
  /** @default 10_000 */
  maxEntries?: number;
  /** The sum of the files' sizes. @default 512 MiB */
  maxExtractedBytes?: number;
}

export const DEFAULT_ARCHIVE_LIMITS: Required<ArchiveLimits> = { maxEntries: 10_000, maxExtractedBytes: 512 * 1024 * 1024 };

type EntryType = 'file' | 'directory' | 'symlink' | 'link';

interface Entry {
  /** Normalized: relative, '/'-separated, no '.', '..' or empty segments. */
  name: string;
  type: EntryType;
  /** symlink: the target as written; link: the normalized name of the file it links to. */
  linkname?: string;
  size: number;
  executable: boolean;
}

export interface ArchiveListing {
  entries: Entry[];
  files: number;
  bytes: number;
}

const refuse = (entry: string, why: string) =>
  new HttpError(400, 'UNSAFE_ENTRY', `the project archive's entry "${entry}" ${why}; nothing was stored`, { entry });

const SPECIAL: Record<string, string> = {
  'character-device': 'is a character device',
  'block-device': 'is a block device',
  fifo: 'is a FIFO',
};

const UTF8 = new TextDecoder('utf-8', { fatal: true });

/**
 * A name as tar-stream hands it over (ustar names read as latin1, so that their bytes are
 * kept), decoded as UTF-8; a name that is not UTF-8 is refused (the engine, the store and the
 * workers' file systems take names as UTF-8: it would fail later, on a worker).
 */
function utf8Name(raw: string, what: string, entry: string, fromPax: boolean): string {
  // A pax record is UTF-8 by the standard, decoded so by tar-stream: a bad byte shows as U+FFFD.
  if (raw.includes('\uFFFD')) throw refuse(printable(entry), `has a ${what} that is not UTF-8`);
  if (fromPax || !/[\u0080-\u00ff]/.test(raw)) return raw;
  try {
    return UTF8.decode(Buffer.from(raw, 'latin1'));
  } catch {
    throw refuse(printable(entry), `has a ${what} that is not UTF-8`);
  }
}

/** A name fit for a message: bytes that are not printable UTF-8 shown as \xNN. */
function printable(raw: string): string {
  const bytes = Buffer.from(raw, /[^\u0000-\u00ff]/.test(raw) ? 'utf8' : 'latin1');
  let out = '';
  for (const b of bytes) out += b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : `\\x${b.toString(16).padStart(2, '0')}`;
  return out;
}

/** A tar name made relative and clean, or a refusal naming it. Null for the root itself ('./'). */
function normalizeName(raw: string, what = 'name', entry = raw): string | null {
  if (raw.includes('\0')) throw refuse(entry, `has a NUL byte in its ${what}`);
  if (raw.startsWith('/')) throw refuse(entry, `has an absolute ${what}${what === 'name' ? '' : ` (${raw})`}: entries must be relative to the project`);
  const parts = raw.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.includes('..')) throw refuse(entry, `climbs out of the project with ".." in its ${what}${what === 'name' ? '' : ` (${raw})`}`);
  if (parts.length === 0) return null;
  return parts.join('/');
}

/** Checks one tar header (both passes use it) and returns the entry, or null for the root folder. */
function checkHeader(h: tar.Header): Entry | null {
  const pax = (h as tar.Header & { pax?: Record<string, string> }).pax ?? {};
  const raw = utf8Name(h.name, 'name', h.name, pax.path !== undefined);
  if (h.linkname) h.linkname = utf8Name(h.linkname, 'link target', h.name, pax.linkpath !== undefined);
  const type = h.type ?? 'unknown';
  const name = normalizeName(raw);
  if (name === null) {
    if (type !== 'directory') throw refuse(raw, 'names the project folder itself but is not a folder');
    return null;
  }
  if (type in SPECIAL) throw refuse(raw, `${SPECIAL[type]}: a project may hold only files, folders and symlinks`);
  const executable = ((h.mode ?? 0) & 0o100) !== 0;
  switch (type) {
    case 'file':
    case 'contiguous-file':
      return { name, type: 'file', size: h.size ?? 0, executable };
    case 'directory':
      return { name, type: 'directory', size: 0, executable: false };
    case 'symlink': {
      const target = h.linkname ?? '';
      if (target === '') throw refuse(raw, 'is a symlink with an empty target');
      if (target.includes('\0')) throw refuse(raw, 'is a symlink whose target has a NUL byte');
      if (target.startsWith('/')) throw refuse(raw, `is a symlink pointing outside the project (to the absolute path ${target})`);
      return { name, type: 'symlink', linkname: target, size: 0, executable: false };
    }
    case 'link': {
      const target = normalizeName(h.linkname ?? '', 'hard link target', raw);
      if (target === null) throw refuse(raw, 'is a hard link to the project folder');
      return { name, type: 'link', linkname: target, size: 0, executable };
    }
    default:
      throw refuse(raw, `is of a type the scheduler does not take (${type}): a project may hold only files, folders and symlinks`);
  }
}

/**
 * Reads every entry of a .tar.gz file, draining each one's data through `onData`. The inflated
 * stream is cut off past `maxInflated` bytes: what a gzip bomb hides outside any entry (between
 * them, after the end) costs no more than that.
 */
async function eachEntry(file: string, maxInflated: number, onEntry: (h: tar.Header, data: Readable) => Promise<void>): Promise<void> {
  const source = createReadStream(file);
  const gunzip = createGunzip();
  let inflated = 0;
  gunzip.on('data', (chunk: Buffer) => {
    inflated += chunk.length;
    if (inflated > maxInflated) {
      fail(new HttpError(400, 'ARCHIVE_TOO_LARGE', `the project archive inflates to more than ${formatBytes(maxInflated)} (more than its entries hold): refused as a gzip bomb`, { maxInflated }));
      gunzip.destroy();
    }
  });
  // latin1 keeps a ustar name's bytes as they are; checkHeader decodes them as UTF-8.
  const extract = tar.extract({ filenameEncoding: 'latin1' } as Parameters<typeof tar.extract>[0]);
  function fail(e: Error): void {
    extract.destroy(e);
  }
  source.on('error', fail);
  gunzip.on('error', (e) => fail(new HttpError(400, 'NOT_A_TAR_GZ', `the upload is not a gzip-compressed tar archive (${e.message}): send the project as a .tar.gz (vmlb submit does)`)));
  source.pipe(gunzip).pipe(extract as unknown as NodeJS.WritableStream);
  try {
    for await (const entry of extract) {
      await onEntry(entry.header, entry as unknown as Readable);
    }
  } catch (e) {
    if (e instanceof HttpError) throw e;
    throw new HttpError(400, 'NOT_A_TAR_GZ', `the upload is not a readable .tar.gz: ${(e as Error).message}`);
  } finally {
    source.destroy();
    gunzip.destroy();
  }
}

async function drain(data: Readable): Promise<void> {
  for await (const _ of data) {
    // The first pass looks at headers only.
  }
}

/** Why following `target` from the symlink `name` leaves the project, or null when it stays in. */
export function symlinkEscape(name: string, target: string, links: ReadonlyMap<string, string>): string | null {
  const stack = name.split('/').slice(0, -1);
  const queue = target.split('/');
  let hops = 0;
  while (queue.length > 0) {
    const c = queue.shift()!;
    if (c === '' || c === '.') continue;
    if (c === '..') {
      if (stack.length === 0) return `is a symlink pointing outside the project (to ${target})`;
      stack.pop();
      continue;
    }
    stack.push(c);
    const next = links.get(stack.join('/'));
    if (next === undefined) continue;
    if (++hops > 40) return `is a symlink in a loop of symlinks (to ${target})`;
    if (next.startsWith('/')) return `is a symlink pointing outside the project (to ${target}, through ${stack.join('/')} -> ${next})`;
    stack.pop();
    queue.unshift(...next.split('/'));
  }
  return null;
}

/** The cross-entry checks, once every header is known. */
function checkListing(entries: Entry[]): void {
  const all = new Map(entries.map((e) => [e.name, e]));
  const earlier = new Map<string, Entry>();
  const links = new Map<string, string>();
  for (const e of entries) {
    if (e.type === 'symlink') links.set(e.name, e.linkname!);
  }
  for (const e of entries) {
    // Every folder above an entry is a folder: never a file, and never a symlink to write through.
    const parts = e.name.split('/');
    for (let i = 1; i < parts.length; i++) {
      const above = all.get(parts.slice(0, i).join('/'));
      if (above && above.type !== 'directory') {
        throw refuse(e.name, `lies under ${above.name}, which is a ${above.type === 'symlink' ? 'symlink' : 'file'}, not a folder`);
      }
    }
    if (e.type === 'link') {
      const target = earlier.get(e.linkname!);
      if (!target || target.type !== 'file') throw refuse(e.name, `is a hard link to ${e.linkname}, which is not a file earlier in the archive`);
    }
    if (e.type === 'symlink') {
      const why = symlinkEscape(e.name, e.linkname!, links);
      if (why) throw refuse(e.name, why);
    }
    earlier.set(e.name, e);
  }
}

/** What an archive within the limits can inflate to: its files, plus headers and padding (a pax header each, rounded up). */
function maxInflatedBytes(maxExtractedBytes: number, maxEntries: number): number {
  return maxExtractedBytes + (maxEntries + 2) * 3 * 512 + (1 << 20);
}

/**
 * Pass one: every header, checked, before anything is written. Entry data is read and
 * dropped (to reach the next header), so the limits hold against the bytes really there.
 */
export async function inspectArchive(file: string, limits: ArchiveLimits = {}): Promise<ArchiveListing> {
  const { maxEntries, maxExtractedBytes } = { ...DEFAULT_ARCHIVE_LIMITS, ...limits };
  const entries: Entry[] = [];
  const seen = new Set<string>();
  let bytes = 0;
  let files = 0;
  await eachEntry(file, maxInflatedBytes(maxExtractedBytes, maxEntries), async (h, data) => {
    const e = checkHeader(h);
    // Refused by the header's size before its data is inflated (a one-entry gzip bomb costs nothing).
    if (e) {
      if (seen.has(e.name)) throw refuse(e.name, 'is in the archive twice');
      seen.add(e.name);
      entries.push(e);
      if (entries.length > maxEntries) throw new HttpError(400, 'TOO_MANY_ENTRIES', `the project archive has more than ${maxEntries} entries (at "${e.name}")`, { entry: e.name, maxEntries });
      if (e.type === 'file') {
        files++;
        bytes += e.size;
        if (bytes > maxExtractedBytes) {
          throw new HttpError(400, 'ARCHIVE_TOO_LARGE', `the project archive would extract to more than ${formatBytes(maxExtractedBytes)} (at "${e.name}", ${formatBytes(e.size)})`, {
            entry: e.name,
            maxExtractedBytes,
          });
        }
      }
    }
    await drain(data);
  });
  if (entries.length === 0) throw new HttpError(400, 'EMPTY_ARCHIVE', 'the project archive is empty');
  checkListing(entries);
  return { entries, files, bytes };
}

/**
 * Pass two: extracts into `dir` (a fresh, empty folder), holding every entry to the listing of
 * pass one and checking it again. Files are created exclusively (O_EXCL never follows a link),
 * with the executable bit kept and nothing else (no setuid, no owner).
 */
export async function extractArchive(file: string, dir: string, listing: ArchiveListing): Promise<void> {
  const expected = new Map(listing.entries.map((e) => [e.name, e]));
  const root = path.resolve(dir);
  const inside = (name: string) => {
    const p = path.resolve(root, name);
    if (p !== root && !p.startsWith(root + path.sep)) throw refuse(name, 'resolves outside the project');
    return p;
  };
  await eachEntry(file, maxInflatedBytes(listing.bytes, listing.entries.length), async (h, data) => {
    const e = checkHeader(h);
    if (!e) return drain(data);
    const want = expected.get(e.name);
    if (!want || want.type !== e.type || want.linkname !== e.linkname || want.size !== e.size) {
      throw refuse(h.name, 'changed between the check and the extraction');
    }
    const target = inside(e.name);
    await mkdir(path.dirname(target), { recursive: true, mode: 0o755 });
    switch (e.type) {
      case 'directory':
        await mkdir(target, { recursive: true, mode: 0o755 });
        return drain(data);
      case 'symlink':
        await symlink(e.linkname!, target);
        return drain(data);
      case 'link':
        await copyFile(inside(e.linkname!), target, constants.COPYFILE_EXCL);
        return drain(data);
      case 'file': {
        const fh = await open(target, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, e.executable ? 0o755 : 0o644);
        let written = 0;
        try {
          for await (const chunk of data) {
            written += (chunk as Buffer).length;
            if (written > e.size) throw refuse(h.name, 'holds more bytes than its header says');
            await fh.write(chunk as Buffer);
          }
        } finally {
          await fh.close();
        }
        return;
      }
    }
  });
}
