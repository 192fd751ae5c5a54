/**
 * How an S3 failure is read: a miss, a refusal, or worth another try. The minio client's
 * errors carry S3's code (`NoSuchKey`, `SlowDown`), Node's (`ECONNRESET`) or only a message.
 */
const NETWORK_CODES = new Set([
  'ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'ESOCKETTIMEDOUT', 'EAI_AGAIN', 'ENETUNREACH',
  'EHOSTUNREACH', 'ENETDOWN', 'EHOSTDOWN', 'ECONNABORTED', 'ENOTCONN', 'ERR_STREAM_PREMATURE_CLOSE',
]);
const S3_TRANSIENT_CODES = new Set([
  'SlowDown', 'InternalError', 'ServiceUnavailable', 'RequestTimeout', 'OperationTimedOut',
  'XMinioServerNotInitialized', 'XMinioReadQuorum', 'XMinioWriteQuorum',
]);

export function errorCode(e: unknown): string {
  return String((e as { code?: unknown })?.code ?? '');
}

export function isNotFound(e: unknown): boolean {
  return e instanceof Error && e.name === 'S3Error' && ['NoSuchKey', 'NotFound'].includes(errorCode(e));
}

export function isAccessDenied(e: unknown): boolean {
  return e instanceof Error && errorCode(e) === 'AccessDenied';
}

/** Worth another try: the network, a server error, or a server asking us to slow down. */
export function isTransientS3Error(e: unknown): boolean {
  const code = errorCode(e);
  if (NETWORK_CODES.has(code) || S3_TRANSIENT_CODES.has(code)) return true;
  const msg = (e as Error)?.message ?? '';
  // The minio client retries 5xx once itself and then throws a plain Error saying so.
  if (/Retryable HTTP status: 5\d\d|socket hang up|Request failed after \d+ retries/.test(msg)) return true;
  // An S3Error with no code: the reply was not S3's XML (typically a proxy's 502/504 page).
  return e instanceof Error && e.name === 'S3Error' && code === '';
}

/** The error as one line, its code in front when the message does not say it. */
export function describe(e: unknown): string {
  const code = errorCode(e);
  const msg = (e as Error)?.message || String(e);
  return code && !msg.includes(code) ? `${code}: ${msg}` : msg;
}
