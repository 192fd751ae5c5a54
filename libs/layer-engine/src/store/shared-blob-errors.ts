import { StoreError } from '../errors.js';

/** A pulled blob whose sha256 is not the manifest's. Retryable: a second fetch may be good. */
export class SharedBlobMismatchError extends StoreError {
  readonly key: string;
  readonly expected: string;
  readonly actual: string;
  /**
   * `undecodable`: the compressed object could not be decompressed (what zstd said); then
   * `actual` is `(undecodable)`.
   */
  constructor(args: { key: string; name: string; expected: string; actual: string; expectedSize: number; actualSize: number; undecodable?: { object: string; error: string } }) {
    const sizes = args.actualSize === args.expectedSize ? '' : ` (${args.actualSize} bytes, expected ${args.expectedSize})`;
    super(
      args.undecodable
        ? `the shared copy of layer ${args.name} (${args.key}) is corrupt: its compressed blob ${args.undecodable.object} does not decompress (${args.undecodable.error}); nothing of it was kept`
        : `the shared copy of layer ${args.name} (${args.key}) is corrupt: its blob's sha256 is ${args.actual}, its manifest says ${args.expected}${sizes}; nothing of it was kept`,
      { retryable: true },
    );
    this.key = args.key;
    this.expected = args.expected;
    this.actual = args.actual;
  }
}

/** A compressed stream that does not decompress (internal: pullOne reports it as SharedBlobMismatchError). */
export class UndecodableError extends StoreError {}
