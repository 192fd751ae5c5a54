/**
 * The worker's log: one JSON object per line on stderr (`{"time","level","msg",...fields}`),
 * what journald and log shippers take as it is. VMLB_LOG_LEVEL: debug | info | warn | error.
 */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
const ORDER: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
  child(fields: Record<string, unknown>): Logger;
}

export function jsonLogger(
  base: Record<string, unknown> = {},
  o: { level?: string; write?: (line: string) => void } = {},
): Logger {
  const min = ORDER[(o.level ?? process.env.VMLB_LOG_LEVEL ?? 'info') as LogLevel] ?? ORDER.info;
  const write = o.write ?? ((line: string) => void process.stderr.write(line));
  const log = (level: LogLevel, msg: string, fields?: Record<string, unknown>) => {
    if (ORDER[level] < min) return;
    write(JSON.stringify({ time: new Date().toISOString(), level, msg, ...base, ...fields }) + '\n');
  };
  return {
    debug: (m, f) => log('debug', m, f),
    info: (m, f) => log('info', m, f),
    warn: (m, f) => log('warn', m, f),
    error: (m, f) => log('error', m, f),
    child: (fields) => jsonLogger({ ...base, ...fields }, { level: o.level, write }),
  };
}

/** A logger that drops everything (tests that start a worker in-process). */
export const silentLogger: Logger = {
  debug: () => {},
  info: () => {},
  warn: () => {},
  error: () => {},
  child: () => silentLogger,
};
