import type { Writable } from 'node:stream';
import type { BuildEvent } from '@vmlb/layer-engine';

/**
 * How `vmlb build` shows a build: `tty` (a live region like BuildKit's, permanent lines above
 * it), `plain` (append-only lines for CI logs, `#N` prefixes like `--progress=plain`) or
 * `json` (the BuildEvents themselves, one per line).
 */
export type DisplayMode = 'tty' | 'plain' | 'json';

export interface Display {
  onEvent(e: BuildEvent): void;
  /** Stops the timer and leaves the terminal clean; safe to call twice. */
  close(): void;
}

export interface DisplayOptions {
  /** `--explain`: print the plan with each layer's key and why each miss is rebuilt. @default false */
  verbose?: boolean;
  /** Colors in tty mode (plain and json never have any). @default true unless NO_COLOR is set */
  color?: boolean;
}

/** Where a display writes: stdout, or a test's stream. */
export type Out = NodeJS.WriteStream | Writable;

/** A new kind of event fails to compile here; at run time (a newer engine) it is skipped. */
export function unhandled(_e: never): void {}
