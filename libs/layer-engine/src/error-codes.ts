/**
 * Every code a VmlbError can carry, and what it means for whoever decides what to do next: the
 * fleet worker (fail the job now, or retry it, perhaps elsewhere) and the CLI (which exit code).
 * The codes are data here, in one table, so that a new code must be classified where it is
 * added and a misspelt one does not compile.
 *
 * - `input`: the project, the image or the command line is wrong; retrying cannot fix it.
 * - `host`: this host cannot do it (a missing tool or device, a full disk, its settings, a
 *   daemon that died); another host might.
 * - `transient`: a service or a race; trying again may help.
 */
export type ErrorClass = 'input' | 'host' | 'transient';

const ERROR_CLASSES = {
  // The image project and its layers.
  PROJECT_INVALID: 'input',
  PROJECT_NOT_FOUND: 'input',
  NO_SUCH_LAYER: 'input',
  INVALID_LAYER_NAME: 'input',
  LAYER_EXISTS: 'input',
  LAYER_NOT_FIRST: 'input',
  BAD_SIZE: 'input',
  BAD_DURATION: 'input',
  /** Files `vmlb new` could not write in the project folder (permissions, space). */
  SCAFFOLD_FAILED: 'host',

  // Building a layer.
  LAYER_FAILED: 'input',
  LAYER_SETUP: 'input',
  BAD_MOUNT: 'input',
  BAD_ENV: 'input',
  DISK_TOO_SMALL: 'input',
  DISK_SHRINK: 'input',
  /** A modify-disk of the original's contract that never connected its target. */
  LEGACY_NO_TARGET: 'input',
  NO_SUCH_PARTITION: 'input',
  NO_ROOT_PARTITION: 'input',
  UNSUPPORTED_PARTITION_TABLE: 'input',
  /** A partition that reaches past the end of its disk: the image's table is wrong. */
  BAD_RANGE: 'input',
  BASE_IMAGE_MISSING: 'input',
  BASE_IMAGE_BACKING: 'input',
  BASE_IMAGE_FORMAT: 'input',
  BASE_IMAGE_SHA256: 'input',
  /** The download failed; an HTTP 4xx is also marked not retryable. */
  BASE_IMAGE_FETCH: 'transient',
  /** The legacy modify-disk contract on a host that attaches disks with FUSE. */
  NEEDS_NBD: 'host',
  LOG_WRITE: 'host',
  NO_SPACE: 'host',
  DISK_WRITE_FAILED: 'host',
  /** A bug in this engine: a host with another version may not have it. */
  INTERNAL: 'host',

  // Commands, disks and their daemons.
  EXEC_FAILED: 'host',
  HOST_UNSUITABLE: 'host',
  NEEDS_ROOT: 'host',
  SANDBOX_UNAVAILABLE: 'host',
  /** The host's sandbox deny list (its settings) names something that is not an address. */
  SANDBOX_DENY: 'host',
  DISK_ATTACH_FAILED: 'host',
  DISK_DAEMON_DIED: 'host',
  DISK_RELEASED: 'host',
  DISK_RELEASE_FAILED: 'host',
  LOOP_BUSY: 'host',
  EXPORT_BUSY: 'host',
  UNMOUNT_BUSY: 'host',
  QMP_ERROR: 'host',

  // Settings of this host (environment variables, its configuration files).
  BAD_SETTING: 'host',
  S3_CONFIG: 'host',
  FLEET_CONFIG: 'host',
  TEAMS_FILE: 'host',

  // Stores.
  /** Either way: `retryable` on the error says whether the shared store may answer next time. */
  STORE_ERROR: 'transient',
  SHARED_CORRUPT: 'transient',

  // Reading, stepping into, comparing, rolling up and booting images.
  IMAGE_NOT_FOUND: 'input',
  IMAGE_UNREADABLE: 'input',
  COMMAND_NOT_STARTED: 'input',
  SHELL_SETUP: 'input',
  DIFF_MOUNT: 'host',
  ROLLUP_NOTHING: 'input',
  ROLLUP_NOCACHE: 'input',
  ROLLUP_EXISTS: 'input',
  NO_KERNEL: 'input',
  SEED_FILE: 'input',
  /** The image did not show the expected line within the timeout the user gave. */
  BOOT_TIMEOUT: 'input',
  VM_EXITED: 'input',
  KVM_UNAVAILABLE: 'host',
  VM_START: 'host',
  VM_FAILED: 'host',

  // The fleet: its jobs (the worker) and the CLI's requests to the scheduler.
  /** The worker computes another key than the scheduler did (see layer-worker.ts). */
  KEY_MISMATCH: 'input',
  /** A layer the job needs is nowhere (e.g. a # noshare layer a flatten cannot rebuild). */
  LAYER_UNAVAILABLE: 'input',
  CLAIM_LOST: 'transient',
  HISTORY_UNAVAILABLE: 'transient',
  FLEET_USAGE: 'input',
  FLEET_AUTH: 'input',
  FLEET_REFUSED: 'input',
  NO_SUCH_BUILD: 'input',
  NO_LOG: 'input',
  /** A build on the fleet failed: its own error says why. */
  BUILD_FAILED: 'input',
  FLEET_UNREACHABLE: 'transient',
  FLEET_UNAVAILABLE: 'transient',
  /** The scheduler answered something unexpected; `retryable` when it was a 5xx. */
  FLEET_ERROR: 'transient',
  MIGRATE_USAGE: 'input',

  /** The user (Ctrl-C, SIGTERM) or a caller's AbortSignal stopped the work: it can be done again. */
  ABORTED: 'transient',
} as const satisfies Record<string, ErrorClass>;

export type ErrorCode = keyof typeof ERROR_CLASSES;

/** How a caller should treat an error with this code. */
export function errorClass(code: ErrorCode): ErrorClass {
  return ERROR_CLASSES[code];
}

/**
 * The codes that mean the command was asked for wrongly or cannot run as asked (arguments,
 * settings, the project's shape, a host without root, nbd or the sandbox's tools): found before
 * any work, so they are shown as usage errors (the CLI exits 2 on them).
 */
export const USAGE_CODES: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  'PROJECT_INVALID',
  'PROJECT_NOT_FOUND',
  'NO_SUCH_LAYER',
  'INVALID_LAYER_NAME',
  'LAYER_EXISTS',
  'LAYER_NOT_FIRST',
  'S3_CONFIG',
  'BAD_SETTING',
  'SANDBOX_UNAVAILABLE',
  'NEEDS_ROOT',
  'NEEDS_NBD',
  'FLEET_USAGE',
  'FLEET_AUTH',
  'FLEET_REFUSED',
  'NO_SUCH_BUILD',
  'MIGRATE_USAGE',
]);

/** The codes that mean the fleet's scheduler cannot be reached or cannot serve now (the CLI exits 3). */
export const OUTAGE_CODES: ReadonlySet<ErrorCode> = new Set<ErrorCode>(['FLEET_UNREACHABLE', 'FLEET_UNAVAILABLE']);
