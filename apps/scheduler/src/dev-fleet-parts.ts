import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

/** The repository: every part runs from there. */
export const REPO = fileURLToPath(new URL('../../../', import.meta.url));

/** Restarts: after 1 s, then doubling with each quick death in a row, up to 15 s. */
const BACKOFF_FIRST_MS = 1000;
const BACKOFF_MAX_MS = 15_000;
/** A part that ran this long before it died counts as having worked: its backoff starts over. */
const STABLE_MS = 30_000;
/** Deaths in a row, each within STABLE_MS of its start, before the part is given up on. */
const MAX_QUICK_DEATHS = 5;
/** How long a (re)started part may take to serve. */
export const READY_MS = 60_000;

/** The launcher's own lines, on stderr (stdout has only the shell lines to paste). */
export const say = (msg: string) => process.stderr.write(`fleet: ${msg}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const seconds = (ms: number) => `${Math.round(ms / 100) / 10} s`;

export interface PartSpec {
  name: string;
  cmd: string;
  args: string[];
  env: NodeJS.ProcessEnv;
  /** Whether it serves (polled); without one, it is ready once spawned. */
  ready?: () => Promise<boolean>;
  /** A line of its output that says it is ready (for parts that have no port). */
  readyLine?: RegExp;
  /** What keeps its place across restarts, for the restart line. */
  keeps: string;
  /** Given up on, it stops the fleet. */
  essential: boolean;
  /** The first restart's delay (doubling as the others'). @default BACKOFF_FIRST_MS */
  restartAfterMs?: number;
}

interface Run {
  proc: ChildProcess;
  startedAt: number;
  /** How it ended: 'exit code 1', 'signal SIGKILL', or 'could not start: …'. */
  ended: Promise<string>;
  readonly done: boolean;
  sawReadyLine: boolean;
}

export interface Part {
  spec: PartSpec;
  run?: Run;
  /** Resolves once its first run serves; rejects when that run ends before. */
  firstReady: Promise<void>;
  /** Resolves when supervision ends (stopping, or given up on). */
  supervised: Promise<void>;
}

/**
 * One run of a part: in a process group of its own (Ctrl-C reaches only this launcher, which
 * then stops the children in order), with a parent-death signal (setpriv sets it and execs the
 * command, so the pid is the part's own; it survives the exec, as none of these is set-id), its
 * output prefixed with its name on stderr. Spawned from the main thread, the one whose death
 * the signal follows.
 */
function launch(spec: PartSpec): Run {
  const proc = spawn('setpriv', ['--pdeathsig', 'KILL', '--', spec.cmd, ...spec.args], { env: spec.env, stdio: ['ignore', 'pipe', 'pipe'], detached: true, cwd: REPO });
  let done = false;
  const ended = new Promise<string>((resolve) => {
    proc.once('exit', (code, signal) => {
      done = true;
      resolve(signal ? `signal ${signal}` : `exit code ${code}`);
    });
    proc.once('error', (e) => {
      done = true;
      resolve(`could not start: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'setpriv (util-linux) is not installed' : e.message}`);
    });
  });
  const run: Run = {
    proc,
    startedAt: Date.now(),
    ended,
    get done() {
      return done;
    },
    sawReadyLine: false,
  };
  for (const stream of [proc.stdout!, proc.stderr!]) {
    createInterface({ input: stream }).on('line', (line) => {
      if (spec.readyLine?.test(line)) run.sawReadyLine = true;
      process.stderr.write(`[${spec.name}] ${line}\n`);
    });
  }
  return run;
}

/**
 * The fleet's parts and their supervision: each started part is kept running (restarted after
 * a backoff) until the fleet stops or the part is given up on.
 */
export class PartSupervisor {
  readonly parts: Part[] = [];
  /** The fleet is stopping: a part that ends now is not started again. */
  stopping = false;
  /** A signal (or the parent's end) asked the fleet to stop: waits for readiness give up. */
  signalled = false;
  /** Resolves with the name of the first essential part given up on. */
  readonly givenUp: Promise<string>;
  private gaveUp: (name: string) => void = () => undefined;

  constructor() {
    this.givenUp = new Promise<string>((resolve) => (this.gaveUp = resolve));
    // Whatever happens to this launcher, no child outlives it: a normal exit kills them here, a
    // SIGKILL of the launcher through their parent-death signal.
    process.on('exit', () => this.killAll());
  }

  /** SIGKILLs every part's running process. */
  killAll(): void {
    for (const p of this.parts) if (p.run && !p.run.done) p.run.proc.kill('SIGKILL');
  }

  async waitUntil(what: string, ok: () => Promise<boolean>, timeoutMs = 30_000, gone?: () => string | undefined): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!(await ok().catch(() => false))) {
      if (this.stopping || this.signalled) throw new Error('interrupted');
      const end = gone?.();
      if (end !== undefined) throw new Error(`${what} ended (${end}) before it was ready`);
      if (Date.now() > deadline) throw new Error(`${what} did not come up within ${timeoutMs / 1000} s`);
      await sleep(100);
    }
  }

  private async whenReady(spec: PartSpec, run: Run): Promise<void> {
    const gone = () => (run.done ? 'it exited' : undefined);
    if (spec.ready) await this.waitUntil(spec.name, spec.ready, READY_MS, gone);
    else if (spec.readyLine) await this.waitUntil(spec.name, async () => run.sawReadyLine, READY_MS, gone);
  }

  /**
   * Starts a part and keeps it running: a run that ends while the fleet is not stopping is
   * reported (which part, how it ended) and followed by another after a backoff, until the part
   * dies MAX_QUICK_DEATHS times in a row within STABLE_MS of its start. Redis, S3 and the
   * scheduler must come up the first time (the fleet cannot start without them); the others go
   * through the same restarts from their first run.
   */
  start(spec: PartSpec): Part {
    let firstOk: () => void = () => undefined;
    let firstFailed: (e: Error) => void = () => undefined;
    const firstReady = new Promise<void>((resolve, reject) => ((firstOk = resolve), (firstFailed = reject)));
    firstReady.catch(() => undefined);
    const part: Part = { spec, firstReady, supervised: Promise.resolve() };
    this.parts.push(part);

    let everReady = false;
    /** One run, from its start to its end; says when a restarted one serves. */
    const runOnce = async (restart: boolean): Promise<{ run: Run; how: string }> => {
      const run = launch(spec);
      part.run = run;
      if (!restart) say(`started ${spec.name} (pid ${run.proc.pid ?? '?'})`);
      this.whenReady(spec, run).then(
        () => {
          everReady = true;
          firstOk();
          if (restart) say(`restarted ${spec.name} (pid ${run.proc.pid ?? '?'})`);
        },
        (e: Error) => {
          // Not ready in time: it counts as a death like any other.
          if (!run.done && !this.stopping && !this.signalled) {
            say(`${spec.name} (pid ${run.proc.pid ?? '?'}): ${e.message}: killing it`);
            run.proc.kill('SIGKILL');
          }
        },
      );
      return { run, how: await run.ended };
    };

    part.supervised = (async () => {
      let quickDeaths = 0;
      for (let restart = false; ; restart = true) {
        const { run, how } = await runOnce(restart);
        if (this.stopping) return;
        if (!everReady && spec.essential) {
          firstFailed(new Error(`${spec.name} ended (${how}) before it was ready`));
          return;
        }
        const lived = Date.now() - run.startedAt;
        // A run that had worked for a while starts the count over.
        quickDeaths = lived < STABLE_MS ? quickDeaths + 1 : 0;
        if (quickDeaths >= MAX_QUICK_DEATHS) {
          say(`${spec.name} died (${how}) ${quickDeaths} times in a row within ${STABLE_MS / 1000} s of starting: giving up on it${spec.essential ? ', stopping the fleet' : ''}`);
          if (spec.essential) this.gaveUp(spec.name);
          return;
        }
        const delay = Math.min(BACKOFF_MAX_MS, (spec.restartAfterMs ?? BACKOFF_FIRST_MS) * 2 ** Math.max(0, quickDeaths - 1));
        say(`${spec.name} (pid ${run.proc.pid ?? '?'}) died (${how}) after ${seconds(lived)}: restarting it in ${seconds(delay)} (${spec.keeps})`);
        const until = Date.now() + delay;
        while (Date.now() < until && !this.stopping) await sleep(Math.min(100, until - Date.now()));
        if (this.stopping) return;
      }
    })();
    return part;
  }

  /** SIGTERM, then SIGKILL after graceMs; resolves once the part's supervision has ended. */
  async stop(p: Part, graceMs: number): Promise<void> {
    const run = p.run;
    if (!run || run.done) return p.supervised;
    run.proc.kill('SIGTERM');
    const t = setTimeout(() => {
      say(`${p.spec.name} did not stop within ${graceMs / 1000} s: killing it`);
      run.proc.kill('SIGKILL');
    }, graceMs);
    await run.ended;
    clearTimeout(t);
    await p.supervised;
  }
}
