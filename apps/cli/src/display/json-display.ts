import type { BuildEvent } from '@vmlb/layer-engine';
import type { Display, Out } from './display.js';

/** `--json`: the BuildEvents themselves, one per line, for machines. */
export class JsonDisplay implements Display {
  constructor(private readonly out: Out) {}

  onEvent(e: BuildEvent): void {
    this.out.write(`${JSON.stringify(e)}\n`);
  }

  close(): void {}
}
