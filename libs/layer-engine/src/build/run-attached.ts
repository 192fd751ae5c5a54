import { execa } from 'execa';
import { baseEnv } from '../host/exec.js';
import { debug } from '../debug.js';
import { awaitRunner, killGroup } from './runner-process.js';
import { finishRun, prepareRun, runnerArgv, runnerEnv, type RunBase } from './script-runner.js';
import { shellQuote } from './shell-quote.js';

export interface RunAttachedOptions extends RunBase {
  /** What runs in the image instead of the entry script (argv; the first word is looked up on the layer's PATH). */
  command: string[];
  /**
   * An interactive session: the run gets a terminal of its own (a pseudo-terminal that
   * script(1) relays to this one, so that whatever the sandbox pushes into its terminal's
   * input stays there) as its controlling terminal, for job control and Ctrl-C. Otherwise
   * the command gets this process's stdin, stdout and stderr as they are, in a session of
   * its own (no terminal to push input into).
   */
  terminal: boolean;
  signal?: AbortSignal;
}

export interface RunAttachedResult {
  exitCode: number | undefined;
  signal: string | undefined;
  aborted: boolean;
  setupError?: string;
  writeError?: string;
  seconds: number;
}

/**
 * runScript's sibling for `vmlb shell` and `vmlb run`: the same runner, mounts, environment
 * and sandbox as a layer script, but `command` instead of the entry script, with this
 * process's stdio (nothing captured, nothing logged). An abort SIGKILLs the run.
 */
export async function runAttached(o: RunAttachedOptions): Promise<RunAttachedResult> {
  const started = performance.now();
  const { env, scriptEnv, statusFile, scratch } = await prepareRun({ ...o, newSession: !o.terminal });
  env.VMLB_COMMAND = o.command.map(shellQuote).join(' ');
  env.VMLB_KEEP_STDERR = '1';
  const runner = runnerArgv(o, scriptEnv);
  const common = { env: { ...baseEnv(runnerEnv(o, env)), SHELL: '/bin/sh' }, extendEnv: false, reject: false, stdio: 'inherit' as const };
  // With a terminal: script(1) makes the pty and the run's session on it (and relays the
  // window size); the runner dies with script, script with this process.
  const child = o.terminal
    ? execa('setpriv', ['--pdeathsig', 'KILL', '--', 'script', '--quiet', '--return', '--command', `exec ${runner.map(shellQuote).join(' ')}`, '/dev/null'], common)
    : execa(runner[0]!, runner.slice(1), { ...common, detached: true });
  // script(1) takes the run with it; a detached runner is killed by its group.
  const { exitCode, signal, aborted } = await awaitRunner(child, () => (o.terminal ? child.kill('SIGKILL') : killGroup(child)), o);
  const { setupError, writeError } = await finishRun(o.rootMount, statusFile, scratch);
  const seconds = (performance.now() - started) / 1000;
  debug(`command ${o.command.join(' ')} in ${o.layerDir}: exit ${exitCode} signal ${signal} in ${seconds.toFixed(3)}s`);
  return { exitCode, signal, aborted, setupError, writeError, seconds };
}
