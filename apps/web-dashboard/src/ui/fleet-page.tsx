import { formatAgo, formatBytes, formatSeconds, formatTime, plural } from './format';
import { useNow, usePoll } from './hooks';
import { useSession } from './session';
import type { Fleet, FleetWorker } from './types';
import { Badge, Card, Empty, ErrorNote, Loading, Meter, Mono, Stat } from './ui-kit';

/** BullMQ's job states, in the order a job goes through them. */
const QUEUE_STATES = ['waiting', 'prioritized', 'waiting-children', 'delayed', 'active', 'completed', 'failed'] as const;

/** `#/fleet`: the workers, their slots and caches, and the queues, grouped by pool. */
export function FleetPage() {
  const { api } = useSession();
  const now = useNow();
  const fleet = usePoll((signal) => api.json<Fleet>('/v1/fleet', signal), [api]);
  const f = fleet.data;
  if (!f) {
    return (
      <div class="page">
        <div class="page-head">
          <h1>Fleet</h1>
        </div>
        {fleet.error ? <ErrorNote error={fleet.error} what="the fleet" /> : <Loading what="the fleet" />}
      </div>
    );
  }
  const live = f.workers.filter((w) => w.live);
  const slots = live.reduce((n, w) => n + w.slots, 0);
  const busy = live.reduce((n, w) => n + w.busy, 0);
  const cached = f.workers.reduce((n, w) => n + w.cachedBytes, 0);
  // Not live: dead (its heartbeat stopped: not answering), or stopped cleanly (listed for a while).
  const stopped = f.workers.filter((w) => !w.live && w.state === 'stopped').length;
  const dead = f.workers.length - live.length - stopped;
  const notLive = [dead ? `${dead} not answering` : '', stopped ? `${stopped} stopped` : ''].filter(Boolean).join(' · ');
  // A section per pool shown (the team's own; every pool for an admin), and any pool a listed
  // worker serves that the list lacks.
  const pools: PoolView[] = [...(f.pools ?? [])];
  for (const w of f.workers) {
    const name = w.pool ?? 'default';
    if (!pools.some((p) => p.pool === name)) pools.push({ pool: name, layers: {}, flatten: {}, queued: 0, oldestQueuedSeconds: null });
  }
  pools.sort((a, b) => a.pool.localeCompare(b.pool));

  return (
    <div class="page">
      <div class="page-head">
        <h1>Fleet</h1>
        <div class="page-sub">
          <span data-testid="fleet-summary">
            {plural(live.length, 'live worker')}
            {notLive && ` · ${notLive}`} · {plural(pools.length, 'pool')}
          </span>
        </div>
      </div>
      <ErrorNote error={fleet.error} what="the latest state" />
      <div class="stats">
        <Stat label="Workers" value={`${live.length}`} sub={notLive || (live.length ? 'all answering' : 'none registered')} tone={dead ? 'bad' : undefined} testid="stat-workers" />
        <Stat label="Busy slots" value={`${busy} / ${slots}`} sub={<Meter value={busy} max={slots} />} testid="stat-slots" />
        <Stat label="Queue depth" value={String(f.queued)} sub={f.oldestQueuedSeconds !== null ? `oldest waits ${formatSeconds(f.oldestQueuedSeconds)}` : 'nothing waiting'} tone={f.queued > slots && slots > 0 ? 'warn' : undefined} testid="stat-queued" />
        <Stat label="Cached on workers" value={formatBytes(cached)} sub="local stores, together" testid="stat-cached" />
      </div>
      {pools.map((p) => (
        <PoolSection key={p.pool} pool={p} workers={f.workers.filter((w) => (w.pool ?? 'default') === p.pool)} now={now} polledAt={fleet.updatedAt} />
      ))}
    </div>
  );
}

type PoolView = Fleet['pools'][number];

/**
 * One pool: its workers (only they take its jobs) and its two queues, as `GET /v1/fleet` gives
 * them per pool (a team sees its own pool; an admin every pool).
 */
function PoolSection({ pool: p, workers, now, polledAt }: { pool: PoolView; workers: FleetWorker[]; now: number; polledAt: number }) {
  const live = workers.filter((w) => w.live);
  const slots = live.reduce((n, w) => n + w.slots, 0);
  const busy = live.reduce((n, w) => n + w.busy, 0);
  const starved = p.queued > 0 && live.length === 0;
  const title = (
    <>
      Pool <strong class="pool-name">{p.pool}</strong>
      <span class="card-sub" data-testid="pool-summary">
        {' '}
        · {plural(live.length, 'live worker')} · {busy} / {slots} busy ·{' '}
        <span data-testid="pool-queued" class={starved ? 'bad' : ''}>
          {p.queued} queued
        </span>
        {p.oldestQueuedSeconds !== null && ` · oldest waits ${formatSeconds(p.oldestQueuedSeconds)}`}
      </span>
    </>
  );
  return (
    <div class="pool-section" data-pool={p.pool} data-testid="pool-section">
      <Card title={title} testid={`pool-${p.pool}`}>
        {starved && (
          <div class="error-note" role="alert" data-testid="pool-starved">
            <strong>Jobs wait with no worker</strong>
            <span class="error-message">
              {plural(p.queued, 'job')} of pool {p.pool} {p.queued === 1 ? 'waits' : 'wait'}, and no worker of the pool is live: only workers started with <Mono>VMLB_WORKER_POOL={p.pool}</Mono> take them.
            </span>
          </div>
        )}
        {workers.length === 0 ? (
          <Empty>
            No worker of pool {p.pool} has registered. Start one with <Mono>VMLB_WORKER_POOL={p.pool} vmlb-worker</Mono> (see apps/worker/README.md).
          </Empty>
        ) : (
          <table class="table" data-testid="workers-table">
            <thead>
              <tr>
                <th>Worker</th>
                <th>State</th>
                <th>Slots</th>
                <th class="num">Cached</th>
                <th>Backend</th>
                <th>Version</th>
                <th>Up since</th>
                <th>Last heartbeat</th>
              </tr>
            </thead>
            <tbody>
              {workers.map((w) => (
                <WorkerRow key={w.id} w={w} now={now} polledAt={polledAt} />
              ))}
            </tbody>
          </table>
        )}
        <table class="table queues-table" data-testid="queues-table">
          <thead>
            <tr>
              <th>Queue</th>
              {QUEUE_STATES.map((s) => (
                <th class="num" key={s}>
                  {s}
                </th>
              ))}
            </tr>
          </thead>
          <tbody>
            {(['layers', 'flatten'] as const).map((q) => (
              <tr key={q} data-queue={q}>
                <td>
                  <strong>{q}</strong>
                </td>
                {QUEUE_STATES.map((s) => {
                  const n = p[q]?.[s] ?? 0;
                  return (
                    <td class={`num ${n === 0 ? 'zero' : ''} ${s === 'failed' && n > 0 ? 'bad' : ''}`} key={s} data-state={s}>
                      {n}
                    </td>
                  );
                })}
              </tr>
            ))}
          </tbody>
        </table>
      </Card>
    </div>
  );
}

/** "4 s ago", from the scheduler's own count when it gives one (clocks differ). */
function heartbeatAgo(w: FleetWorker, polledAt: number, now: number): string {
  if (w.heartbeatAgeSeconds === undefined) return formatAgo(w.lastHeartbeat, now);
  const s = Math.round(w.heartbeatAgeSeconds + Math.max(0, now - polledAt) / 1000);
  return s < 90 ? `${s} s ago` : formatAgo(new Date(now - s * 1000).toISOString(), now);
}

function WorkerRow({ w, now, polledAt }: { w: FleetWorker; now: number; polledAt: number }) {
  const status = !w.live ? (w.state === 'stopped' ? 'stopped' : 'dead') : w.state === 'stopping' ? 'stopping' : w.busy > 0 ? 'busy' : 'idle';
  return (
    <tr data-worker={w.id} data-live={String(w.live)} data-status={status} class={status === 'dead' ? 'row-bad' : ''}>
      <td>
        <Mono>{w.id}</Mono>
        <div class="cell-sub">
          {w.host} · pid {w.pid}
        </div>
      </td>
      <td>
        <Badge status={status}>{status === 'dead' ? 'not answering' : status}</Badge>
      </td>
      <td data-testid="worker-slots">
        {w.live ? (
          <div class="slots">
            <span>
              {w.busy} / {w.slots} busy
            </span>
            <Meter value={w.busy} max={w.slots} />
          </div>
        ) : (
          // What it ran when it went is not what it runs now: no busy numbers for a worker that is not live.
          <span class="cell-sub">{plural(w.slots, 'slot')} · {status === 'dead' ? 'not answering' : 'stopped'}</span>
        )}
      </td>
      <td class="num">{formatBytes(w.cachedBytes)}</td>
      <td>{w.backend}</td>
      <td>
        <Mono>{w.version}</Mono>
      </td>
      <td title={formatTime(w.startedAt)}>{formatAgo(w.startedAt, now)}</td>
      <td title={formatTime(w.stoppedAt ?? w.lastHeartbeat)} class={status === 'dead' ? 'bad' : ''}>
        {w.live ? heartbeatAgo(w, polledAt, now) : status === 'stopped' && w.stoppedAt ? `stopped ${formatAgo(w.stoppedAt, now)}` : `last heartbeat ${heartbeatAgo(w, polledAt, now)}`}
      </td>
    </tr>
  );
}
