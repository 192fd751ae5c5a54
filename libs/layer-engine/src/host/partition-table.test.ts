import { mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { exec } from './exec.js';
import { ExecError } from '../errors.js';
import { GPT_LINUX_FILESYSTEM, GPT_LINUX_ROOT_X86_64, parseSfdiskJson, readPartitionTable, rootPartition } from './partition-table.js';

const MiB = 1024 * 1024;
const ESP = 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B';
const MS_BASIC_DATA = 'EBD0A0A2-B9E5-4433-87C0-68B6B72699C7';

let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vmlb-pt-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A sparse file of `size` bytes partitioned by an sfdisk script (no script: no table). */
async function disk(name: string, size: number, script?: string): Promise<string> {
  const file = join(dir, name);
  await writeFile(file, '');
  await truncate(file, size);
  if (script !== undefined) await exec(['sfdisk', '--quiet', '--no-reread', file], { input: script });
  return file;
}

describe('readPartitionTable', () => {
  it('reads a GPT in bytes, with upper-case type GUIDs', async () => {
    const file = await disk(
      'gpt.raw',
      64 * MiB,
      `label: gpt\nstart=2048, size=20480, type=${GPT_LINUX_FILESYSTEM.toLowerCase()}\nstart=22528, type=${GPT_LINUX_ROOT_X86_64.toLowerCase()}\n`,
    );
    const table = await readPartitionTable(file);
    expect(table.label).toBe('gpt');
    expect(table.partitions).toHaveLength(2);
    expect(table.partitions[0]).toEqual({ number: 1, start: MiB, size: 10 * MiB, type: GPT_LINUX_FILESYSTEM });
    expect(table.partitions[1]).toMatchObject({ number: 2, start: 11 * MiB, type: GPT_LINUX_ROOT_X86_64 });
    // The last partition ends before the backup GPT (33 sectors at the end).
    expect(table.partitions[1]!.start + table.partitions[1]!.size).toBeLessThanOrEqual(64 * MiB - 33 * 512);
    expect(rootPartition(table, 64 * MiB)).toEqual({ number: 2, start: 11 * MiB, size: table.partitions[1]!.size });
  });

  it('numbers GPT partitions by their entry, not their position', async () => {
    const file = await disk('gaps.raw', 32 * MiB, `label: gpt\n2: start=2048, size=2048, type=${ESP}\n5: start=4096, type=${MS_BASIC_DATA}\n`);
    const table = await readPartitionTable(file);
    expect(table.partitions.map((p) => p.number)).toEqual([2, 5]);
    // Neither is a Linux partition: the largest one wins.
    expect(rootPartition(table, 32 * MiB).number).toBe(5);
  });

  it('reads an MBR table with two-hex-digit types', async () => {
    const file = await disk('mbr.raw', 32 * MiB, 'label: dos\nstart=2048, size=4096, type=c\nstart=8192, type=83\n');
    const table = await readPartitionTable(file);
    expect(table.label).toBe('dos');
    expect(table.partitions.map((p) => p.type)).toEqual(['0c', '83']);
    expect(rootPartition(table, 32 * MiB)).toEqual({ number: 2, start: 4 * MiB, size: 28 * MiB });
  });

  it('picks the first Linux filesystem partition when there is no root-typed one', async () => {
    const file = await disk('linux.raw', 32 * MiB, `label: gpt\nstart=2048, size=4096, type=${ESP}\nstart=6144, size=8192, type=${GPT_LINUX_FILESYSTEM}\nstart=14336, type=${GPT_LINUX_FILESYSTEM}\n`);
    const table = await readPartitionTable(file);
    expect(rootPartition(table, 32 * MiB)).toEqual({ number: 2, start: 3 * MiB, size: 4 * MiB });
  });

  it('treats a disk without a table as one whole-disk filesystem', async () => {
    const file = await disk('bare.raw', 16 * MiB);
    const table = await readPartitionTable(file);
    expect(table).toEqual({ label: 'none', partitions: [] });
    expect(rootPartition(table, 16 * MiB)).toEqual({ number: 0, start: 0, size: 16 * MiB });
  });

  it('throws an ExecError for a file that does not exist', async () => {
    await expect(readPartitionTable(join(dir, 'missing.raw'))).rejects.toBeInstanceOf(ExecError);
  });
});

describe('parseSfdiskJson', () => {
  it('uses the sector size sfdisk reports', () => {
    const json = JSON.stringify({
      partitiontable: {
        label: 'gpt',
        device: '/dev/nbd3',
        sectorsize: 4096,
        partitions: [{ node: '/dev/nbd3p1', start: 256, size: 1000, type: GPT_LINUX_FILESYSTEM.toLowerCase() }],
      },
    });
    expect(parseSfdiskJson(json, '/dev/nbd3').partitions).toEqual([
      { number: 1, start: 256 * 4096, size: 1000 * 4096, type: GPT_LINUX_FILESYSTEM },
    ]);
  });

  it('never picks an MBR extended partition as the largest', () => {
    const table = parseSfdiskJson(
      JSON.stringify({
        partitiontable: {
          label: 'dos',
          device: 'x.raw',
          partitions: [
            { node: 'x.raw1', start: 2048, size: 2048, type: 'c' },
            { node: 'x.raw2', start: 4096, size: 100000, type: '5' },
            { node: 'x.raw5', start: 6144, size: 4096, type: '7' },
          ],
        },
      }),
      'x.raw',
    );
    expect(rootPartition(table, 64 * MiB).number).toBe(5);
  });

  it('refuses a table with no usable partition', () => {
    expect(() => rootPartition({ label: 'gpt', partitions: [] }, MiB)).toThrow(/no partition/);
  });

  it('refuses a partition table that is neither GPT nor MBR, as a VmlbError', () => {
    const json = JSON.stringify({ partitiontable: { label: 'sun', device: 'x.raw', partitions: [] } });
    expect(() => parseSfdiskJson(json, 'x.raw')).toThrow(
      expect.objectContaining({ code: 'UNSUPPORTED_PARTITION_TABLE', message: 'sfdisk --json x.raw: unsupported partition table label "sun"' }),
    );
  });
});
