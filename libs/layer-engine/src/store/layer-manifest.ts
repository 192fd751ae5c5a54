import type { LayerInputs, LayerKind, Partition, PartitionTable } from '../types.js';

/** The version of the manifest format below (`version` of every manifest written). */
export const MANIFEST_VERSION = 1;

export interface LayerManifest {
  version: number;
  key: string;
  parent: string | null;
  /** The layer folder's name when it was built (informational: keys are what matter). */
  name: string;
  kind: LayerKind;
  /** false for `# nocache` layers and their descendants: never served as a hit. */
  cacheable: boolean;
  /** false for `# noshare` layers: never uploaded to a shared store. */
  share: boolean;
  blob: { file: string; sha256: string; size: number };
  virtualSize: number;
  /** The disk's partition table after this layer, and the root filesystem's partition. */
  partitions: PartitionTable;
  root: Pick<Partition, 'number' | 'start' | 'size'>;
  inputs: LayerInputs;
  builtBy: { host: string; user: string; tool: string; backend: string };
  builtAt: string;
  seconds: number;
  log: string;
  /**
   * The blob sha256 of the parent this layer was built on. Set by the shared store when it
   * uploads a layer: a qcow2 overlay is only valid on the exact parent bytes it was written
   * over, and two hosts building the same parent key get different bytes (ext4 timestamps,
   * UUIDs), so a shared layer is used only on top of that parent.
   */
  parentSha256?: string;
}

/** A layer key (and a blob's sha256): 64 lowercase hex digits. */
export const KEY_PATTERN = /^[0-9a-f]{64}$/;
