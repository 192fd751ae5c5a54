import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open } from 'node:fs/promises';

/** The sha256 of a file's whole content, streamed. */
export async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 })) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** The sha256 of a text (store file names derived from paths). */
export function sha256Text(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

const SAMPLE_HEAD = 64 << 10;
const SAMPLE_PAGES = 64;
const SAMPLE_PAGE = 4096;

/** A hash of a fixed few parts of a file: its head (a qcow2's header and tables) and 64 pages spread evenly over it. */
export async function sampleHash(file: string, size: number): Promise<string> {
  const h = createHash('sha256');
  const fd = await open(file, 'r');
  try {
    const head = Buffer.alloc(Math.min(SAMPLE_HEAD, size));
    await fd.read(head, 0, head.length, 0);
    h.update(head);
    if (size > SAMPLE_HEAD) {
      const page = Buffer.alloc(SAMPLE_PAGE);
      const span = Math.max(0, size - SAMPLE_PAGE);
      for (let i = 0; i < SAMPLE_PAGES; i++) {
        const at = Math.floor((span * i) / (SAMPLE_PAGES - 1) / SAMPLE_PAGE) * SAMPLE_PAGE;
        const { bytesRead } = await fd.read(page, 0, SAMPLE_PAGE, at);
        h.update(page.subarray(0, bytesRead));
      }
    }
  } finally {
    await fd.close();
  }
  return h.digest('hex');
}
