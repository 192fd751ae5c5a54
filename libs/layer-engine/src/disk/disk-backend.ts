import type { PartitionTable } from '../types.js';

export type BackendName = 'fuse' | 'nbd';

export interface AttachOptions {
  /** Who attaches, for the state record and error messages (e.g. the layer name). */
  purpose: string;
  signal?: AbortSignal;
}

/**
 * A qcow2 image attached as a block device. Release undoes every acquisition in reverse
 * order and is safe to call twice; `await using` calls it.
 */
export interface AttachedDisk extends AsyncDisposable {
  readonly backend: BackendName;
  /** The qcow2 file that is attached. */
  readonly image: string;
  /** Virtual size of the disk in bytes. */
  readonly size: number;
  /**
   * Extra environment for a modify-disk script so that the `vmlb-partition N` helper on its
   * PATH can print a block device for partition N on this backend.
   */
  readonly helperEnv: Record<string, string>;
  /** A block device for the whole disk (fuse: a loop device over the exported raw file; nbd: /dev/nbdN). */
  wholeDevice(): Promise<string>;
  /** The partition table as it stands now. */
  partitionTable(): Promise<PartitionTable>;
  /**
   * A block device for a byte range of the disk (a partition): fuse gives a loop device with
   * offset and size limit; nbd gives /dev/nbdNpM when the range matches partition M.
   */
  rangeDevice(part: { number: number; start: number; size: number }): Promise<string>;
  /**
   * How mount(8) mounts a byte range of the disk (a partition) without the engine making a
   * device first: fuse gives the export file with `loop,offset=…,sizelimit=…`, so the loop
   * device is mount's own, auto-cleared with the mount (which dies with the run's mount
   * namespace, even on SIGKILL); nbd gives the partition's device node.
   */
  mountSource(part: { number: number; start: number; size: number }): Promise<{ source: string; options: string }>;
  release(): Promise<void>;
  /**
   * After release: how many writes to the image failed while it was attached (its
   * filesystem full, an I/O error), when the backend can tell (fuse: the daemon counts
   * them; nbd: the kernel only logs them, and the layer's syncfs check is what catches them).
   */
  lostWrites?(): number;
}

export interface DiskBackend {
  readonly name: BackendName;
  /** null when usable here, else the reason it is not (shown when a test or `--backend` needs it). */
  unavailableReason(): Promise<string | null>;
  attach(image: string, opts: AttachOptions): Promise<AttachedDisk>;
}
