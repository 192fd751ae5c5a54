/**
 * Processes as the kernel knows them. A pid alone can be reused by the time a record is read
 * again (a killed run's, after a reboot or a busy host), pid + start time cannot: records and
 * lock files name their owner this way, and the sweep acts only on owners that are gone.
 */
import { readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { HostError } from '../errors.js';

export interface ProcessIdentity {
  pid: number;
  /** Field 22 of /proc/PID/stat (clock ticks since boot), as text. */
  startTime: string;
}

interface ProcStat {
  state: string;
  startTime: string;
}

async function readProcStat(pid: number): Promise<ProcStat | null> {
  let text: string;
  try {
    text = await readFile(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  // The command name (field 2) is in parentheses and may contain spaces and parentheses.
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  const state = fields[0];
  const startTime = fields[22 - 3];
  return state && startTime ? { state, startTime } : null;
}

/** The identity of a running process, or null when it is gone (or a zombie). */
export async function processIdentity(pid: number): Promise<ProcessIdentity | null> {
  const st = await readProcStat(pid);
  return st && st.state !== 'Z' && st.state !== 'X' ? { pid, startTime: st.startTime } : null;
}

/** Whether that very process (not a later one that reuses its pid) still runs. */
export async function isRunning(id: ProcessIdentity): Promise<boolean> {
  const now = await processIdentity(id.pid);
  return now !== null && now.startTime === id.startTime;
}

let self: Promise<ProcessIdentity> | undefined;
/** This process's identity, the owner of the records it writes. */
export function selfIdentity(): Promise<ProcessIdentity> {
  self ??= processIdentity(process.pid).then((id) => {
    if (!id) throw new HostError(`cannot read /proc/${process.pid}/stat`);
    return id;
  });
  return self;
}

/** A process's argv from /proc/PID/cmdline, or null when it is gone (or a kernel thread). */
export async function processArgv(pid: number): Promise<string[] | null> {
  try {
    const raw = await readFile(`/proc/${pid}/cmdline`, 'utf8');
    return raw ? raw.replace(/\0$/, '').split('\0') : null;
  } catch {
    return null;
  }
}

/**
 * SIGTERM a process that is not our child (a dead run's daemon, found by the sweep), wait
 * until it is gone or a zombie waiting for init, SIGKILL after `graceMs`. Our own children are
 * stopped with exec.ts's stopChild, which can await their exit instead of polling /proc.
 */
export async function terminateProcess(id: ProcessIdentity, graceMs = 3000): Promise<void> {
  const signal = (sig: NodeJS.Signals) => {
    try {
      process.kill(id.pid, sig);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ESRCH') throw e;
    }
  };
  if (!(await isRunning(id))) return;
  signal('SIGTERM');
  const deadline = performance.now() + graceMs;
  while (await isRunning(id)) {
    if (performance.now() > deadline) {
      signal('SIGKILL');
      break;
    }
    await sleep(5);
  }
}
