import { useEffect, useState } from 'preact/hooks';
import { useBuildStream } from './build-stream';
import { CancelBuildControl, useCancelBuild } from './cancel-build';
import { elapsed, formatAgo, formatClock, formatBytes, formatSeconds, formatTime } from './format';
import { href, useNow, usePoll, useThrottled } from './hooks';
import { LogPanel } from './log-panel';
import { BuildLinksBar } from './build-links';
import { ProjectLabel } from './project-label';
import { useSession } from './session';
import { Timeline } from './timeline';
import { isFinal, type BuildRecord, type LayerStatus } from './types';
import { Badge, Card, ErrorNote, Loading, Mono } from './ui-kit';

/** The layer the log shows when nobody picked one: the one building, else the most telling one. */
function defaultLayer(r: BuildRecord): number {
  const by = (s: string) => r.layers.filter((l) => l.status === s);
  const pick = by('building')[0] ?? by('failed')[0] ?? by('waiting')[0] ?? by('done').at(-1) ?? r.layers.find((l) => l.status !== 'hit') ?? r.layers.at(-1);
  return pick?.index ?? 0;
}

/** `#/builds/<id>`: the build's header, its layers on a time line, and the logs, live. */
export function BuildPage({ id }: { id: string }) {
  const { api } = useSession();
  const now = useNow(500);
  const [final, setFinal] = useState<BuildRecord | null>(null);
  const [picked, setPicked] = useState<number | null>(null);
  const [streaming, setStreaming] = useState(false);
  // The record is read again on each layer event (throttled); the poll is the fallback for a
  // stream that is down, and slows down while the stream runs and once the build is over.
  const current = usePoll((signal) => api.json<BuildRecord>(`/v1/builds/${encodeURIComponent(id)}`, signal), [api, id], final ? 60_000 : streaming ? 5000 : 2000);
  const refetch = useThrottled(current.refresh, 300);
  const stream = useBuildStream(api, id, refetch, (r) => {
    setFinal(r);
    refetch();
  });
  useEffect(() => setStreaming(stream.connected), [stream.connected]);
  // The server's answer is the cancelled record: shown at once, before the stream's end says so.
  const cancel = useCancelBuild(api, id, (r) => isFinal(r.state) && setFinal(r), refetch);

  // The stream's final record, unless a later poll says more (e.g. a record written after it).
  const record = current.data && (!final || isFinal(current.data.state)) ? current.data : (final ?? current.data);
  if (!record) {
    return (
      <div class="page">
        <Breadcrumb id={id} />
        {current.error || stream.error ? <ErrorNote error={current.error ?? stream.error} what={`build ${id}`} /> : <Loading what={`build ${id}`} />}
      </div>
    );
  }

  const selected = picked ?? defaultLayer(record);
  const hits = record.layers.filter((l) => l.status === 'hit').length;
  // The trusted pools this build took hits from.
  const sharedFrom = [...new Set(record.layers.flatMap((l) => (l.status === 'hit' && l.pool ? [l.pool] : [])))].sort();
  const built = record.layers.filter((l) => l.status === 'done').length;
  const bytesBuilt = record.layers.reduce((n, l) => n + (l.status === 'done' ? (l.bytes ?? 0) : 0), 0);
  const running = !isFinal(record.state);
  const duration = elapsed(record.createdAt, record.finishedAt, now);
  const legend: LayerStatus[] = ['hit', 'queued', 'building', 'done', 'failed'];
  if (record.layers.some((l) => l.status === 'cancelled')) legend.push('cancelled');

  return (
    <div class="page" data-build={record.id} data-state={record.state}>
      <Breadcrumb id={id} />
      <div class="page-head build-head">
        <h1>
          <Mono>{record.id}</Mono>
        </h1>
        <Badge status={record.state} />
        <span class={`stream-state ${stream.connected ? 'on' : ''}`} title={stream.connected ? 'following the build\'s event stream' : stream.ended ? 'the build is over' : 'not connected to the event stream; polling'}>
          {stream.connected ? 'streaming' : stream.ended || !running ? '' : 'polling'}
        </span>
        {running && <CancelBuildControl action={cancel} />}
        <BuildLinksBar record={record} />
      </div>
      <ErrorNote error={cancel.error} title="Could not cancel the build" testid="cancel-error" />
      <dl class="facts">
        <div>
          <dt>Team</dt>
          <dd>{record.team}</dd>
        </div>
        <div>
          <dt>Pool</dt>
          <dd data-testid="build-pool">
            {record.pool ?? 'default'}
            {sharedFrom.length > 0 && (
              <span class="fact-sub" data-testid="build-shared-from">
                hits shared from {sharedFrom.join(', ')}
              </span>
            )}
          </dd>
        </div>
        <div>
          <dt>Project</dt>
          <dd data-testid="build-project">
            <ProjectLabel b={record} submitter={false} />
          </dd>
        </div>
        <div>
          <dt>Submitted by</dt>
          <dd data-testid="build-submitter">{record.submitter ?? '—'}</dd>
        </div>
        <div>
          <dt>Created</dt>
          <dd title={formatTime(record.createdAt)}>{formatAgo(record.createdAt, now)}</dd>
        </div>
        <div>
          <dt>{running ? 'Running for' : 'Took'}</dt>
          <dd data-testid="build-duration">{formatSeconds(duration)}</dd>
        </div>
        <div>
          <dt>Layers</dt>
          <dd data-testid="build-layers">
            {record.layers.length} · {hits} cached · {built} built
          </dd>
        </div>
        <div>
          <dt>Built bytes</dt>
          <dd>{formatBytes(bytesBuilt)}</dd>
        </div>
        <div>
          <dt>Image</dt>
          <dd data-testid="build-image">
            {record.image ? (
              <span title={record.image.path}>
                {formatBytes(record.image.bytes)}
                <span class="fact-sub">
                  <Mono>vmlb pull {record.id}</Mono>
                </span>
              </span>
            ) : running ? (
              'not yet'
            ) : record.state === 'done' && record.output === 'chain' ? (
              <span title="the build's result is its chain of layers in the shared store">
                its chain
                <span class="fact-sub">
                  <Mono>vmlb pull {record.id} -o FILE</Mono>
                </span>
              </span>
            ) : (
              'none'
            )}
          </dd>
        </div>
      </dl>
      {record.warning && running && (
        <div class="warn-note" role="status" data-testid="build-warning">
          <strong>Waiting</strong>
          <span class="warn-message">{record.warning}</span>
        </div>
      )}
      {record.error && (
        <div class="error-note" role="alert" data-testid="build-error">
          <strong>Build {record.state}</strong>
          <span class="error-message">{record.error}</span>
        </div>
      )}
      <ErrorNote error={current.data ? current.error : undefined} what="the latest state" />
      <Card title="Layers" testid="layers-card">
        <Timeline record={record} now={now} selected={selected} onSelect={setPicked} />
        <div class="legend" aria-hidden="true">
          {legend.map((s) => (
            <span key={s} class={`legend-item st-${s}`}>
              <span class={`legend-swatch seg-${s === 'hit' ? 'hit-swatch' : s}`} />
              {s === 'hit' ? 'cached' : s}
            </span>
          ))}
        </div>
      </Card>
      <div class="split">
        <Card title={<>Log · {record.layers.find((l) => l.index === selected)?.name ?? '—'}</>} class="grow">
          <LogPanel api={api} record={record} logs={stream.logs} selected={selected} onSelect={setPicked} streamVersion={stream.version} />
        </Card>
        <Card title="Activity" class="side">
          <ol class="activity" data-testid="activity">
            {stream.activity.length === 0 && <li class="log-note">Nothing yet.</li>}
            {stream.activity
              .slice(-60)
              .reverse()
              .map((a, i) => (
                <li key={`${a.at}-${i}`} class={a.tone ? `tone-${a.tone}` : ''}>
                  <time dateTime={new Date(a.at).toISOString()}>{formatClock(a.at)}</time>
                  <span>{a.text}</span>
                </li>
              ))}
          </ol>
        </Card>
      </div>
    </div>
  );
}

function Breadcrumb({ id }: { id: string }) {
  return (
    <nav class="crumbs" aria-label="Breadcrumb">
      <a href={href(['builds'])}>Builds</a>
      <span>/</span>
      <Mono>{id}</Mono>
    </nav>
  );
}
