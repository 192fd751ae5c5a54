import { PassThrough, Writable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { BuildEvent, InputChange, PlannedLayer } from '@vmlb/layer-engine';
import { chooseMode, createDisplay, describeChange, formatPlan } from './index.js';

const KEY = (c: string) => c.repeat(64);
const MiB = 1024 ** 2;

const LAYERS: PlannedLayer[] = [
  { index: 0, name: '01_base', kind: 'base-image', key: KEY('a'), status: 'hit', source: 'local', cacheable: true },
  { index: 1, name: '02_packages', kind: 'build-layer', key: KEY('b'), status: 'hit', source: 'shared', cacheable: true },
  {
    index: 2, name: '03_users', kind: 'build-layer', key: KEY('c'), status: 'miss', cacheable: true,
    changes: [{ what: 'file-changed', path: 'build-layer', detail: 'content' }],
  },
  {
    index: 3, name: '04_app', kind: 'build-layer', key: KEY('d'), status: 'miss', cacheable: true,
    changes: [{ what: 'parent', detail: `parent changed: ${KEY('9')} → ${KEY('c')}` }],
  },
  {
    index: 4, name: '05_grow_disk', kind: 'modify-disk', key: KEY('e'), status: 'miss', cacheable: true,
    changes: [{ what: 'new', detail: 'no earlier build of this layer' }],
  },
];

const at = 1_700_000_000_000;
const plan: BuildEvent = { type: 'plan', at, project: '/src/debian-web', layers: LAYERS, total: 5 };
const cached = (i: number, source: 'local' | 'shared', bytes: number): BuildEvent => ({
  type: 'layer-cached', at, index: i, name: LAYERS[i]!.name, key: LAYERS[i]!.key, source, bytes,
});
const start = (i: number): BuildEvent => ({
  type: 'layer-start', at, index: i, name: LAYERS[i]!.name, kind: LAYERS[i]!.kind, key: LAYERS[i]!.key,
});
const log = (i: number, chunk: string): BuildEvent => ({ type: 'layer-log', at, index: i, name: LAYERS[i]!.name, chunk });
const step = (i: number, s: string): BuildEvent => ({ type: 'layer-step', at, index: i, name: LAYERS[i]!.name, step: s });
const done = (i: number, seconds: number, bytes: number): BuildEvent => ({
  type: 'layer-done', at, index: i, name: LAYERS[i]!.name, key: LAYERS[i]!.key, seconds, bytes,
});
const layerFailed = (i: number, extra: Partial<Extract<BuildEvent, { type: 'layer-failed' }>> = {}): BuildEvent => ({
  type: 'layer-failed', at, index: i, name: LAYERS[i]!.name, key: LAYERS[i]!.key, seconds: 1.5,
  message: 'build-layer exited with status 3', exitCode: 3, timedOut: false, logPath: '/var/log/vmlb/04_app.log',
  logTail: '+ systemctl enable app\nFailed to enable unit\n', ...extra,
});
const buildFailed: BuildEvent = { type: 'failed', at, message: 'layer 04_app failed', code: 'LAYER_FAILED', seconds: 9 };

/** A build that succeeds, with script output cut mid-line, a progress bar drawn with \r and colors. */
const SUCCESS: BuildEvent[] = [
  { type: 'notice', at, message: 'sweep: released 1 loop device left by 1 killed run' },
  plan,
  cached(0, 'local', 512 * MiB),
  cached(1, 'shared', 312 * MiB),
  start(2),
  step(2, 'attaching disk'),
  log(2, '+ useradd al'),
  log(2, 'ice\n\x1b[1;32mok\x1b[0m\r\n'),
  log(2, 'Downloading 10%\rDownloading 50%\r'),
  log(2, 'Downloading 100%\n'),
  log(2, 'no newline at the end'),
  done(2, 4.2, 12.4 * MiB),
  start(3),
  done(3, 0.12, 196 * 1024),
  start(4),
  step(4, 'growing disk to 20 GiB'),
  done(4, 123, 1.2 * 1024 ** 3),
  { type: 'output', at, path: 'build/image.qcow2', flattened: false, seconds: 0.01, bytes: 196 * 1024 },
  { type: 'done', at, built: 3, cached: 2, seconds: 5.4, image: 'build/image.qcow2' },
];

function readAll(stream: PassThrough): string {
  let text = '';
  for (let chunk = stream.read(); chunk !== null; chunk = stream.read()) text += String(chunk);
  return text;
}

function run(mode: 'plain' | 'json', events: BuildEvent[], verbose = false): string {
  const out = new PassThrough();
  const display = createDisplay(mode, out, { verbose });
  for (const e of events) display.onEvent(e);
  display.close();
  return readAll(out);
}

describe('plain', () => {
  it('prints one append-only line per thing, #N-prefixed script output', () => {
    expect(run('plain', SUCCESS)).toBe(
      [
        'sweep: released 1 loop device left by 1 killed run',
        'project /src/debian-web',
        '5 layers: 2 cached, 3 to build',
        '#1 [1/5] 01_base CACHED',
        '#2 [2/5] 02_packages CACHED (shared, 312 MiB)',
        '#3 [3/5] 03_users build-layer building',
        '#3 -- attaching disk',
        '#3 + useradd alice',
        '#3 ok',
        '#3 Downloading 100%',
        '#3 no newline at the end',
        '#3 DONE 4.2s 12.4 MiB',
        '#4 [4/5] 04_app build-layer building',
        '#4 DONE 0.12s 196 KiB',
        '#5 [5/5] 05_grow_disk modify-disk building',
        '#5 -- growing disk to 20 GiB',
        '#5 DONE 2m03s 1.2 GiB',
        'image: build/image.qcow2 (thin overlay on the chain, 196 KiB)',
        'built 3, cached 2 in 5.4s',
        '',
      ].join('\n'),
    );
  });

  it('reports a failure once, without repeating output it already printed', () => {
    const text = run('plain', [plan, cached(0, 'local', 1), cached(1, 'local', 1), start(3), log(3, '+ systemctl enable app\nFailed to enable unit'), layerFailed(3), buildFailed]);
    expect(text).toBe(
      [
        'project /src/debian-web',
        '5 layers: 2 cached, 3 to build',
        '#1 [1/5] 01_base CACHED',
        '#2 [2/5] 02_packages CACHED',
        '#4 [4/5] 04_app build-layer building',
        '#4 + systemctl enable app',
        '#4 Failed to enable unit',
        '#4 ERROR exit 3 after 1.5s',
        '#4 log: /var/log/vmlb/04_app.log',
        'error: layer 04_app failed',
        '',
      ].join('\n'),
    );
  });

  it('prints the log tail when the layer printed nothing, and says why it stopped', () => {
    const timedOut = run('plain', [start(3), layerFailed(3, { timedOut: true, exitCode: undefined, seconds: 600 })]);
    expect(timedOut).toContain('#4 ERROR timed out after 10m00s\n#4 + systemctl enable app\n#4 Failed to enable unit\n');
    const noExit = run('plain', [start(3), layerFailed(3, { exitCode: undefined, logTail: '', message: 'cannot attach disk:\nno free loop device' })]);
    expect(noExit).toContain('#4 ERROR after 1.5s: cannot attach disk: no free loop device\n');
  });

  it('flushes a partial line on close', () => {
    expect(run('plain', [start(2), log(2, 'half a line')])).toContain('#3 half a line\n');
  });

  it('explains the plan with --explain', () => {
    const text = run('plain', [plan], true);
    expect(text).toContain(formatPlan(LAYERS));
  });

  it('keeps sizes and durations readable', () => {
    const cases: [number, number, string][] = [
      [0.123, 512, '0.12s 512 B'],
      [4.24, 312 * 1024, '4.2s 312 KiB'],
      [42, 99.99 * 1024, '42.0s 100 KiB'],
      [59.97, 1023.9 * 1024, '1m00s 1 MiB'],
      [3723, 4 * 1024 ** 3, '1h02m03s 4 GiB'],
    ];
    for (const [seconds, bytes, words] of cases) {
      expect(run('plain', [done(2, seconds, bytes)])).toBe(`#3 DONE ${words}\n`);
    }
  });
});

describe('json', () => {
  it('writes exactly the events, one per line', () => {
    const events = [...SUCCESS.slice(0, 7), layerFailed(3), buildFailed];
    const text = run('json', events);
    expect(text.endsWith('\n')).toBe(true);
    expect(text.trimEnd().split('\n').map((l) => JSON.parse(l) as unknown)).toEqual(events);
  });
});

describe('formatPlan and describeChange', () => {
  it('prints a table with the reasons under each miss', () => {
    expect(formatPlan(LAYERS)).toBe(
      [
        'LAYER         KIND         KEY           CACHE',
        '01_base       base-image   aaaaaaaaaaaa  HIT (local)',
        '02_packages   build-layer  bbbbbbbbbbbb  HIT (shared)',
        '03_users      build-layer  cccccccccccc  MISS',
        '    changed: build-layer',
        '04_app        build-layer  dddddddddddd  MISS',
        '    parent changed: 999999999999 → cccccccccccc',
        '05_grow_disk  modify-disk  eeeeeeeeeeee  MISS',
        '    new: no earlier build of this layer',
      ].join('\n'),
    );
  });

  it('says each change in words', () => {
    const cases: [InputChange, string][] = [
      [{ what: 'new', detail: 'no earlier build of this layer' }, 'new: no earlier build of this layer'],
      // As libs/layer-engine/src/project/input-diff.ts words them: the detail is the whole phrase.
      [{ what: 'parent', detail: 'parent changed: 3f2a9c1d → 77ab0e12' }, 'parent changed: 3f2a9c1d → 77ab0e12'],
      [{ what: 'kind', detail: 'kind changed: create-disk → build-layer' }, 'kind changed: create-disk → build-layer'],
      [{ what: 'recipe', detail: 'engine recipe changed: v3 → v4' }, 'engine recipe changed: v3 → v4'],
      [{ what: 'nocache', detail: 'follows a # nocache layer' }, 'follows a # nocache layer'],
      [{ what: 'file-added', path: 'files/a', detail: '' }, 'added: files/a'],
      [{ what: 'file-removed', path: 'files/b', detail: '' }, 'removed: files/b'],
      [{ what: 'file-changed', path: 'build-layer', detail: 'content' }, 'changed: build-layer'],
      [{ what: 'mode-changed', path: 'build-layer', detail: 'now executable' }, 'mode changed: build-layer (now executable)'],
    ];
    for (const [c, words] of cases) expect(describeChange(c)).toBe(words);
  });
});

describe('chooseMode', () => {
  const tty = { isTTY: true };
  it('picks json, plain or tty', () => {
    expect(chooseMode({ json: true, plain: true }, tty, {})).toBe('json');
    expect(chooseMode({ plain: true }, tty, {})).toBe('plain');
    expect(chooseMode({}, { isTTY: false }, {})).toBe('plain');
    expect(chooseMode({}, tty, { TERM: 'dumb' })).toBe('plain');
    expect(chooseMode({}, tty, { CI: 'true' })).toBe('plain');
    expect(chooseMode({}, tty, { CI: '' })).toBe('tty');
    expect(chooseMode({}, tty, { TERM: 'xterm-256color' })).toBe('tty');
  });
});

// ---------------------------------------------------------------------------------------------
// tty: a fake terminal that applies what log-update writes (cursor up, erase line) to a screen

const BEGIN_FRAME = '\x1b[?2026h';
const END_FRAME = '\x1b[?2026l';
const SPINNER = /[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏]/;

class FakeTty extends Writable {
  readonly isTTY = true;
  readonly columns = 80;
  readonly rows = 30;
  /** One entry per write that reached the terminal; each should be a whole frame. */
  readonly writes: string[] = [];
  private lines: string[] = [''];
  private row = 0;
  private col = 0;
  widest = 0;

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: () => void): void {
    this.take(String(chunk));
    cb();
  }

  override _writev(chunks: { chunk: Buffer }[], cb: () => void): void {
    this.take(chunks.map((c) => String(c.chunk)).join(''));
    cb();
  }

  screen(): string {
    const lines = this.lines.map((l) => l.trimEnd());
    while (lines.length && lines[lines.length - 1] === '') lines.pop();
    return lines.join('\n');
  }

  private take(text: string): void {
    this.writes.push(text);
    for (let i = 0; i < text.length; i++) {
      const ch = text[i]!;
      if (ch === '\x1b') {
        const m = /^\x1b\[([?0-9;]*)([A-Za-z])/.exec(text.slice(i));
        if (!m) throw new Error(`unexpected escape ${JSON.stringify(text.slice(i, i + 8))}`);
        i += m[0].length - 1;
        const n = Number(m[1]) || 1;
        if (m[2] === 'A') this.row = Math.max(0, this.row - n);
        else if (m[2] === 'G') this.col = n - 1;
        else if (m[2] === 'K') this.lines[this.row] = '';
        continue; // colors, cursor visibility, synchronized output
      }
      if (ch === '\n') {
        this.row++;
        this.col = 0;
        this.lines[this.row] ??= '';
        continue;
      }
      if (ch === '\r') {
        this.col = 0;
        continue;
      }
      const line = (this.lines[this.row] ?? '').padEnd(this.col);
      this.lines[this.row] = line.slice(0, this.col) + ch + line.slice(this.col + 1);
      this.col++;
      this.widest = Math.max(this.widest, this.col);
    }
  }
}

const count = (haystack: string, needle: string) => haystack.split(needle).length - 1;

describe('tty', () => {
  beforeEach(() => {
    vi.useFakeTimers({ now: at });
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('shows a live layer with its clock and output tail, then leaves one line per layer', () => {
    const out = new FakeTty();
    const display = createDisplay('tty', out, { color: true });
    for (const e of [plan, cached(0, 'local', 512 * MiB), cached(1, 'shared', 312 * MiB), start(2), step(2, 'attaching disk')]) {
      display.onEvent(e);
    }
    for (let i = 1; i <= 12; i++) display.onEvent(log(2, `line ${i}\n`));
    display.onEvent(log(2, `\x1b[31mred\x1b[0m and ${'long '.repeat(40)}\n`));
    display.onEvent(log(2, 'Downloading 10%\rDownloading 50%\rDownloading 100%'));
    vi.advanceTimersByTime(1300);

    const live = out.screen().split('\n');
    expect(live.slice(0, 4)).toEqual([
      'project /src/debian-web',
      '5 layers: 2 cached, 3 to build',
      '  [1/5] 01_base       base-image   CACHED',
      '  [2/5] 02_packages   build-layer  CACHED (shared, 312 MiB)',
    ]);
    expect(live[4]).toMatch(SPINNER);
    expect(live[4]!.slice(1)).toBe(' [3/5] 03_users      build-layer  1.3s  attaching disk');
    expect(live.slice(5)).toEqual([
      '    line 7',
      '    line 8',
      '    line 9',
      '    line 10',
      '    line 11',
      '    line 12',
      `    red and ${'long '.repeat(40)}`.slice(0, 78) + '…',
      '    Downloading 100%',
    ]);

    display.onEvent(done(2, 4.2, 12.4 * MiB));
    display.onEvent(start(3));
    display.onEvent(log(3, '+ systemctl enable app\n'));
    vi.advanceTimersByTime(500);
    display.onEvent(layerFailed(3));
    display.onEvent(buildFailed);
    display.close();
    display.close();

    const permanent = [
      'project /src/debian-web',
      '5 layers: 2 cached, 3 to build',
      '  [1/5] 01_base       base-image   CACHED',
      '  [2/5] 02_packages   build-layer  CACHED (shared, 312 MiB)',
      '✔ [3/5] 03_users      build-layer  4.2s  12.4 MiB',
      '✘ [4/5] 04_app        build-layer  failed after 1.5s (exit 3)',
      '    + systemctl enable app',
      '    Failed to enable unit',
      '    log: /var/log/vmlb/04_app.log',
      'error: layer 04_app failed',
    ];
    const screen = out.screen();
    expect(screen).toBe(permanent.join('\n'));
    for (const line of permanent) expect(count(screen, line)).toBe(1);
    expect(out.widest).toBeLessThan(80);
    expect(vi.getTimerCount()).toBe(0);
    // Erasing and redrawing happen in one write, inside one synchronized frame.
    for (const w of out.writes) {
      expect(w.startsWith(BEGIN_FRAME)).toBe(true);
      expect(w.endsWith(END_FRAME)).toBe(true);
    }
  });

  it('redraws on the clock, not on every chunk of output', () => {
    const out = new FakeTty();
    const display = createDisplay('tty', out);
    display.onEvent(start(2));
    const before = out.writes.length;
    for (let i = 0; i < 1000; i++) display.onEvent(log(2, `apt line ${i}\n`));
    expect(out.writes.length).toBe(before);
    vi.advanceTimersByTime(100);
    expect(out.writes.length).toBe(before + 1);
    expect(out.screen()).toContain('    apt line 999');
    display.close();
  });

  it('shows steps outside a layer on a live line until the next event', () => {
    const out = new FakeTty();
    const display = createDisplay('tty', out, { color: false });
    display.onEvent(plan);
    display.onEvent(step(1, 'fetching from the shared store'));
    vi.advanceTimersByTime(700);
    expect(out.screen().split('\n').at(-1)).toMatch(/^. \[2\/5\] 02_packages   build-layer  fetching from the shared store  0\.7s$/);
    display.onEvent(cached(1, 'shared', 312 * MiB));
    expect(out.screen()).not.toMatch(SPINNER);
    expect(vi.getTimerCount()).toBe(0);
    display.close();
  });

  it('keeps what a layer showed when the build stops without an ending (Ctrl-C)', () => {
    const out = new FakeTty();
    const display = createDisplay('tty', out, { color: false });
    display.onEvent(plan);
    display.onEvent(start(2));
    display.onEvent(log(2, 'working\n'));
    vi.advanceTimersByTime(2000);
    display.close();
    expect(out.screen().split('\n').slice(2)).toEqual(['- [3/5] 03_users      build-layer  stopped after 2.0s', '    working']);
    expect(vi.getTimerCount()).toBe(0);
    display.onEvent(start(3)); // after close: ignored, no timer
    expect(vi.getTimerCount()).toBe(0);
  });
});
