import { exec } from './exec.js';
import { ExecError, VmlbError, tail } from '../errors.js';
import type { Partition, PartitionTable } from '../types.js';

/** GPT "Linux root (x86-64)" (Discoverable Partitions Specification). */
export const GPT_LINUX_ROOT_X86_64 = '4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709';
/** GPT "Linux filesystem data". */
export const GPT_LINUX_FILESYSTEM = '0FC63DAF-8483-4772-8E79-3D69D8477DE4';
/** MBR "Linux". */
export const MBR_LINUX = '83';
const MBR_EXTENDED = new Set(['05', '0f', '85']);

const NO_TABLE = /does not contain a recognized partition table/;

interface SfdiskJson {
  partitiontable?: {
    label?: string;
    device?: string;
    sectorsize?: number;
    partitions?: { node?: string; start?: number; size?: number; type?: string }[];
  };
}

/**
 * The partition table of a disk image file or block device as `sfdisk --json` reads it now,
 * offsets and sizes in bytes. A disk without a table gives `{ label: 'none', partitions: [] }`.
 */
export async function readPartitionTable(fileOrDevice: string, opts: { signal?: AbortSignal } = {}): Promise<PartitionTable> {
  const argv = ['sfdisk', '--json', fileOrDevice];
  const r = await exec(argv, { reject: false, signal: opts.signal });
  if (r.exitCode !== 0 || r.signal) {
    if (NO_TABLE.test(r.stderr)) return { label: 'none', partitions: [] };
    throw new ExecError(argv, r.exitCode, r.signal, tail(r.stderr, 10));
  }
  return parseSfdiskJson(r.stdout, fileOrDevice);
}

/** Exported for unit tests: turns `sfdisk --json` output into a PartitionTable. */
export function parseSfdiskJson(text: string, fileOrDevice: string): PartitionTable {
  const pt = (JSON.parse(text) as SfdiskJson).partitiontable;
  if (!pt) return { label: 'none', partitions: [] };
  const label = pt.label === 'gpt' || pt.label === 'dos' ? pt.label : null;
  if (!label) throw new VmlbError('UNSUPPORTED_PARTITION_TABLE', `sfdisk --json ${fileOrDevice}: unsupported partition table label ${JSON.stringify(pt.label)}`);
  const sector = pt.sectorsize ?? 512;
  const device = pt.device ?? fileOrDevice;
  const partitions: Partition[] = (pt.partitions ?? []).map((p, i) => ({
    number: partitionNumber(p.node, device) ?? i + 1,
    start: (p.start ?? 0) * sector,
    size: (p.size ?? 0) * sector,
    type: label === 'gpt' ? (p.type ?? '').toUpperCase() : (p.type ?? '').toLowerCase().padStart(2, '0'),
  }));
  return { label, partitions };
}

/**
 * sfdisk names partition N of DEVICE `DEVICEN`, or `DEVICEpN` when DEVICE ends in a digit.
 * The number comes from the node, not the position: GPT entries can have gaps.
 */
function partitionNumber(node: string | undefined, device: string): number | undefined {
  if (!node) return undefined;
  const rest = node.startsWith(device) ? node.slice(device.length) : node;
  const m = /(\d+)$/.exec(rest);
  return m ? Number(m[1]) : undefined;
}

/**
 * The partition that holds the root filesystem: the GPT Linux root (x86-64) partition, else
 * the first Linux filesystem partition, else the largest one. A disk without a table is a
 * filesystem on the whole disk (number 0).
 */
export function rootPartition(table: PartitionTable, diskSize: number): { number: number; start: number; size: number } {
  const pick = (p: Partition) => ({ number: p.number, start: p.start, size: p.size });
  if (table.label === 'none') return { number: 0, start: 0, size: diskSize };
  const root = table.partitions.find((p) => p.type === GPT_LINUX_ROOT_X86_64);
  if (root) return pick(root);
  const linux = table.partitions.find((p) => p.type === GPT_LINUX_FILESYSTEM || (table.label === 'dos' && p.type === MBR_LINUX));
  if (linux) return pick(linux);
  // An MBR extended partition is a container, never a filesystem.
  const candidates = table.partitions.filter((p) => !(table.label === 'dos' && MBR_EXTENDED.has(p.type)));
  if (candidates.length === 0) {
    throw new VmlbError('NO_ROOT_PARTITION', `the disk has a ${table.label} partition table with no partition that could hold a root filesystem`);
  }
  return pick(candidates.reduce((a, b) => (b.size > a.size ? b : a)));
}
