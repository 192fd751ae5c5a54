import type { PlannedLayer } from '@vmlb/layer-engine';

/** Where each layer sits in the plan: `[3/5]`, and column widths so names and kinds line up. */
export class PlanIndex {
  private readonly layers = new Map<string, { pos: number; kind: string }>();
  private total = 0;
  namePad = 0;
  kindPad = 0;

  set(layers: PlannedLayer[], total: number): void {
    this.layers.clear();
    layers.forEach((l, i) => this.layers.set(l.name, { pos: i + 1, kind: l.kind }));
    this.total = layers.length || total;
    this.namePad = Math.max(0, ...layers.map((l) => l.name.length));
    this.kindPad = Math.max(0, ...layers.map((l) => l.kind.length));
  }

  /** Looked up by name, so it holds whether the engine's `index` counts from 0 or 1. */
  pos(index: number, name: string): number {
    return this.layers.get(name)?.pos ?? index + 1;
  }

  tag(index: number, name: string): string {
    return `[${this.pos(index, name)}/${this.total || '?'}]`;
  }

  kind(name: string): string {
    return this.layers.get(name)?.kind ?? '';
  }
}
