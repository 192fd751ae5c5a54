import { formatBytes, formatSeconds } from './format';
import type { BuildRecord, LayerRecord, LayerStatus } from './types';
import { Badge } from './ui-kit';

/** One row of the time line: a layer, or the final flatten. */
interface Row {
  key: string;
  index: number | null;
  name: string;
  kind: string;
  status: LayerStatus;
  worker?: string;
  /** A hit found in a pool the build's pool trusts for reading: that pool. */
  sharedFrom?: string;
  seconds?: number;
  bytes?: number;
  /** Bytes its worker pulled from the shared store for its parent chain. */
  pulled?: number;
  /** ms since the epoch */
  start?: number;
  end?: number;
  queuedUntil?: number;
  detail: string;
}

const ms = (iso: string | undefined) => (iso ? Date.parse(iso) : NaN);

function layerRow(l: LayerRecord, created: number, buildEnd: number | undefined, now: number): Row {
  const started = ms(l.startedAt);
  const hasStart = Number.isFinite(started);
  let end: number | undefined;
  if (hasStart) {
    const fin = ms(l.finishedAt);
    if (Number.isFinite(fin)) end = fin;
    else if (l.seconds !== undefined && l.status !== 'building' && l.status !== 'waiting') end = started + l.seconds * 1000;
    else if (l.status === 'building' || l.status === 'waiting') end = buildEnd ?? now;
    else end = buildEnd ?? started;
  }
  // Queued from the build's creation until the layer started (or until now, while it waits).
  let queuedUntil: number | undefined;
  if (l.status !== 'hit') {
    if (hasStart) queuedUntil = started;
    else if (l.status === 'queued' || l.status === 'waiting') queuedUntil = buildEnd ?? now;
    else if (l.status === 'cancelled') queuedUntil = buildEnd;
  }
  const parts = [`${l.name} (${l.kind}): ${l.status === 'hit' ? (l.pool ? `cached (shared: ${l.pool})` : 'cached') : l.status}`];
  if (l.worker) parts.push(`on ${l.worker}`);
  if (l.seconds !== undefined) parts.push(`${formatSeconds(l.seconds)}`);
  if (l.bytes !== undefined) parts.push(formatBytes(l.bytes));
  if (l.pulledBytes !== undefined) parts.push(`pulled ${formatBytes(l.pulledBytes)} for its parent chain`);
  if (hasStart) parts.push(`queued ${formatSeconds((started - created) / 1000)}`);
  if (l.exitCode !== undefined) parts.push(`exit ${l.exitCode}`);
  const row: Row = { key: `l${l.index}`, index: l.index, name: l.name, kind: l.kind, status: l.status, detail: parts.join(' · ') };
  if (l.worker !== undefined) row.worker = l.worker;
  if (l.status === 'hit' && l.pool) row.sharedFrom = l.pool;
  if (l.seconds !== undefined) row.seconds = l.seconds;
  // Still running, or stopped by a cancel: how long it has run (until the build ended).
  else if (hasStart && (l.status === 'building' || l.status === 'cancelled') && end !== undefined) row.seconds = (end - started) / 1000;
  if (l.bytes !== undefined) row.bytes = l.bytes;
  if (l.pulledBytes !== undefined) row.pulled = l.pulledBytes;
  if (hasStart) row.start = started;
  if (end !== undefined) row.end = end;
  if (queuedUntil !== undefined) row.queuedUntil = queuedUntil;
  return row;
}

function flattenRow(r: BuildRecord, buildEnd: number | undefined, now: number): Row | null {
  const f = r.flatten;
  if (!f) return null;
  const start = ms(f.startedAt);
  const fin = ms(f.finishedAt);
  const status: LayerStatus = Number.isFinite(fin) ? (r.state === 'failed' && !r.image ? 'failed' : 'done') : r.state === 'failed' || r.state === 'cancelled' ? 'failed' : 'building';
  const end = Number.isFinite(fin) ? fin : f.seconds !== undefined ? start + f.seconds * 1000 : (buildEnd ?? now);
  const row: Row = {
    key: 'flatten',
    index: null,
    name: 'flatten',
    kind: 'image',
    status,
    worker: f.worker,
    detail: `flatten the chain into one image on ${f.worker}`,
  };
  if (Number.isFinite(start)) {
    row.start = start;
    row.end = end;
    row.seconds = f.seconds ?? (end - start) / 1000;
  }
  if (r.image) row.bytes = r.image.bytes;
  return row;
}

/** Tick spacing (seconds) that gives about five labels over `span` seconds. */
function tickStep(span: number): number {
  const steps = [0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 21600, 43200, 86400];
  return steps.find((s) => span / s <= 6) ?? 86400;
}

function tickLabel(s: number): string {
  if (s === 0) return '0';
  if (s < 60) return `${s}s`;
  if (s < 3600) return s % 60 === 0 ? `${s / 60}m` : `${Math.floor(s / 60)}m${s % 60}s`;
  return s % 3600 === 0 ? `${s / 3600}h` : `${Math.floor(s / 3600)}h${Math.round((s % 3600) / 60)}m`;
}

const STATUS_LABEL: Record<LayerStatus, string> = {
  hit: 'cached',
  queued: 'queued',
  waiting: 'waiting',
  building: 'building',
  done: 'done',
  failed: 'failed',
  cancelled: 'cancelled',
};

/**
 * The build as a time line: one row per layer (and the flatten), from the build's creation to
 * its end (or now). A layer is hatched grey while queued, then a bar while it builds (striped,
 * moving), done (green) or failed (red); a cached layer is a marker at the start, since it
 * took no time.
 */
export function Timeline({ record, now, selected, onSelect }: { record: BuildRecord; now: number; selected: number | null; onSelect(index: number): void }) {
  const created = ms(record.createdAt);
  const finished = ms(record.finishedAt);
  const buildEnd = Number.isFinite(finished) ? finished : undefined;
  const rows = record.layers.map((l) => layerRow(l, created, buildEnd, now));
  const flat = flattenRow(record, buildEnd, now);
  if (flat) rows.push(flat);
  const last = Math.max(buildEnd ?? now, ...rows.map((r) => r.end ?? 0));
  const span = Math.max(last - created, 1000);
  const spanS = span / 1000;
  const step = tickStep(spanS);
  const ticks: number[] = [];
  for (let t = 0; t <= spanS + 1e-9; t += step) ticks.push(Math.round(t * 10) / 10);
  const pct = (t: number) => `${Math.min(100, Math.max(0, ((t - created) / span) * 100))}%`;
  const width = (a: number, b: number) => `${Math.max(0, Math.min(100, ((b - a) / span) * 100))}%`;

  return (
    <div class="timeline" data-testid="timeline" role="table" aria-label="Layers on a time line">
      <div class="tl-row tl-head" role="row">
        <div class="tl-name" role="columnheader">
          Layer
        </div>
        <div class="tl-track tl-axis" role="columnheader" aria-label="time since the build was created">
          {ticks.map((t) => (
            <span class="tl-tick" style={{ left: `${(t / spanS) * 100}%` }} key={t}>
              {tickLabel(t)}
            </span>
          ))}
        </div>
        <div role="columnheader">Status</div>
        <div role="columnheader">Worker</div>
        <div class="num" role="columnheader">
          Time
        </div>
        <div class="num" role="columnheader">
          Size
        </div>
      </div>
      {rows.map((r) => {
        const isSel = r.index !== null && r.index === selected;
        return (
          <div
            key={r.key}
            role="row"
            class={`tl-row ${isSel ? 'selected' : ''} ${r.index !== null ? 'clickable' : ''}`}
            data-layer={r.index ?? 'flatten'}
            data-status={r.status}
            title={r.detail}
            onClick={() => r.index !== null && onSelect(r.index)}
            aria-selected={isSel}
          >
            <div class="tl-name" role="cell">
              <span class="tl-index">{r.index !== null ? r.index + 1 : '⇣'}</span>
              <span class="tl-label">
                <span class="tl-layer-name">{r.name}</span>
                <span class="tl-kind">{r.kind}</span>
              </span>
            </div>
            <div class="tl-track" role="cell">
              {ticks.map((t) => (
                <span class="tl-grid" style={{ left: `${(t / spanS) * 100}%` }} key={t} />
              ))}
              {r.status === 'hit' && <span class="tl-hit">cached</span>}
              {r.queuedUntil !== undefined && r.queuedUntil > created && (
                <span class={`tl-seg seg-queued ${r.status === 'waiting' && r.start === undefined ? 'seg-waiting' : ''}`} style={{ left: '0%', width: width(created, r.queuedUntil) }} />
              )}
              {r.start !== undefined && r.end !== undefined && (
                <span class={`tl-seg seg-${r.status}`} style={{ left: pct(r.start), width: width(r.start, r.end) }}>
                  {r.seconds !== undefined && (r.end - r.start) / span > 0.12 && <span class="tl-seg-label">{formatSeconds(r.seconds)}</span>}
                </span>
              )}
            </div>
            <div role="cell">
              <Badge status={r.status}>{STATUS_LABEL[r.status]}</Badge>
            </div>
            <div role="cell" class="tl-worker">
              {r.sharedFrom ? (
                <span class="tl-shared" data-pool={r.sharedFrom} title={`found in pool ${r.sharedFrom}, which this build's pool trusts for reading`}>
                  shared: {r.sharedFrom}
                </span>
              ) : (
                (r.worker ?? (r.status === 'hit' ? 'shared store' : '—'))
              )}
            </div>
            <div role="cell" class="num tl-seconds">
              {r.status === 'hit' ? '0s' : formatSeconds(r.seconds)}
            </div>
            <div role="cell" class="num tl-bytes">
              {formatBytes(r.bytes)}
              {r.pulled !== undefined && (
                <span class="fact-sub" data-testid="layer-pulled" title="pulled from the shared store for its parent chain">
                  pulled {formatBytes(r.pulled)}
                </span>
              )}
            </div>
          </div>
        );
      })}
    </div>
  );
}
