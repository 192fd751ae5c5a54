import type { BuildEvent, PlannedLayer } from '@vmlb/layer-engine';
import type { BuildRecord, FleetEvent } from '@vmlb/fleet';

/**
 * Turns a build's record and its workers' events into the engine's BuildEvents, so that
 * `vmlb submit` draws a fleet build with the very display of a local `vmlb build` (and
 * `--json` prints the same events). One instance per follower of one build: it remembers
 * which layers it has shown starting and ending, so a worker that reports both a job status
 * and the engine's own event for the same moment is shown once.
 */
export class DisplayEvents {
  private readonly started = new Set<number>();
  private readonly ended = new Set<number>();
  private outputShown = false;

  constructor(
    private readonly record: BuildRecord,
    /** The image's location for the `output` event (e.g. its s3:// URL). */
    private readonly imageLocation: (path: string) => string,
  ) {}

  /** What every follower sees first: the build, its plan, and its hits. */
  prelude(): BuildEvent[] {
    const r = this.record;
    const at = Date.parse(r.createdAt) || Date.now();
    const layers: PlannedLayer[] = r.layers.map((l) => ({
      index: l.index,
      name: l.name,
      kind: l.kind,
      key: l.key,
      cacheable: true,
      ...(l.status === 'hit' ? { status: 'hit' as const, source: 'shared' as const } : { status: 'miss' as const }),
    }));
    const out: BuildEvent[] = [
      { type: 'notice', at, message: `build ${r.id} (team ${r.team}), queued at ${r.createdAt}` },
      { type: 'plan', at, project: `${r.project.slice(0, 12)} (build ${r.id})`, layers, total: layers.length },
    ];
    for (const l of r.layers) {
      if (l.status === 'hit') out.push({ type: 'layer-cached', at, index: l.index, name: l.name, key: l.key, source: 'shared', bytes: l.bytes ?? 0, ...(l.pool ? { pool: l.pool } : {}) });
    }
    return out;
  }

  fromFleet(ev: FleetEvent): BuildEvent[] {
    const out: BuildEvent[] = [];
    if (ev.type === 'engine') {
      const l = this.record.layers[ev.index];
      const e = ev.event;
      // A notice is about the build (the flatten job's have no layer).
      if (e.type === 'notice') return [e];
      if (!l) return out;
      switch (e.type) {
        case 'layer-start':
          if (!this.started.has(l.index)) out.push({ ...e, index: l.index, name: l.name });
          this.started.add(l.index);
          this.ended.delete(l.index);
          return out;
        case 'layer-done':
        case 'layer-failed':
          this.ensureStarted(l.index, e.at, out);
          // A failed layer's log path is the worker's own (its local store): nothing a user of the
          // fleet can open. The log is the layer's in the API (/v1/builds/:id/layers/:index/log).
          if (!this.ended.has(l.index)) out.push(e.type === 'layer-failed' ? { ...e, index: l.index, name: l.name, logPath: '' } : { ...e, index: l.index, name: l.name });
          this.ended.add(l.index);
          return out;
        case 'layer-log':
        case 'layer-step':
          this.ensureStarted(l.index, e.at, out);
          out.push({ ...e, index: l.index, name: l.name });
          return out;
        default:
          // A worker's plan, output, done or failed is about its one-layer run, not this build.
          return out;
      }
    }
    if (ev.type === 'job') {
      const l = this.record.layers[ev.index];
      if (!l) return out;
      switch (ev.status) {
        case 'building':
          if (this.ended.has(l.index)) {
            out.push({ type: 'notice', at: ev.at, message: `${l.name}: trying again` });
            this.ended.delete(l.index);
            this.started.delete(l.index);
          }
          this.ensureStarted(l.index, ev.at, out);
          out.push({ type: 'layer-step', at: ev.at, index: l.index, name: l.name, step: `on worker ${ev.worker}` });
          return out;
        case 'waiting':
          out.push({ type: 'notice', at: ev.at, message: `${l.name}: another build is making the same layer; waiting for it${ev.message ? ` (${ev.message})` : ''}` });
          return out;
        case 'done':
          if (!this.started.has(l.index) && ev.seconds === undefined) {
            // Found in the shared store when the job ran (another build made it meanwhile).
            out.push({ type: 'layer-cached', at: ev.at, index: l.index, name: l.name, key: l.key, source: 'shared', bytes: ev.bytes ?? 0 });
            if (ev.message) out.push({ type: 'notice', at: ev.at, message: `${l.name}: ${ev.message}` });
            this.started.add(l.index);
            this.ended.add(l.index);
            return out;
          }
          this.ensureStarted(l.index, ev.at, out);
          if (!this.ended.has(l.index)) out.push({ type: 'layer-done', at: ev.at, index: l.index, name: l.name, key: l.key, seconds: ev.seconds ?? 0, bytes: ev.bytes ?? 0 });
          this.ended.add(l.index);
          return out;
        case 'failed':
          this.ensureStarted(l.index, ev.at, out);
          if (!this.ended.has(l.index)) {
            out.push({
              type: 'layer-failed',
              at: ev.at,
              index: l.index,
              name: l.name,
              key: l.key,
              seconds: ev.seconds ?? 0,
              message: ev.message ?? `layer ${l.name} failed on worker ${ev.worker}`,
              ...(ev.exitCode !== undefined ? { exitCode: ev.exitCode } : {}),
              timedOut: false,
              logPath: '',
              logTail: ev.logTail ?? '',
            });
          }
          this.ended.add(l.index);
          return out;
        case 'queued':
          if (ev.message) out.push({ type: 'notice', at: ev.at, message: `${l.name}: ${ev.message}` });
          return out;
        default:
          return out;
      }
    }
    if (ev.type === 'ended') return out;
    // flatten
    if (ev.status === 'building') out.push({ type: 'notice', at: ev.at, message: `flattening the image on worker ${ev.worker}` });
    else if (ev.status === 'done' && ev.image) out.push(this.output(ev.image, ev.at));
    else if (ev.status === 'failed') out.push({ type: 'notice', at: ev.at, message: `flattening failed on worker ${ev.worker}${ev.message ? `: ${ev.message}` : ''}` });
    return out;
  }

  /** A finished build whose event stream is gone (expired, or Redis lost it): what its record says. */
  fromRecord(r: BuildRecord): BuildEvent[] {
    const out: BuildEvent[] = [];
    const at = Date.parse(r.finishedAt ?? r.createdAt) || Date.now();
    for (const l of r.layers) {
      if (l.status === 'done') {
        this.ensureStarted(l.index, at, out);
        out.push({ type: 'layer-done', at, index: l.index, name: l.name, key: l.key, seconds: l.seconds ?? 0, bytes: l.bytes ?? 0 });
        this.ended.add(l.index);
      } else if (l.status === 'failed') {
        this.ensureStarted(l.index, at, out);
        out.push({
          type: 'layer-failed', at, index: l.index, name: l.name, key: l.key, seconds: l.seconds ?? 0,
          message: `layer ${l.name} failed${l.worker ? ` on worker ${l.worker}` : ''}`,
          ...(l.exitCode !== undefined ? { exitCode: l.exitCode } : {}),
          timedOut: false, logPath: '', logTail: l.logTail ?? '',
        });
        this.ended.add(l.index);
      }
    }
    return out;
  }

  /** The last events: the image and the summary, or why the build did not finish. */
  finale(r: BuildRecord): BuildEvent[] {
    const out: BuildEvent[] = [];
    const at = Date.parse(r.finishedAt ?? '') || Date.now();
    const seconds = Math.max(0, (at - Date.parse(r.createdAt)) / 1000);
    if (r.state === 'done') {
      if (r.image && !this.outputShown) out.push(this.output(r.image, at));
      out.push({
        type: 'done',
        at,
        built: r.layers.filter((l) => l.status === 'done').length,
        cached: r.layers.filter((l) => l.status === 'hit').length,
        seconds,
        image: r.image ? this.imageLocation(r.image.path) : null,
      });
      out.push({ type: 'notice', at, message: `download the image: vmlb pull ${r.id} -o image.qcow2` });
    } else if (r.state === 'failed') {
      out.push({ type: 'failed', at, message: r.error ?? 'the build failed', code: 'BUILD_FAILED', seconds });
    } else if (r.state === 'cancelled') {
      out.push({ type: 'failed', at, message: r.error ?? 'the build was cancelled', code: 'CANCELLED', seconds });
    }
    return out;
  }

  private output(image: NonNullable<BuildRecord['image']>, at: number): BuildEvent {
    this.outputShown = true;
    const seconds = Math.max(0, (at - Date.parse(this.record.createdAt)) / 1000);
    return { type: 'output', at, path: this.imageLocation(image.path), flattened: true, seconds, bytes: image.bytes };
  }

  private ensureStarted(index: number, at: number, out: BuildEvent[]): void {
    if (this.started.has(index)) return;
    const l = this.record.layers[index];
    if (!l) return;
    out.push({ type: 'layer-start', at, index, name: l.name, kind: l.kind, key: l.key });
    this.started.add(index);
  }
}
