/** The shared vocabulary of the engine (see ../../../../shared/DESIGN.md). */

export type LayerKind = 'base-image' | 'create-disk' | 'build-layer' | 'modify-disk';
export const LAYER_KINDS: readonly LayerKind[] = ['base-image', 'create-disk', 'build-layer', 'modify-disk'];

/** Hints are comment lines in a layer's entry script, e.g. `# disk-size 4G`. */
export interface LayerHints {
  /** `# nocache`: never cache this layer; it and its descendants are rebuilt every time. */
  nocache: boolean;
  /** `# noshare`: cache locally, never upload to the shared store. */
  noshare: boolean;
  /** `# chroot-bind-mount SRC TARGET` (build-layer): SRC is a host path, relative ones are resolved against the layer folder. */
  bindMounts: { source: string; target: string }[];
  /** `# chroot-mount PARTITION TARGET` (build-layer): partition number N of the disk mounted at TARGET inside the chroot. */
  partitionMounts: { partition: number; target: string }[];
  /**
   * `# cache-mount TARGET` (build-layer): a folder kept across builds (per store locally, per
   * team on a fleet worker) mounted at TARGET, outside the key, like BuildKit's
   * `--mount=type=cache`. Unset when there is none.
   */
  cacheMounts?: { target: string }[];
  /** `# network none`: the script gets no network at all (a loopback only). Unset: outbound network. */
  network?: 'none';
  /** `# disk-size SIZE` (create-disk, modify-disk), in bytes. */
  diskSize?: number;
  /** `# timeout DURATION`, in milliseconds. */
  timeoutMs?: number;
  /**
   * `# args source target device` (modify-disk): the original vm-layer-builder's contract. The
   * script is called with the parent's qcow2, the path of the overlay it is to create and a
   * free /dev/nbdN, and makes, connects and fills the overlay itself (see legacyModifyDisk in
   * layer-builder.ts). Needs the nbd backend. Unset: this tool's contract ($VMLB_DEVICE).
   */
  legacyArgs?: boolean;
}

/** What a `base-image` file says: where the image is and its sha256. */
export interface BaseImageSource {
  /** An absolute host path (relative paths are resolved against the layer folder) or an http(s) URL. */
  location: string;
  sha256: string;
}

/** One file of a layer folder as the cache key sees it. */
export interface LayerFile {
  /** Path relative to the layer folder, '/'-separated. */
  path: string;
  /** 'file' with its content's sha256, or 'symlink' with its target. */
  type: 'file' | 'symlink';
  executable: boolean;
  /** sha256 of the content (files) or the link target text (symlinks). */
  digest: string;
}

export interface LayerSpec {
  /** The folder name, e.g. `02_packages`. */
  name: string;
  /** The number parsed from the name, e.g. 2. */
  number: number;
  /** Absolute path of the layer folder. */
  dir: string;
  kind: LayerKind;
  /** Absolute path of the entry script (or the base-image file). */
  entry: string;
  hints: LayerHints;
  /** For `base-image` layers only. */
  baseImage?: BaseImageSource;
  /** Every file of the folder, sorted by path. */
  files: LayerFile[];
}

export interface ImageProject {
  /** Absolute path of the project folder. */
  dir: string;
  layers: LayerSpec[];
}

/** Everything that goes into a layer's key; kept in manifests so `explain` can say what changed. */
export interface LayerInputs {
  recipe: number;
  kind: LayerKind;
  parent: string | null;
  files: LayerFile[];
  /** For nocache layers (and their descendants): a per-build nonce, so the key is never reused. */
  nonce?: string;
}

/** One partition of a disk as read from its partition table. Offsets and sizes in bytes. */
export interface Partition {
  number: number;
  start: number;
  size: number;
  /** GPT type GUID (upper case) or MBR type as two hex digits. */
  type: string;
}

export interface PartitionTable {
  label: 'gpt' | 'dos' | 'none';
  partitions: Partition[];
}
